#!/usr/bin/env bash
# Run here, in the checkout a GPU session sends, before its one device call: puts the wheel
# of scipy-openblas32 (the C++ kernels' BLAS, absent from the GPU image, which cannot reach a
# registry) into .whl/, which git ignores and the device call carries. The version is the
# one this environment builds against; the wheel is pure C (py3-none), so Python 3.12 there
# takes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
version="$("$PYTHON" -c "import importlib.metadata as m; print(m.version('scipy-openblas32'))")" || {
  echo "prepare.sh: $PYTHON has no scipy-openblas32; activate the project's environment" >&2
  exit 2
}
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "scipy-openblas32==$version"
ls -l .whl
