"""The kernel contract (ops/kernels/conv_geometry.h) seen from Python: pyae.ops.geometry
answers with the native module's geometry and messages, and its pure-Python copy (symbolic
lengths, installs without pyae._native) agrees with the native one value by value."""
import itertools

import pytest

from pyae.ops import geometry
from native_module import load_native

NATIVE = load_native()


@pytest.fixture(scope="module")
def native():
    if NATIVE is None:
        pytest.skip("pyae._native is not built")
    return NATIVE


def test_python_geometry_matches_the_native_contract_everywhere(native):
    grid = itertools.product(range(1, 13), range(1, 6), range(1, 4), ("same", "valid"),
                             (False, True))
    for length, kernel, stride, padding, transpose in grid:
        expected = native.output_length(length, kernel, stride, padding, transpose)
        assert geometry.python_output_length(length, kernel, stride, padding, transpose) == \
            expected, (length, kernel, stride, padding, transpose)
        assert geometry.output_length(length, kernel, stride, padding, transpose) == expected


@pytest.mark.parametrize("epsilon, negative_slope", [
    (1e-3, 0.3), (1e-3, 0.0), (0.0, 0.3), (-1.0, 0.3), (float("nan"), 0.3), (1e-3, -0.5),
    (2.5e-7, float("nan")), (-1, 0.3)])
def test_python_parameter_rule_matches_the_native_contract(native, epsilon, negative_slope):
    assert geometry.python_check_op_params(epsilon, negative_slope) == \
        native.check_op_params(epsilon, negative_slope)


@pytest.mark.parametrize("without_native", [False, True], ids=["native", "python-fallback"])
@pytest.mark.parametrize("epsilon, negative_slope, message", [
    (-1.0, 0.3, r"epsilon must be > 0\. Received: epsilon=-1\.0$"),
    (0, 0.3, r"Received: epsilon=0\.0$"),
    (1e-3, -0.2, r"negative_slope must be >= 0\. Received: negative_slope=-0\.2$"),
    ("0.1", 0.3, r"epsilon must be a number\. Received: epsilon='0\.1'"),
])
def test_bad_parameters_raise_naming_the_value(monkeypatch, without_native, epsilon,
                                               negative_slope, message):
    if without_native:
        monkeypatch.setattr(geometry, "_native", lambda: None)
    elif NATIVE is None:
        pytest.skip("pyae._native is not built")
    with pytest.raises(ValueError, match=message):
        geometry.check_op_params(epsilon, negative_slope)


def test_symbolic_lengths_use_the_python_arithmetic():
    tf = pytest.importorskip("tensorflow")
    length = tf.constant(7)
    assert int(geometry.conv_transpose_output_length(length, 3, 2, "valid")) == 15
    assert geometry.conv_output_length(None, 3, 2, "same") is None
