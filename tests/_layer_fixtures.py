"""Fixtures and helpers shared by tests/test_layers.py and tests/test_fuse_model.py."""
import keras
import numpy as np
import pytest


SEED = 20240611


@pytest.fixture(autouse=True)
def seeded():
    """Fix Python, NumPy and TensorFlow seeds for every test."""
    keras.utils.set_random_seed(SEED)


@pytest.fixture
def dtype_policy(request):
    """Set the global Keras dtype policy named by the test's param; restore it after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)


def random_normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype("float32")


def random_positive(rng, shape):
    return rng.uniform(0.5, 2.0, size=shape).astype("float32")


def assert_close(actual, expected, tol=1e-4):
    """allclose with an absolute tolerance scaled by the reference's magnitude."""
    actual = np.asarray(actual, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    assert actual.shape == expected.shape
    scale = 1.0 + np.max(np.abs(expected), initial=0.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def randomize_batch_norm(batch_norm, rng):
    """Non-trivial gamma, beta (where present) and moving statistics (variance positive)."""
    channels = batch_norm.moving_mean.shape[0]
    if batch_norm.scale:
        batch_norm.gamma.assign(random_positive(rng, (channels,)))
    if batch_norm.center:
        batch_norm.beta.assign(random_normal(rng, (channels,)))
    batch_norm.moving_mean.assign(random_normal(rng, (channels,), 0.1))
    batch_norm.moving_variance.assign(random_positive(rng, (channels,)))


def needs_native_output_op(impl):
    """Skips a test of impl="native" where the loaded op library has no output op (one built
    before pyae.ops.conv_transpose_output had native kernels); the reason says so."""
    import pyae.ops  # pylint: disable=import-outside-toplevel

    if impl == "native":
        try:
            pyae.ops.explain_output_impl("native")
        except ValueError as err:
            pytest.skip(str(err))
