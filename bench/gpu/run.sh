#!/usr/bin/env bash
# The one device call of the CUDA path (bench/README.md, "GPU"): on a GPU machine with the
# CUDA toolkit, CMake, pybind11 and PyTorch but no TensorFlow, in under 8 minutes:
#   1. build pyae._native with the CUDA kernels for sm_90 only, no TF op library, and the
#      sanitizer's driver program (bench/gpu/sanitize_cases.cu);
#   2. compute-sanitizer memcheck and racecheck on that program's small cases;
#   3. the CUDA kernel tests (tests/test_cuda.py) against the float64 reference;
#   4. bench/gpu/check_and_time.py: every case against a float64 PyTorch reference, then fused
#      vs PyTorch eager (cuDNN, channels_last) vs torch.compile at the tutorial's shapes.
# Every log and table goes to $OUT (default: a fresh temporary folder); summary.txt says
# what each step did and how long it took. The exit status is the first failure's.
#
#   bash bench/gpu/run.sh              # on the GPU machine
#   bash bench/gpu/run.sh --dry-run    # here: the same build (nvcc compiles for sm_90), the
#                                      # tests and the check script on the CPU kernels
# Environment: PYTHON (default python3), OUT, BUILD_DIR (default build/gpu),
# DEADLINE_S (default 450: torch.compile timings stop so that the run ends before it).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/gpu}"
OUT="${OUT:-$(mktemp -d /tmp/pyae-gpu-XXXXXX)}"
DEADLINE_S="${DEADLINE_S:-450}"
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
STATUS=0
START=$SECONDS

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LOG TIMEOUT COMMAND...: runs a step with its output in LOG (and on the terminal).
step() {
  local name="$1" log="$2" limit="$3"
  shift 3
  local begin=$SECONDS rc
  echo "== $name" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  note "$(printf '%-28s %s  %4ds  (log: %s)' "$name" "$([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - begin)) "$(basename "$log")")"
  if [[ $rc != 0 && $STATUS == 0 ]]; then STATUS=$rc; fi
  return "$rc"
}

note "pyae GPU run $(date -u '+%Y-%m-%d %H:%M UTC')  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')  dry_run=$DRY_RUN"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader \
  2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY" || true

# The device image has no scipy-openblas32 (the C++ kernels' BLAS): bench/README.md says how
# its wheel travels in .whl/.
if ! "$PYTHON" -c "import scipy_openblas32" 2>/dev/null; then
  if compgen -G "$ROOT/.whl/scipy_openblas32-*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/pyae-site "$ROOT"/.whl/scipy_openblas32-*.whl
    export PYTHONPATH="/tmp/pyae-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    note "scipy-openblas32 is missing and no .whl/scipy_openblas32-*.whl travelled"; exit 2
  fi
fi

# nvcc and compute-sanitizer live in the toolkit's bin/, not always on the PATH.
for dir in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
  if [[ -d $dir ]]; then PATH="$PATH:$dir"; fi
done
export PATH
# The tools this run relies on, as found (a missing one fails its step, not the run).
{
  echo "tools: python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')," \
    "torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null || echo none)," \
    "$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'no nvcc')," \
    "compute-sanitizer $(compute-sanitizer --version 2>/dev/null | grep -o 'Version [0-9.]*' || echo none)," \
    "$(cmake --version | head -n 1)"
} | tee -a "$SUMMARY"
if command -v ninja >/dev/null 2>&1 && [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
  export CMAKE_GENERATOR=Ninja
fi
export ROOT BUILD_DIR PYTHON
configure() {
  cmake -S "$ROOT" -B "$BUILD_DIR" \
    -DCMAKE_BUILD_TYPE=Release \
    -DPYAE_WITH_TF=OFF \
    -DPYAE_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DPYAE_OUTPUT_DIR="$BUILD_DIR/pyae" \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" &&
    cmake --build "$BUILD_DIR" -j "$(nproc)" --target _native pyae_cuda_sanitize
}  # (pyae_cuda_sanitize exists only when CMake found nvcc: no silent CPU-only build)
export -f configure  # `timeout` runs programs: the step runs it in a bash
step "build (sm_90, no TF)" "$OUT/build.log" 300 bash -c configure || { note "build failed: stop"; exit "$STATUS"; }
NATIVE_DIR="$BUILD_DIR/pyae"
SANITIZE_BIN="$(find "$BUILD_DIR" -name pyae_cuda_sanitize -type f -perm -u+x | head -n 1)"
export PYAE_NATIVE_DIR="$NATIVE_DIR" PYTHONUNBUFFERED=1

if [[ $DRY_RUN == 1 ]]; then
  note "compute-sanitizer            skipped in the dry run (no GPU); built: ${SANITIZE_BIN#"$ROOT"/}"
else
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool" "$OUT/sanitizer.log" 120 \
      compute-sanitizer --tool "$tool" --error-exitcode 1 "$SANITIZE_BIN"
  done
fi

step "tests/test_cuda.py" "$OUT/tests.log" 200 \
  "$PYTHON" -m pytest --noconftest -p no:cacheprovider -q -rs tests/test_cuda.py

CHECK_ARGS=(--out "$OUT")
if [[ $DRY_RUN == 1 ]]; then
  CHECK_ARGS+=(--dry-run)
else
  # torch.compile costs seconds a shape: shapes get it while the run stays inside DEADLINE_S
  # (about 90 s kept for the eager and fused timings after the last compiled shape).
  CHECK_ARGS+=(--compile-budget "$((DEADLINE_S - (SECONDS - START) - 150))")
fi
# check.txt and timing.txt hold its lines; its own log is kept only when it failed.
step "check_and_time.py" "$OUT/check.log" $((DEADLINE_S + 60 - (SECONDS - START))) \
  "$PYTHON" bench/gpu/check_and_time.py "${CHECK_ARGS[@]}" && rm -f "$OUT/check.log"

note "total $((SECONDS - START)) s, exit status $STATUS; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$STATUS"
