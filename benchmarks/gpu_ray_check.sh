#!/usr/bin/env bash
# One prepared check of the Ray engine on a machine with an NVIDIA GPU, torch and no Ray or
# internet (benchmarks/gpu_check.sh is the Ray-free one). Carry the bundle built by
# `bash benchmarks/gpu_bundle.sh build` (.gpu-bundle: Ray 2.60.0 cp312 without its jar,
# Ray's core requirements, pydantic) and run:
#
#   bash benchmarks/gpu_ray_check.sh               # outputs in $OUT, else <repo>/.gpu_ray_out
#   bash benchmarks/gpu_ray_check.sh --cpu-smoke   # the same code paths on CPU, tiny sizes (a dry run)
#
#   0. nvidia-smi and the Python environment
#   1. Ray from the bundle: pip install --no-index --no-deps --target $GPU_RAY_DIR/site
#      (default /tmp/dmray: Ray's socket paths must stay under 107 bytes), PYTHONPATH set,
#      RAY_TMPDIR=$GPU_RAY_DIR/t. Without a bundle, a Ray the Python already imports is used.
#   2. (a) benchmarks/gpu_ray.py: in-process vmap vs 1, 2 and 4 Ray workers sharing the GPU
#      (engine.num_gpus 1/W, actor calls only), conv4 Omniglot 5-way 1-shot, meta-batch 32:
#      tasks/s, parallel efficiency, overhead fraction, gradient check -> gpu_ray.json
#   3. (b) the GPU-marked tests (pytest -m gpu on the files holding them) -> pytest_gpu.xml
#   4. (c) benchmarks/meta_step.py on CUDA, meta-batch 32, 1 inner step: the vmap meta-step
#      against the plain-training yardsticks (target: meta-step <= 3x plain) -> meta_step.json
#
# Every step has a time limit and the whole run stays under $GPU_RAY_TOTAL_S (default 285 s);
# a failing step is reported and the rest still run. Writes only under $OUT (at most 7 files:
# gpu_ray_check.log, summary.txt, summary.json, gpu_ray.json, pytest_gpu.xml, meta_step.json,
# nvidia_smi.txt), the repo's scratch folder .gpu_ray_tmp and $GPU_RAY_DIR (both removed at
# exit). Exit status: the number of failed steps (0 = all passed).
# Environment: PYTHON, OUT, GPU_RAY_BUNDLE (default <repo>/.gpu-bundle), GPU_RAY_DIR,
# GPU_RAY_TOTAL_S, GPU_RAY_ARGS (extra gpu_ray.py arguments), META_STEP_ARGS (replaces the
# meta_step.py arguments after --device/--json-out).
set -u

SMOKE=0
for a in "$@"; do
  case $a in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument $a" >&2; exit 99 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 99
OUTDIR="${OUT:-$REPO/.gpu_ray_out}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SCRATCH="$REPO/.gpu_ray_tmp"
BUNDLE="${GPU_RAY_BUNDLE:-$REPO/.gpu-bundle}"
RAYDIR="${GPU_RAY_DIR:-/tmp/dmray}"
TOTAL_S="${GPU_RAY_TOTAL_S:-285}"
rm -rf "$SCRATCH" "$RAYDIR"
mkdir -p "$SCRATCH/home" "$SCRATCH/tmp" "$RAYDIR/t" || exit 99
trap 'rm -rf "$SCRATCH" "$RAYDIR"' EXIT

# caches and temp files in the scratch folder; Ray's session folder short (sockets <= 107 bytes)
export HOME="$SCRATCH/home" TMPDIR="$SCRATCH/tmp" XDG_CACHE_HOME="$SCRATCH/home/.cache"
export TORCH_HOME="$SCRATCH/home/.torch" CUDA_CACHE_PATH="$SCRATCH/home/.nv" MPLCONFIGDIR="$SCRATCH/home/.mpl"
export TRITON_CACHE_DIR="$SCRATCH/home/.triton" TORCHINDUCTOR_CACHE_DIR="$SCRATCH/home/.inductor"
export RAY_TMPDIR="$RAYDIR/t" RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" OMP_WAIT_POLICY=PASSIVE
PY="${PYTHON:-$(command -v python3 || command -v python)}"

LOG="$OUTDIR/gpu_ray_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

STEP_WIDTH=22 STEP_KILL_AFTER=5
# shellcheck source=benchmarks/_step.sh
. benchmarks/_step.sh   # step NAME LIMIT_S CMD... under min(LIMIT_S, what is left of TOTAL_S)

if [ "$SMOKE" = 1 ]; then
  MODE="CPU smoke (tiny sizes, no GPU needed)"
  GPU_RAY_MODE_ARGS=(--cpu-smoke)
  DEVICE=cpu
else
  MODE="GPU"
  GPU_RAY_MODE_ARGS=()
  DEVICE=cuda
fi
echo "distmeta gpu_ray_check ($MODE): repo $REPO, outputs $OUTDIR, python $PY, ray dir $RAYDIR, $(date -u +%FT%TZ)"

# 0. the machine ------------------------------------------------------------------------------
if [ "$SMOKE" = 0 ]; then
  step nvidia-smi 20 bash -c "nvidia-smi -L && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee '$OUTDIR/nvidia_smi.txt'"
fi
step environment 30 "$PY" - "$DEVICE" <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
import torch
print("torch", torch.__version__, "cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for name in ["numpy", "yaml", "pydantic", "PIL", "pytest", "ray"]:
    try:
        m = importlib.import_module(name)
        print(f"  {name:<9} {getattr(m, '__version__', getattr(m, 'VERSION', 'present'))}  {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:<9} MISSING ({type(exc).__name__})")
sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)
EOF

# 1. Ray ----------------------------------------------------------------------------------------
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
RAY_OK=0
if [ -f "$BUNDLE/PYTHON_VERSION" ] && [ "$(cat "$BUNDLE/PYTHON_VERSION")" = "$PYVER" ]; then
  step install-ray 60 env PYTHON="$PY" bash benchmarks/gpu_bundle.sh install --bundle "$BUNDLE" --site "$RAYDIR/site"
  if [ -d "$RAYDIR/site/ray" ]; then
    export PYTHONPATH="$RAYDIR/site:$PYTHONPATH"
    RAY_OK=1
  fi
else
  if [ -d "$BUNDLE" ]; then
    echo "bundle $BUNDLE is for Python $(cat "$BUNDLE/PYTHON_VERSION" 2>/dev/null || echo '?'), this is $PYVER: not installed"
  else
    echo "no bundle at $BUNDLE"
  fi
  if "$PY" -c "import ray" 2>/dev/null; then
    echo "using the Ray this Python imports: $("$PY" -c 'import ray; print(ray.__version__, ray.__file__)')"
    RAY_OK=1
  else
    echo "no Ray: build the bundle (bash benchmarks/gpu_bundle.sh build) and carry .gpu-bundle"
    record install-ray "FAILED (no bundle, no ray)" FAILED
  fi
fi

# 2. (a) the engine under Ray on the GPU ------------------------------------------------------------
if [ "$RAY_OK" = 1 ]; then
  # shellcheck disable=SC2086
  step "a: ray engine" 150 "$PY" benchmarks/gpu_ray.py ${GPU_RAY_MODE_ARGS[@]+"${GPU_RAY_MODE_ARGS[@]}"} --json-out "$OUTDIR/gpu_ray.json" ${GPU_RAY_ARGS:-}
  # on the step's time limit gpu_ray.py gets SIGTERM and shuts its Ray down (the raylet and
  # GCS of a ray.init()-started cluster also die with their driver)
else
  echo
  echo "=== [a: ray engine] SKIPPED: no Ray"
  record "a: ray engine" "SKIPPED (no Ray)"
fi

# 3. (b) GPU-marked tests ------------------------------------------------------------------------
GPU_TEST_FILES=$(grep -l "mark.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
echo
echo "GPU-marked test files: ${GPU_TEST_FILES:-none}"
if [ -n "$GPU_TEST_FILES" ]; then
  # shellcheck disable=SC2086
  step "b: pytest -m gpu" 60 "$PY" -m pytest -q -rs -p no:cacheprovider --basetemp="$SCRATCH/tmp/pytest" \
    -o addopts="" -m gpu $GPU_TEST_FILES --junitxml="$OUTDIR/pytest_gpu.xml"
fi

# 4. (c) meta-step vs plain training, batched on the device ------------------------------------------
if [ -z "${META_STEP_ARGS:-}" ]; then
  # vmap (the batched meta-step) and every plain yardstick meta_step.py offers
  EXECS=$("$PY" - <<'EOF'
import re, subprocess, sys
try:
    h = subprocess.run([sys.executable, "benchmarks/meta_step.py", "--help"], capture_output=True, text=True,
                       timeout=60).stdout
except subprocess.TimeoutExpired:
    h = ""
m = re.search(r"--executors\s+\{([^}]*)\}", h)
names = m.group(1).split(",") if m else ["vmap", "plain"]
print(" ".join(n for n in names if n == "vmap" or n.startswith("plain")))
EOF
)
  if [ "$SMOKE" = 1 ]; then
    META_STEP_ARGS="--meta-batch 4 --channels 8 --queries 1 --threads 1 --repeats 1 --warmup 1 --orders second"
  else
    META_STEP_ARGS="--meta-batch 32 --repeats 3 --warmup 1 --orders second first"
  fi
  META_STEP_ARGS="$META_STEP_ARGS --inner-steps 1 --skip-sinusoid --executors ${EXECS:-vmap plain}"
fi
# shellcheck disable=SC2086
step "c: meta_step" 75 "$PY" benchmarks/meta_step.py --device "$DEVICE" --json-out "$OUTDIR/meta_step.json" $META_STEP_ARGS

# summary ----------------------------------------------------------------------------------------
echo
echo "=== results"
"$PY" - "$OUTDIR" <<'EOF'
import json, os, sys
out = sys.argv[1]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

g = load("gpu_ray.json")
if g:
    print(f"(a) Ray engine, {g['machine']['device']}, meta-batch {g['meta_batch']}, {g['channels']} channels, "
          f"{g['steps']} timed steps, {g['transport']}")
    print(f"    {'row':<8}{'GPU/worker':>11}{'tasks/s':>9}{'step ms':>9}{'vs local':>9}{'speed-up':>9}{'effic.':>8}"
          f"{'overhead':>9}{'grad err':>10}")
    for k, r in g["rows"].items():
        ray = k.startswith("ray ")
        f = lambda key, fmt: format(r[key], fmt) if ray and r.get(key) is not None else "-"
        print(f"    {k:<8}{(format(r['num_gpus'], '.2f') if ray and r.get('num_gpus') else '-'):>11}"
              f"{r['tasks_per_s']:>9.1f}{r['step_ms_median']:>9.1f}{f('vs_local', '.2f'):>9}{f('speedup', '.2f'):>9}"
              f"{f('efficiency', '.0%'):>8}{f('overhead_fraction', '.1%'):>9}{f('grad_rel_err', '.1e'):>10}")
    for k, e in g.get("errors", {}).items():
        print(f"    {k}: FAILED: {e}")
else:
    print("(a) no gpu_ray.json")
m = load("meta_step.json")
if m:
    rows = [r for r in m.get("rows", []) if isinstance(r, dict) and not r.get("error")]
    print(f"(c) meta_step.py on {m.get('device')}, conv4 meta-batch {m.get('conv4', {}).get('meta_batch')}: "
          "ms per step (x: over each plain yardstick; target vmap <= 3x plain)")
    cells = {}
    for r in rows:
        cells.setdefault((r.get("inner_steps"), r.get("order")), {})[r.get("executor")] = r.get("ms_per_step")
    for (k, order), ex in cells.items():
        v = ex.get("vmap")
        parts = [f"{e} {ms:.1f}" for e, ms in ex.items() if ms is not None]
        ratios = [f"vmap/{e} {v / ms:.2f}x ({'met' if v / ms <= 3 else 'NOT met'})"
                  for e, ms in ex.items() if e.startswith("plain") and v and ms]
        print(f"    {k} inner, {order:<6}: " + ", ".join(parts) + ("; " + ", ".join(ratios) if ratios else ""))
else:
    print("(c) no meta_step.json")
EOF
T_TOTAL=$(( $(date +%s) - T_START ))
{
  echo
  echo "=== summary ($MODE, ${T_TOTAL}s total, $FAILED failed step(s))"
  for r in "${RESULTS[@]}"; do echo "  $r"; done
} | tee "$OUTDIR/summary.txt"
"$PY" - "$OUTDIR" "$MODE" "$T_TOTAL" "$FAILED" "${STATUS_JSON[@]}" <<'EOF'
import json, os, sys
out, mode, total, failed, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
res = {"mode": mode, "seconds": total, "failed_steps": failed, "steps": [json.loads(s) for s in steps]}
for name in ("gpu_ray.json", "meta_step.json"):
    try:
        with open(os.path.join(out, name)) as f:
            res[name[:-5]] = json.load(f)
    except (OSError, ValueError):
        res[name[:-5]] = None
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(res, f, indent=1)
EOF
exit "$FAILED"
