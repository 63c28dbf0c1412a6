#!/usr/bin/env bash
# A carryable Ray for the GPU machine (Python 3.12, torch preinstalled, no Ray, no network;
# what travels there is the source tree plus at most 64 MiB of carried ignored paths).
#
#   bash benchmarks/gpu_bundle.sh build [--python 3.12] [--out DIR]
#       Here, with network: DIR (default <repo>/.gpu-bundle, gitignored) gets wheels/ with
#       Ray 2.60.0's cp312 manylinux x86_64 wheel WITHOUT its Java jar (ray/jars/*, 32 MB;
#       RECORD fixed, exec bits kept), the wheels of Ray's core requirements (Requires-Dist
#       without extras, read from the wheel) and of pydantic (distmeta.schema), resolved by
#       pip for that Python and platform; nothing torch/numpy-related (the machine has them).
#       Checks that the requirements are closed, writes wheels/MANIFEST.txt, prints the size
#       and fails if bundle + source tree > 60 MiB.
#   bash benchmarks/gpu_bundle.sh install [--bundle DIR] [--site SITE]
#       On the target: pip install --no-index --no-deps --target SITE (default /tmp/dmray/site;
#       unzips the wheels itself when that Python has no pip), checks `import ray`, and prints
#       the line to use:  export PYTHONPATH=SITE:$PYTHONPATH
#   bash benchmarks/gpu_bundle.sh selftest [--bundle DIR] [--dir D] [--torch-from SITE_PACKAGES] [--no-pip]
#       Here: a bundle built for THIS Python (build --python 3.11 --out /tmp/b311) into a fresh
#       plain venv without Ray, then ray.init(num_cpus=1) and one remote task. With
#       --torch-from (a site-packages holding torch, numpy, PIL, pytest) those are linked into
#       the venv too, mimicking the GPU machine, and gpu_ray_check.sh --cpu-smoke runs there.
#       --no-pip: the venv has no pip, so install unzips the wheels itself (gpu_bundle.py).
#   bash benchmarks/gpu_bundle.sh size [--bundle DIR]
#
# Environment: PYTHON (the interpreter whose pip downloads/installs; default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$REPO/benchmarks/gpu_bundle.py"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
RAY_VERSION=2.60.0
EXTRA_REQS=("pydantic>=2.7,<3")   # distmeta's own runtime import beyond Ray's (pyproject.toml)
LIMIT_MIB=60
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

# pip, without the warnings about this machine's own index configuration
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2); }
die() { echo "gpu_bundle: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# bytes of what travels anyway: tracked files plus untracked files git does not ignore
tree_bytes() {
  (cd "$REPO" && { git ls-files -z; git ls-files -z --others --exclude-standard; } \
    | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
}

report_size() {  # report_size BUNDLE: print sizes, fail over the limit
  local bundle=$1 b t
  b=$(dir_bytes "$bundle")
  t=$(tree_bytes)
  echo "bundle $bundle: $(mib "$b") MiB ($b bytes); source tree $(mib "$t") MiB; together $(mib $((b + t))) MiB (limit $LIMIT_MIB MiB)"
  if [ $((b + t)) -gt $((LIMIT_MIB * 1048576)) ]; then
    die "bundle + source tree = $(mib $((b + t))) MiB > $LIMIT_MIB MiB: it will not fit the 64 MiB carry"
  fi
}

cmd_build() {
  local pyver=3.12 out="$REPO/.gpu-bundle"
  while [ $# -gt 0 ]; do
    case $1 in
      --python) pyver=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      *) die "build: unknown argument $1" ;;
    esac
  done
  local pip=(pip_quiet "$PY" -m pip)
  "${pip[@]}" --version >/dev/null || die "no pip for $PY (set PYTHON)"
  local dl
  dl=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle-dl.XXXXXX")
  local target=(--python-version "$pyver" --implementation cp --only-binary=:all: "${PLATFORMS[@]}")
  rm -rf "$out/wheels"
  mkdir -p "$out/wheels"

  echo "== Ray $RAY_VERSION for CPython $pyver manylinux x86_64"
  "${pip[@]}" download -q --no-deps "${target[@]}" -d "$dl" "ray==$RAY_VERSION"
  local raw
  raw=$(ls "$dl"/ray-"$RAY_VERSION"-*.whl)
  echo "downloaded $(basename "$raw"): $(mib "$(stat -c %s "$raw")") MiB"
  local stripped="$out/wheels/$(basename "$raw")"
  if command -v zip >/dev/null 2>&1 && [ -z "${GPU_BUNDLE_NO_ZIP:-}" ]; then
    # zip -d keeps every other entry byte for byte (modes included); then RECORD without the jar
    cp "$raw" "$stripped"
    zip -q -d "$stripped" 'ray/jars/*'
    local rec
    rec=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle-rec.XXXXXX")
    local record
    record=$("$PY" "$HELPER" fix-record "$raw" "$rec")
    (cd "$rec" && zip -q "$stripped" "$record")
    rm -rf "$rec"
    echo "zip -d 'ray/jars/*' -> $(basename "$stripped"): $(mib "$(stat -c %s "$stripped")") MiB"
  else
    "$PY" "$HELPER" strip "$raw" "$stripped"
  fi

  echo "== Ray's core requirements (no extras) + ${EXTRA_REQS[*]}, resolved by pip for CPython $pyver"
  mapfile -t reqs < <("$PY" "$HELPER" ray-reqs "$raw")
  echo "ray requires: ${reqs[*]}"
  "${pip[@]}" download -q "${target[@]}" -d "$out/wheels" "${reqs[@]}" "${EXTRA_REQS[@]}"
  rm -rf "$dl"
  echo "$pyver" >"$out/PYTHON_VERSION"
  "$PY" "$HELPER" check "$out/wheels" --python "$pyver"
  report_size "$out"
}

cmd_install() {
  local bundle="$REPO/.gpu-bundle" site=/tmp/dmray/site
  while [ $# -gt 0 ]; do
    case $1 in
      --bundle) bundle=$2; shift 2 ;;
      --site) site=$2; shift 2 ;;
      *) die "install: unknown argument $1" ;;
    esac
  done
  [ -d "$bundle/wheels" ] || die "no $bundle/wheels: build it first (bash benchmarks/gpu_bundle.sh build)"
  local want have
  want=$(cat "$bundle/PYTHON_VERSION" 2>/dev/null || echo "?")
  have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$want" = "$have" ] || die "bundle is for Python $want, $PY is $have"
  rm -rf "$site"
  mkdir -p "$site"
  local t0=$SECONDS
  if "$PY" -m pip --version >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
      --no-warn-script-location --target "$site" "$bundle"/wheels/*.whl
  else
    echo "no pip for $PY: unzipping the wheels"
    "$PY" "$HELPER" install "$bundle/wheels" "$site"
  fi
  local raylet="$site/ray/core/src/ray/raylet/raylet"
  [ -x "$raylet" ] || die "$raylet is not executable after the install"
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
    'import ray, pydantic, yaml; print("installed ray", ray.__version__, "at", ray.__file__, "| pydantic", pydantic.VERSION)' \
    || die "import ray/pydantic/yaml from $site failed"
  echo "installed into $site in $((SECONDS - t0))s ($(mib "$(dir_bytes "$site")") MiB); use:"
  echo "export PYTHONPATH=$site\${PYTHONPATH:+:\$PYTHONPATH}"
}

cmd_selftest() {
  local bundle=/tmp/b311 dir=/tmp/dmself torch_from="" venv_args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --no-pip) venv_args=(--without-pip); shift ;;   # exercises the unzip fallback of install
      --bundle) bundle=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --torch-from) torch_from=$2; shift 2 ;;
      *) die "selftest: unknown argument $1" ;;
    esac
  done
  local pyver
  pyver=$(cat "$bundle/PYTHON_VERSION") || die "no bundle in $bundle (build --python X.Y --out $bundle)"
  local base="python$pyver"
  command -v "$base" >/dev/null || die "no $base here for a bundle built for Python $pyver"
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "== fresh venv $dir/venv ($base, no system site-packages)"
  "$base" -m venv ${venv_args[@]+"${venv_args[@]}"} "$dir/venv"
  local vpy="$dir/venv/bin/python"
  if "$vpy" -c "import ray" 2>/dev/null; then die "the fresh venv already imports ray"; fi
  echo "the fresh venv has no ray: ok"
  PYTHON="$vpy" cmd_install --bundle "$bundle" --site "$dir/site"
  export RAY_TMPDIR="$dir/t" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0
  mkdir -p "$RAY_TMPDIR"
  echo "== ray.init(num_cpus=1) + one remote task (RAY_TMPDIR=$RAY_TMPDIR)"
  local t0=$SECONDS
  PYTHONPATH="$dir/site" timeout 300 "$vpy" - <<'EOF'
import os, sys
import ray
assert ray.__file__.startswith(os.environ["PYTHONPATH"]), ray.__file__
ray.init(num_cpus=1, include_dashboard=False)
print("remote task returned", ray.get(ray.remote(lambda: 1).remote()))
print("cluster resources", ray.cluster_resources())
ray.shutdown()
print("modules from outside the bundle and the standard library:",
      sorted({m.split(".")[0] for m, mod in list(sys.modules.items())
              if getattr(mod, "__file__", None) and "site-packages" in mod.__file__}) or "none")
EOF
  echo "selftest ray: ok ($((SECONDS - t0))s)"
  if [ -n "$torch_from" ]; then
    echo "== mirroring the GPU machine: torch, numpy, PIL, pytest and their requirements from $torch_from (no ray, pydantic, yaml)"
    local mirror="$dir/mirror"
    mkdir -p "$mirror"
    local n=0 p
    for p in "$torch_from"/*; do
      case $(basename "$p") in
        torch|torch-*|torchgen|functorch|numpy|numpy-*|numpy.libs|sympy|sympy-*|mpmath|mpmath-*|networkx|networkx-*|\
        jinja2|jinja2-*|markupsafe|markupsafe-*|fsspec|fsspec-*|PIL|pillow-*|pillow.libs|pytest|pytest-*|_pytest|\
        pluggy|pluggy-*|iniconfig|iniconfig-*|py.py|pytest_timeout.py|pytest_timeout-*|pygments|pygments-*|\
        typing_extensions.py|typing_extensions-*|filelock|filelock-*)
          ln -s "$p" "$mirror/"; n=$((n + 1)) ;;
      esac
    done
    local sp
    sp=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$mirror" >"$sp/gpu-machine-mirror.pth"   # after PYTHONPATH, like a system site-packages
    echo "linked $n entries"
    if PYTHONPATH="" "$vpy" -c "import ray" 2>/dev/null; then die "the mirror brought ray in"; fi
    echo "== gpu_ray_check.sh --cpu-smoke in that venv (installs the bundle itself)"
    PYTHON="$vpy" GPU_RAY_BUNDLE="$bundle" GPU_RAY_DIR="$dir/chk" OUT="$dir/out" \
      bash "$REPO/benchmarks/gpu_ray_check.sh" --cpu-smoke
  fi
}

cmd_size() {
  local bundle="$REPO/.gpu-bundle"
  [ "${1:-}" = "--bundle" ] && bundle=$2
  report_size "$bundle"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  install) shift; cmd_install "$@" ;;
  selftest) shift; cmd_selftest "$@" ;;
  size) shift; cmd_size "$@" ;;
  *) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
