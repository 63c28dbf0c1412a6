#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU, torch and NO Ray/internet:
#   1. nvidia-smi summary and the Python environment (which optional modules exist)
#   2. distmeta's core imports without Ray (PYTHONPATH=<repo>, nothing installed)
#   3. the GPU-marked tests (tests/test_gpu.py: loop vs vmap second-order MAML conv4
#      meta-gradients on CUDA, CUDA vs CPU, MetaCore end to end)
#   4. benchmarks/meta_step.py --device cuda --json for meta-batch 32 and 128
#      (loop vs vmap, first vs second order), combined into one table
#
#   bash benchmarks/gpu_check.sh                 # outputs in $OUT, else <repo>/.gpu_check_out
#   META_BATCHES="32 256" META_STEP_ARGS="--executors loop vmap" bash benchmarks/gpu_check.sh
#
# Writes only under $OUT (at most 8 files) and inside the repo (a scratch folder for
# caches/temp files, removed at exit). Every step runs under a time limit; a failing
# step is reported and the rest still run. Total under ~6 minutes. Exit status: the
# number of failed steps (0 = all passed).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 99
OUTDIR="${OUT:-$REPO/.gpu_check_out}"
mkdir -p "$OUTDIR"
SCRATCH="$REPO/.gpu_check_tmp"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/home" "$SCRATCH/tmp"
trap 'rm -rf "$SCRATCH"' EXIT

# keep every cache and temp file inside the repo's scratch folder
export HOME="$SCRATCH/home" TMPDIR="$SCRATCH/tmp" XDG_CACHE_HOME="$SCRATCH/home/.cache"
export TORCH_HOME="$SCRATCH/home/.torch" CUDA_CACHE_PATH="$SCRATCH/home/.nv" MPLCONFIGDIR="$SCRATCH/home/.mpl"
export TRITON_CACHE_DIR="$SCRATCH/home/.triton" TORCHINDUCTOR_CACHE_DIR="$SCRATCH/home/.inductor"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" OMP_WAIT_POLICY=PASSIVE
PY="${PYTHON:-$(command -v python3 || command -v python)}"
META_BATCHES="${META_BATCHES:-32 128}"
# loop vs vmap (plain training as the yardstick), first and second order. The first
# meta-batch also runs 5 inner steps and the sinusoid rows; the larger ones 1 inner step
# (on an H200, meta-batch 32 took 55 s; 128 with 5 inner steps ran past 120 s: the
# per-task loop and plain rows take ~15-30 s a cell there, vmap well under 1 s).
META_STEP_ARGS="${META_STEP_ARGS:---executors loop vmap plain --orders first second --repeats 3}"
META_STEP_FIRST="${META_STEP_FIRST:---inner-steps 1 5}"
META_STEP_LATER="${META_STEP_LATER:---inner-steps 1 --skip-sinusoid}"

LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

# shellcheck source=benchmarks/_step.sh
. benchmarks/_step.sh   # step NAME LIMIT_S CMD...: time limit, rc and duration recorded, never aborts

echo "distmeta gpu_check: repo $REPO, outputs $OUTDIR, python $PY, $(date -u +%FT%TZ)"

# 1. the machine -------------------------------------------------------------------------
nvidia_summary() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi not found"
    return 1
  fi
  nvidia-smi -L
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,clocks.sm,compute_cap --format=csv 2>/dev/null \
    || nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu --format=csv
  nvidia-smi | head -n 15
}
step nvidia-smi 30 bash -c "$(declare -f nvidia_summary); nvidia_summary 2>&1 | tee '$OUTDIR/nvidia_smi.txt'; exit \${PIPESTATUS[0]}"

step environment 60 "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
import torch
print("torch", torch.__version__, "cuda build", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"capability {p.major}.{p.minor}", f"{p.multi_processor_count} SMs")
for name in ["numpy", "yaml", "PIL", "tqdm", "matplotlib", "pytest", "pyarrow", "ray", "gymnasium"]:
    try:
        m = importlib.import_module(name)
        print(f"  {name:<11} {getattr(m, '__version__', 'present')}")
    except Exception as exc:
        print(f"  {name:<11} MISSING ({type(exc).__name__})")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

# 2. distmeta without Ray --------------------------------------------------------------------
step imports-without-ray 60 "$PY" - <<'EOF'
import importlib, sys
bad = 0
for mod in ["distmeta", "distmeta.registry", "distmeta.algorithms.maml", "distmeta.algorithms.protonet",
            "distmeta.algorithms.reptile", "distmeta.algorithms.siamese", "distmeta.models.backbones",
            "distmeta.models.network", "distmeta.config", "distmeta.tasks.base", "distmeta.tasks.sinusoid",
            "distmeta.tasks.episodes", "distmeta.engine.core", "distmeta.engine.local",
            "distmeta.engine.learner", "distmeta.engine.ray_engine", "distmeta.builtin"]:
    try:
        importlib.import_module(mod)
        print(f"  ok       {mod}")
    except ModuleNotFoundError as exc:
        bad += 1
        print(f"  MISSING  {mod}: needs {exc.name!r}")
    except Exception as exc:
        bad += 1
        print(f"  ERROR    {mod}: {type(exc).__name__}: {exc}")
ray = "ray" in sys.modules and getattr(sys.modules["ray"], "__file__", None)
print("ray imported at module level:", "YES (" + str(ray) + ")" if ray else "no")
sys.exit(1 if ray or bad else 0)
EOF

# 3. GPU-marked tests --------------------------------------------------------------------------
GPU_TEST_FILES=$(grep -l "mark.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
echo
echo "GPU-marked test files: ${GPU_TEST_FILES:-none}"
if [ -n "$GPU_TEST_FILES" ]; then
  if "$PY" -c "import pytest" 2>/dev/null; then
    # only the files with GPU tests: the others import Ray, gymnasium, ... absent here
    # shellcheck disable=SC2086
    step pytest-gpu 120 "$PY" -m pytest -q -rs -p no:cacheprovider --basetemp="$SCRATCH/tmp/pytest" \
      --continue-on-collection-errors -o addopts="" -m gpu $GPU_TEST_FILES \
      --junitxml="$OUTDIR/pytest_gpu.xml"
  else
    # no pytest here: a minimal runner (marks, parametrize, skip) for tests/test_gpu.py
    step tests-gpu-no-pytest 120 "$PY" - <<'EOF'
import itertools, sys, traceback, types

class Skip(Exception):
    pass

class _Mark:
    def __getattr__(self, name):
        def deco(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            def apply(fn):
                if name == "parametrize":
                    names = [n.strip() for n in args[0].split(",")] if isinstance(args[0], str) else list(args[0])
                    fn.__dict__.setdefault("_params", []).append((names, list(args[1])))
                if name == "skipif" and args and args[0]:
                    fn._skip = kwargs.get("reason", "skipif")
                return fn
            return apply
        return deco

pt = types.ModuleType("pytest")
pt.mark = _Mark()
def _skip(reason=""):
    raise Skip(reason)
pt.skip = _skip
pt.fail = lambda msg="": (_ for _ in ()).throw(AssertionError(msg))
import torch
pt.approx = lambda v, **k: v
sys.modules["pytest"] = pt
sys.path.insert(0, "tests")
import test_gpu as t
passed = failed = skipped = 0
for name in sorted(n for n in dir(t) if n.startswith("test_")):
    fn = getattr(t, name)
    if getattr(fn, "_skip", None):
        print(f"SKIP {name}: {fn._skip}"); skipped += 1; continue
    grids = fn.__dict__.get("_params", [])
    combos = [dict()]
    for names, values in grids:
        combos = [{**c, **dict(zip(names, v if len(names) > 1 else (v,)))} for c in combos for v in values]
    for kw in combos:
        label = f"{name}[{','.join(f'{k}={v}' for k, v in kw.items())}]" if kw else name
        try:
            fn(**kw)
            print(f"PASS {label}"); passed += 1
        except Skip as exc:
            print(f"SKIP {label}: {exc}"); skipped += 1
        except Exception:
            print(f"FAIL {label}"); traceback.print_exc(); failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
EOF
  fi
fi

# 4. meta-step benchmark on CUDA ---------------------------------------------------------------
JSON_FILES=()
if [ -f benchmarks/meta_step.py ]; then
  extra="$META_STEP_FIRST"
  for mb in $META_BATCHES; do
    f="$OUTDIR/meta_step_mb${mb}.json"
    # shellcheck disable=SC2086
    step "meta_step mb=$mb" 120 bash -c "'$PY' benchmarks/meta_step.py --device cuda --meta-batch $mb $META_STEP_ARGS $extra --json > '$f'"
    JSON_FILES+=("$f")
    extra="$META_STEP_LATER"
  done
else
  echo
  echo "benchmarks/meta_step.py not found: meta-step benchmark skipped"
  record meta_step "SKIPPED (no benchmarks/meta_step.py)"
fi

if [ "${#JSON_FILES[@]}" -gt 0 ]; then
  export TABLE_OUT="$OUTDIR/meta_step_table.txt"
  step meta-step-table 30 "$PY" - "${JSON_FILES[@]}" <<'EOF'
"""One table from meta_step.py's JSON outputs, whatever their exact shape: the rows
are the dicts found in the output (a list of rows, or a mapping of name -> row)."""
import json, os, re, sys

class Tee:
    def __init__(self, *files):
        self.files = files
    def write(self, text):
        for f in self.files:
            f.write(text)
    def flush(self):
        for f in self.files:
            f.flush()

if os.environ.get("TABLE_OUT"):
    sys.stdout = Tee(sys.__stdout__, open(os.environ["TABLE_OUT"], "w"))

def load(path):
    text = open(path).read()
    try:
        return json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        return json.loads(text[start:end + 1]) if 0 <= start < end else None

def rows_of(obj, prefix=""):
    """Leaf dicts (all values scalars) anywhere in obj, with their path."""
    if isinstance(obj, dict):
        if obj and all(not isinstance(v, (dict, list)) for v in obj.values()):
            yield prefix, obj
        else:
            for k, v in obj.items():
                yield from rows_of(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from rows_of(v, f"{prefix}[{i}]")

def fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

table, bad = [], 0
for path in sys.argv[1:]:
    mb = re.search(r"mb(\d+)", path).group(1)
    try:
        data = load(path)
    except Exception as exc:
        data = None
    if data is None:
        print(f"{path}: no JSON (see gpu_check.log)")
        bad += 1
        continue
    if isinstance(data, dict) and isinstance(data.get("rows"), list):  # meta_step.py's shape
        head = {k: v for k, v in data.items() if k != "rows"}
        print(f"{path}: " + json.dumps(head)[:300])
        found = [("", r) for r in data["rows"] if isinstance(r, dict)]
    else:
        found = list(rows_of(data))
    if not found:
        print(f"{path}: {json.dumps(data)[:500]}")
    for where, row in found:
        table.append({"run_mb": mb, **({"row": where} if where else {}), **row})
if table:
    cols = [c for c in ("run_mb", "setting", "inner_steps", "order", "executor", "meta_batch", "ms_per_step",
                        "tasks_per_s", "x_plain", "loop_over_vmap", "peak_mb") if any(c in r for r in table)]
    for r in table:
        cols += [c for c in r if c not in cols]
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in table)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    print("  ".join("-" * widths[c] for c in cols))
    for r in table:
        print("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols))
sys.exit(1 if bad else 0)
EOF
fi

# summary -------------------------------------------------------------------------------------
{
  echo
  echo "=== summary ($(( $(date +%s) - T_START ))s total, $FAILED failed step(s))"
  for r in "${RESULTS[@]}"; do echo "  $r"; done
} | tee "$OUTDIR/summary.txt"
exit "$FAILED"
