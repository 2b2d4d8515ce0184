"""The output op (conv transpose + bias + activation): the native kernels against a float64
reference on every CPU path, in float32 and bfloat16; the TF op against the composite and
numeric gradients; the composite against Keras' Conv2DTranspose; the rule and bad arguments.

bfloat16 bounds (as tests/test_bf16.py derives them): the kernels get bf16 x, dy and y (the
reference gets the same rounded values, so they add no error), accumulate in float32 and round
what they store. Rounding gives v (1 + d) with |d| <= u = 2^-8; summing K products in float32
is off by at most K 2^-24 (1 + u) sum |terms|. So per element
|out - out_ref| <= u |out_ref| (bf16 outputs y, dx only) + SUM_EPS sum |terms|, where sum |terms|
is the float64 reference on |inputs| and SUM_EPS = 2^-14 covers up to 1024 terms per float32
sum (the test shapes have fewer) and the sigmoid's float32 evaluation. Where the AVX512-BF16
kernels run (ops/kernels/output_bf16.cc) they also round the kernel (y, dx) and
dpre = dy f'(y) (dx, dkernel) to bf16 before multiplying, as Keras' layer does under
mixed_bfloat16: each rounded factor adds u sum |terms| (so 2u for dx).
Kernel outputs start as NaN (the bindings poison them): an element never written fails.
"""
import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import pyae.ops

from conftest import bf16_kernels_here, needs_native
from reference import assert_within

# (batch, height, width, in_channels, out_channels, stride): the models' two output layers at
# lean sizes, and awkward ones (odd channel counts, odd spatial sizes, unequal strides).
CASES = [
    (2, 7, 7, 32, 1, 1),
    (2, 6, 5, 32, 3, 2),
    (3, 5, 3, 5, 3, 2),
    (1, 4, 6, 5, 1, 1),
    (2, 3, 5, 7, 2, (2, 1)),
    (2, 5, 7, 16, 2, (1, 2)),
    (1, 3, 9, 6, 3, 1),
]


def case_id(case):
    return "n{}_{}x{}x{}->{}_s{}".format(*case).replace(" ", "")


def random_inputs(rng, case, with_bias=True):
    batch, height, width, in_channels, out_channels, _ = case
    x = rng.normal(size=(batch, height, width, in_channels)).astype(np.float32)
    kernel = rng.normal(scale=0.3, size=(3, 3, out_channels, in_channels)).astype(np.float32)
    bias = rng.normal(size=(out_channels,)).astype(np.float32) if with_bias else None
    return x, kernel, bias


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tf_impl_is_what_keras_conv2d_transpose_computes(rng, case, activation):
    x, kernel, bias = random_inputs(rng, case)
    layer = keras.layers.Conv2DTranspose(case[4], 3, strides=case[5], padding="same",
                                         activation=activation)
    layer.build(x.shape)
    layer.set_weights([kernel, bias])
    y = pyae.ops.conv_transpose_output(x, kernel, bias, strides=case[5],
                                       activation=activation, impl="tf")
    np.testing.assert_allclose(y.numpy(), layer(x).numpy(), rtol=1e-6, atol=1e-6)


def test_tf_impl_without_bias_in_bfloat16_keeps_the_compute_dtype(rng):
    x, kernel, _ = random_inputs(rng, CASES[1], with_bias=False)
    y = pyae.ops.conv_transpose_output(tf.cast(x, tf.bfloat16), kernel, None, strides=2,
                                       activation=None, impl="tf")
    assert y.dtype == tf.bfloat16 and y.shape == (2, 12, 10, 3)


@pytest.mark.parametrize("impl", ["tf", "auto"])
def test_float16_runs_the_composite(rng, impl):
    x, kernel, bias = random_inputs(rng, CASES[0])
    y = pyae.ops.conv_transpose_output(tf.cast(x, tf.float16), kernel, bias, impl=impl)
    assert y.dtype == tf.float16
    assert pyae.ops.explain_output_impl(impl, tf.float16)[0] == "tf"


def test_explain_says_why_auto_leaves_many_output_channels_to_tf():
    choice, reason = pyae.ops.explain_output_impl("auto", tf.float32, out_channels=64)
    assert choice == "tf" and reason


@pytest.mark.parametrize("kwargs, culprit", [
    ({"strides": 0}, "strides=0"),
    ({"strides": (1, 2, 3)}, "strides=(1, 2, 3)"),
    ({"activation": "relu"}, "activation='relu'"),
    ({"impl": "fast"}, "impl='fast'"),
    ({"bias": np.zeros(2, np.float32)}, "bias.shape=(2,)"),
    ({"kernel": np.zeros((3, 3, 1, 4), np.float32)}, "kernel.shape=(3, 3, 1, 4)"),
    ({"kernel": np.zeros((3, 3, 1), np.float32)}, "kernel.shape=(3, 3, 1)"),
    ({"x": np.zeros((7, 7, 32), np.float32)}, "x.shape=(7, 7, 32)"),
    ({"x": np.zeros((1, 7, 7, 32), np.int32)}, "x.dtype=int32"),
    ({"x": np.zeros((0, 7, 7, 32), np.float32)}, "x.shape=(0, 7, 7, 32)"),
])
def test_bad_arguments_are_named(rng, kwargs, culprit):
    x, kernel, bias = random_inputs(rng, CASES[0])
    arguments = {"x": x, "kernel": kernel, "bias": bias, **kwargs}
    with pytest.raises(ValueError, match=culprit.replace("(", r"\(").replace(")", r"\)")):
        pyae.ops.conv_transpose_output(**arguments)


def test_native_inside_xla_is_a_clear_error_and_auto_runs_the_composite(rng):
    x, kernel, bias = random_inputs(rng, CASES[0])

    @tf.function(jit_compile=True)
    def output(impl):
        return pyae.ops.conv_transpose_output(x, kernel, bias, impl=impl)

    np.testing.assert_allclose(output("auto").numpy(), output("tf").numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="impl='native' is not available.*XLA"):
        output("native")


# --- the kernels (pyae._native) against float64 ---------------------------------------------

U = 2.0 ** -8
SUM_EPS = 2.0 ** -14
F32_RTOL = 2e-5


def pad_before(small, stride, kernel):
    """TensorFlow's SAME padding before the image, for the conv from y back to x."""
    return max((small - 1) * stride + kernel - small * stride, 0) // 2


def scatter_taps(shape, strides, kernel_size):
    """For every kernel tap (kh, kw): the input rows/cols that reach the output and where."""
    (_, height, width, _), (kh_size, kw_size) = shape, kernel_size
    top, left = (pad_before(height, strides[0], kh_size), pad_before(width, strides[1], kw_size))
    for kh in range(kh_size):
        rows = np.arange(height) * strides[0] - top + kh
        row_ok = (rows >= 0) & (rows < height * strides[0])
        for kw in range(kw_size):
            cols = np.arange(width) * strides[1] - left + kw
            col_ok = (cols >= 0) & (cols < width * strides[1])
            yield kh, kw, row_ok, col_ok, rows[row_ok], cols[col_ok]


def reference_linear(x, kernel, strides):
    """conv2d_transpose(x, kernel, SAME) in float64, scattering each tap."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    batch, height, width, _ = x.shape
    z = np.zeros((batch, height * strides[0], width * strides[1], kernel.shape[2]))
    for kh, kw, row_ok, col_ok, rows, cols in scatter_taps(x.shape, strides, kernel.shape[:2]):
        terms = np.einsum("nhwc,oc->nhwo", x[:, row_ok][:, :, col_ok], kernel[kh, kw])
        z[:, rows[:, None], cols[None, :]] += terms
    return z


def reference_forward(x, kernel, bias, strides, activation):
    z = reference_linear(x, kernel, strides) + np.asarray(bias, np.float64)
    return 1.0 / (1.0 + np.exp(-z)) if activation == "sigmoid" else z


def reference_backward(dy, y, x, kernel, strides, activation):
    """(dx, dkernel, dbias) in float64 from the y the kernel is given."""
    dy, y = np.asarray(dy, np.float64), np.asarray(y, np.float64)
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    dpre = dy * y * (1.0 - y) if activation == "sigmoid" else dy
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    for kh, kw, row_ok, col_ok, rows, cols in scatter_taps(x.shape, strides, kernel.shape[:2]):
        d = dpre[:, rows[:, None], cols[None, :]]
        in_rows, in_cols = np.nonzero(row_ok)[0], np.nonzero(col_ok)[0]
        dx[:, in_rows[:, None], in_cols[None, :]] += np.einsum("nhwo,oc->nhwc", d, kernel[kh, kw])
        dkernel[kh, kw] = np.einsum("nhwo,nhwc->oc", d, x[:, row_ok][:, :, col_ok])
    return dx, dkernel, dpre.sum(axis=(0, 1, 2))


def assert_close(actual, expected, name, rtol=F32_RTOL):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: not finite (an element was never written)"
    scale = max(np.max(np.abs(expected)), 1e-6)
    error = np.max(np.abs(actual - expected)) / scale
    assert error < rtol, f"{name}: relative error {error:.2e} >= {rtol:.0e}"


def strides_of(case):
    return case[5] if isinstance(case[5], tuple) else (case[5], case[5])


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_kernels_match_float64_reference(rng, isa, case, activation):
    native = needs_native()
    x, kernel, bias = random_inputs(rng, case)
    strides = strides_of(case)
    y = native.output_conv_forward(x, kernel, bias, strides, activation)
    y_ref = reference_forward(x, kernel, bias, strides, activation)
    assert_close(y, y_ref, "y")
    y32 = y_ref.astype(np.float32)
    dy = rng.normal(size=y32.shape).astype(np.float32)
    grads = native.output_conv_backward(dy, y32, x, kernel, strides, activation)
    grads_ref = reference_backward(dy, y32, x, kernel, strides, activation)
    for name, grad, grad_ref in zip(("dx", "dkernel", "dbias"), grads, grads_ref):
        assert_close(grad, grad_ref, name, rtol=5e-5)


def to_bf16(values):
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16)


def bits(values):
    return to_bf16(values).view(np.uint16)


def from_bits(values):
    return np.asarray(values).view(ml_dtypes.bfloat16).astype(np.float64)


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_kernels_within_rounding_bound_of_float64(rng, isa, case, activation):
    native = needs_native()
    factor = U if bf16_kernels_here() != "none" else 0.0  # a rounded kernel or dpre
    x, kernel, bias = random_inputs(rng, case)
    strides = strides_of(case)
    x_rounded = to_bf16(x).astype(np.float64)
    y = native.output_conv_forward_bf16(bits(x), kernel, bias, strides, activation)
    y_ref = reference_forward(x_rounded, kernel, bias, strides, activation)
    terms = reference_linear(np.abs(x_rounded), np.abs(kernel), strides) + np.abs(bias)
    assert_within(from_bits(y), y_ref, U * np.abs(y_ref) + (factor + SUM_EPS) * terms, "y")

    y_in = to_bf16(y_ref).astype(np.float64)
    dy = to_bf16(rng.normal(size=y_ref.shape)).astype(np.float64)
    dx, dkernel, dbias = native.output_conv_backward_bf16(
        bits(dy), bits(y_in), bits(x), kernel, strides, activation)
    dx_ref, dkernel_ref, dbias_ref = reference_backward(dy, y_in, x_rounded, kernel, strides,
                                                        activation)
    abs_dpre = np.abs(dy) * (np.abs(y_in * (1 - y_in)) if activation == "sigmoid" else 1.0)
    dx_terms, dkernel_terms, dbias_terms = reference_backward(
        abs_dpre, y_in, np.abs(x_rounded), np.abs(kernel), strides, "linear")
    assert_within(from_bits(dx), dx_ref,
                  U * np.abs(dx_ref) + (2 * factor + SUM_EPS) * dx_terms, "dx")
    assert_within(dkernel, dkernel_ref, (factor + SUM_EPS) * dkernel_terms, "dkernel")
    assert_within(dbias, dbias_ref, SUM_EPS * dbias_terms, "dbias")


def test_bf16_kernels_keep_nan_in_the_activations(rng):
    native = needs_native()
    x, kernel, bias = random_inputs(rng, CASES[0])
    x[0, 3, 3, 5] = np.nan
    y = from_bits(native.output_conv_forward_bf16(bits(x), kernel, bias, (1, 1), "linear"))
    assert np.isnan(y[0, 2:5, 2:5]).all() and np.isfinite(y[1]).all()


# --- the TF op ----------------------------------------------------------------------------


def native_and_tf(rng, case, activation, dtype):
    """y and the three gradients from impl="native" and impl="tf", as float64 arrays."""
    x, kernel, bias = random_inputs(rng, case)
    x = tf.cast(x, dtype)
    kernel, bias = tf.constant(kernel), tf.constant(bias)
    weights = tf.cast(tf.constant(rng.normal(size=(1,)).astype(np.float32)), dtype)
    results = {}
    for impl in ("native", "tf"):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            y = pyae.ops.conv_transpose_output(x, kernel, bias, strides=case[5],
                                               activation=activation, impl=impl)
            loss = tf.reduce_sum(tf.cast(y * tf.cos(y) * weights, tf.float32))
        grads = tape.gradient(loss, [x, kernel, bias])
        assert y.dtype == dtype and grads[0].dtype == dtype
        assert grads[1].dtype == tf.float32 and grads[2].dtype == tf.float32
        results[impl] = [np.asarray(tf.cast(t, tf.float64)) for t in [y] + grads]
    return results


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
@pytest.mark.parametrize("case", CASES[:3], ids=case_id)
def test_native_op_agrees_with_tf_impl(rng, isa, case, activation):
    needs_native()
    results = native_and_tf(rng, case, activation, tf.float32)
    for name, native, composite in zip(("y", "dx", "dkernel", "dbias"), *results.values()):
        assert_close(native, composite, name, rtol=5e-5)


@pytest.mark.parametrize("case", CASES[:3], ids=case_id)
def test_native_bf16_op_agrees_with_tf_impl_in_bfloat16(rng, isa, case):
    """Both round to bf16, in different places: agreement to a few bf16 ulps of the scale."""
    needs_native()
    results = native_and_tf(rng, case, "sigmoid", tf.bfloat16)
    for name, native, composite in zip(("y", "dx", "dkernel", "dbias"), *results.values()):
        assert_close(native, composite, name, rtol=8 * U)


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
def test_native_gradient_matches_numeric_gradient(rng, activation):
    needs_native()
    x, kernel, bias = random_inputs(rng, (2, 3, 4, 5, 3, 2))

    def loss(x, kernel, bias):
        y = pyae.ops.conv_transpose_output(x, kernel, bias, strides=2, activation=activation,
                                           impl="native")
        return tf.reduce_sum(y * tf.cos(y))

    theoretical, numerical = tf.test.compute_gradient(
        loss, [tf.constant(t) for t in (x, kernel, bias)], delta=1e-3)
    for name, analytic, numeric in zip(("x", "kernel", "bias"), theoretical, numerical):
        scale = max(np.max(np.abs(numeric)), 1e-3)
        assert np.max(np.abs(analytic - numeric)) / scale < 3e-2, name


def test_auto_runs_the_native_op_on_the_paths_measured_faster(rng, isa):
    needs_native()
    choice, reason = pyae.ops.explain_output_impl("auto", tf.float32, out_channels=3)
    assert choice == ("native" if isa in ("avx512", "avx2") else "tf")
    assert isa in reason
    x, kernel, bias = random_inputs(rng, CASES[1])
    y = pyae.ops.conv_transpose_output(x, kernel, bias, strides=2, impl="auto")
    assert_close(y, reference_forward(x, kernel, bias, (2, 2), "sigmoid"), "y")


def test_native_kernels_name_bad_shapes(rng):
    native = needs_native()
    x, kernel, bias = random_inputs(rng, CASES[0])
    with pytest.raises(ValueError, match="kernel expects"):
        native.output_conv_forward(x, kernel[..., :4], bias)
    with pytest.raises(ValueError, match="activation='tanh'"):
        native.output_conv_forward(x, kernel, bias, (1, 1), "tanh")
    with pytest.raises(ValueError, match="bias"):
        native.output_conv_forward(x, kernel, bias[:0])
