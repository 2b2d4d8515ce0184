#!/usr/bin/env bash
# Builds pyae._native with the CUDA kernels (no TensorFlow), checks the fused op against
# PyTorch in float64, runs compute-sanitizer on a small case, and times fused vs PyTorch
# eager (cuDNN) vs torch.compile. Needs: CUDA toolkit (nvcc, compute-sanitizer), CMake,
# pybind11 and PyTorch with CUDA in the active Python.
#
#   bash bench/gpu/run.sh                 # everything
#   bash bench/gpu/run.sh --no-compile    # extra flags go to check_and_time.py
# Environment: PYAE_GPU_BUILD_DIR (default build/gpu), CMAKE_ARGS (extra cmake flags, e.g.
# -DCMAKE_CUDA_ARCHITECTURES=90), PYTHON (default python3), SKIP_SANITIZER=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${PYAE_GPU_BUILD_DIR:-$ROOT/build/gpu}"
PYTHON="${PYTHON:-python3}"
SCRIPT="$ROOT/bench/gpu/check_and_time.py"

echo "== build ($BUILD_DIR)"
PYBIND11_DIR="$("$PYTHON" -m pybind11 --cmakedir)"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$ROOT" -B "$BUILD_DIR" \
  -DCMAKE_BUILD_TYPE=Release \
  -DPYAE_WITH_TF=OFF \
  -DPYAE_WITH_CUDA=ON \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  -DPYTHON_EXECUTABLE="$(command -v "$PYTHON")" \
  -Dpybind11_DIR="$PYBIND11_DIR" \
  ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"

# The module may land in the build tree or next to the package sources (pyae/).
NATIVE_SO="$(find "$BUILD_DIR" "$ROOT/pyae" -name '_native*.so' -newer "$BUILD_DIR/CMakeCache.txt" \
  -print -quit 2>/dev/null || true)"
if [[ -z "$NATIVE_SO" ]]; then
  NATIVE_SO="$(find "$BUILD_DIR" "$ROOT/pyae" -name '_native*.so' -print -quit)"
fi
if [[ -z "$NATIVE_SO" ]]; then
  echo "no _native*.so found under $BUILD_DIR or $ROOT/pyae" >&2
  exit 1
fi
NATIVE_DIR="$(dirname "$NATIVE_SO")"
echo "== using $NATIVE_SO"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true

status=0
echo "== correctness and timing"
"$PYTHON" "$SCRIPT" --native-dir "$NATIVE_DIR" "$@" || status=$?

if [[ "${SKIP_SANITIZER:-0}" != "1" ]]; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool (small case)"
    compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PYTHON" "$SCRIPT" --native-dir "$NATIVE_DIR" --sanitize-case || status=$?
  done
fi

echo "== done (exit status $status)"
exit "$status"
