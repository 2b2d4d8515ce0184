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


@pytest.fixture(params=["native", "tf"])
def impl(request):
    """Runs a test on the native op and on the pure-TF fallback."""
    if request.param == "native" and not native_available():
        pytest.skip(f"native op library not available: {native_unavailable_reason()}")
    return request.param
