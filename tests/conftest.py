"""Shared fixtures: fixed seeds for every test, and the op implementations to run."""
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def fixed_seed():
    """Every test draws fresh random inputs from a seed fixed per test."""
    import keras  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    return 1234


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """scikit-learn's OpenMP loops (t-SNE, k-means) spin-wait for busy cores on a shared
    2-core machine and run many times slower there than on one thread."""
    with threadpool_limits(1, user_api="openmp"):
        yield


@pytest.fixture
def rng(request, fixed_seed):
    """A numpy Generator seeded with the test module's SEED, if it sets one."""
    return np.random.default_rng(getattr(request.module, "SEED", fixed_seed))


def native_available():
    import pyae.ops  # pylint: disable=import-outside-toplevel

    return pyae.ops.native_available()


def native_unavailable_reason():
    import pyae.ops  # pylint: disable=import-outside-toplevel

    try:
        return pyae.ops.build_info()["tf_ops"]["reason"]
    except ValueError as err:  # e.g. an unreadable build record: still only a skip reason
        return f"build_info() failed: {err}"


def needs_native():
    """The pybind11 module of the native kernels; skips where the op library is not built."""
    if not native_available():
        pytest.skip(f"native op library not available: {native_unavailable_reason()}")
    from pyae import _native  # pylint: disable=import-outside-toplevel

    return _native


@pytest.fixture(params=["native", "tf"])
def impl(request):
    """Runs a test on the native op and on the pure-TF fallback."""
    if request.param == "native" and not native_available():
        pytest.skip(f"native op library not available: {native_unavailable_reason()}")
    return request.param


def machine_isas():
    """The CPU kernel paths this build has and this CPU runs, best first ([] without the
    native op)."""
    import pyae.ops  # pylint: disable=import-outside-toplevel

    info = pyae.ops.isa_info() if native_available() else None
    return [] if info is None else [name for name in info["built"] if name in info["supported"]]


def _set_isa_everywhere(name):
    """The TF op and the pybind11 module (each has its own copy of the kernels) on `name`."""
    import pyae.ops  # pylint: disable=import-outside-toplevel
    from pyae import _native  # pylint: disable=import-outside-toplevel

    pyae.ops.set_isa(name)
    _native.set_isa(name)


def _use_isa(name):
    """Runs the native kernels on path `name` (skips where the machine lacks it)."""
    if not native_available():
        pytest.skip(f"native op library not available: {native_unavailable_reason()}")
    if name not in machine_isas():
        pytest.skip(f"this build or CPU has no {name} path (it has {machine_isas()})")
    _set_isa_everywhere(name)


def _restore_isa():
    _set_isa_everywhere(os.environ.get("PYAE_ISA", "auto"))


@pytest.fixture(params=["avx512", "avx2", "generic"])
def isa(request):
    """Runs a native-op test on every CPU kernel path the machine has."""
    _use_isa(request.param)
    yield request.param
    _restore_isa()


@pytest.fixture(params=["native-avx512", "native-avx2", "native-generic", "tf"])
def impl_on_every_path(request):
    """Like `impl`, with the native op on every CPU kernel path the machine has."""
    impl, _, path = request.param.partition("-")
    if impl == "tf":
        yield impl
        return
    _use_isa(path)
    yield impl
    _restore_isa()


def bf16_kernels_here():
    """The bf16 kernels' path on the kernel path in use ("none" where this CPU, build or a
    forced narrower path has none, or without the native op)."""
    import pyae.ops  # pylint: disable=import-outside-toplevel

    return pyae.ops.bf16_info()["path"] if native_available() else "none"


@pytest.fixture(params=["bf16-kernels", "bf16-fallback"])
def bf16_path(request):
    """Runs a mixed-precision test on the bf16 kernels (where this CPU has them) and on what a
    CPU without them runs: there the kernels are turned off by forcing a narrower float32 path
    (as PYAE_ISA=avx2 does), so both are tested on one machine."""
    has_kernels = bf16_kernels_here() != "none"
    if request.param == "bf16-kernels":
        if not has_kernels:
            pytest.skip("no bf16 kernels here (CPU without AVX512-BF16, a narrower forced path, "
                        "or no native op)")
        yield "kernels"
        return
    if not has_kernels:
        yield "fallback"
        return
    _use_isa(next(name for name in machine_isas() if name != "avx512"))
    yield "fallback"
    _restore_isa()
