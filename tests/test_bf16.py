"""Mixed precision on the CPU: the bf16 kernels and the bf16 fused op against float64
references, with per-output error bounds derived from bfloat16's rounding; their dispatch and
fallback; and the tutorial model trained under "mixed_bfloat16".

How the bounds are derived. bfloat16 keeps 8 significant bits, so rounding a value v gives
v (1 + d) with |d| <= u = 2^-8 (the unit roundoff). The kernels multiply bf16 operands and
accumulate in float32:

* conv kernels on unrounded inputs: each product of rounded operands is x w (1 + d1)(1 + d2),
  exact in float32 (8 x 8 significant bits fit in 24), so it is off by at most
  (2u + u^2) |x| |w|; summing K products in float32 adds at most K 2^-24 (1 + u)^2 sum |x||w|.
  Per output: |z - z_ref| <= (2u + u^2 + K 2^-24 (1 + u)^2) sum |x| |w|, where the sum of
  |x| |w| over the output's terms is the float64 reference of the same conv on |x| and |w|.
* the fused op, fed inputs that are already bf16 (x, dy, and the kernel after its rounding),
  computes everything else as the float32 kernels do (tested to F32_RTOL of the tensor's
  scale in test_op.py) and rounds only where it stores bf16:
  y = bf16(y32): |y - y_ref| <= u |y_ref| + F32_RTOL max|y_ref|;
  dz is rounded to bf16 before the two conv gradients, which adds u sum |x| |dz_ref| to
  dkernel (float32 output) and (u + u^2) sum |dz_ref| |w| + u |dx_ref| to dx (bf16 output);
  dbeta, mean and variance are float32 reductions: F32_RTOL of their scale.
* the backward recovers xhat from the bf16 y where |beta| <= |gamma| (else it recomputes z):
  v = y / slope^[v<0] is off by u |v|, so xhat = (v - beta) / gamma by e = u |v| / |gamma|.
  That adds sum |du| e to dgamma and, in training (dz = gamma rstd (du - mean(du)
  - xhat mean(du xhat))), |gamma| rstd (|xhat| + e) sum(|du| e) / N + |dz_xhat| e to each dz,
  which the two conv gradients carry as sum |x| |ddz| and sum |ddz| |w|.
Outputs of the kernels start as NaN (the bindings poison them), so an element never written
fails the finiteness check; every test draws fresh random inputs.
"""
import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import pyae.ops
from pyae import data, models

import reference
from reference import assert_within
from conftest import bf16_kernels_here
from op_cases import AWKWARD, FASHION_BLOCKS, make_inputs, op_attrs, shape_id

U = 2.0 ** -8
F32_RTOL = 5e-5  # the float32 kernels' tested accuracy (test_op.py), relative to the scale
# The filter gradient pairs the same pixel of two images: odd image counts (an image paired
# with zeros), chunks of several image pairs, small channel counts past one 64-wide block or
# under a vector, odd widths.
FILTER_GRAD_AWKWARD = [
    (2, 7, 9, 6, 80, 3, 2, "same", False),  # small rows of 5 pixels, 80 = 64 + 16 filters
    (3, 5, 1, 5, 66, 3, 1, "same", True),   # rows of one pixel, 66 big and 5 small channels
    (21, 6, 5, 4, 8, 3, 1, "same", False),  # blocks of 4 images (two pairs a chunk) and of 1
]
KERNEL_CASES = FASHION_BLOCKS + AWKWARD + FILTER_GRAD_AWKWARD


def needs_bf16_kernels():
    if bf16_kernels_here() == "none":
        pytest.skip("no bf16 kernels here (a CPU without AVX512-BF16 or no native op): "
                    "tests/test_layers.py runs the fallback")
    from pyae import _native  # pylint: disable=import-outside-toplevel

    return _native


def to_bf16(values):
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16)


def bits(values):
    return to_bf16(values).view(np.uint16)


def rounded(values):
    """The float64 value of each element after rounding to bf16."""
    return to_bf16(values).astype(np.float64)


def conv_bound(magnitude, terms):
    """The per-output bound of a conv of rounded operands (module docstring)."""
    return (2 * U + U * U + terms * 2.0 ** -24 * (1 + U) ** 2) * magnitude


# --- the three convolutions (pyae._native) -------------------------------------------------


@pytest.mark.parametrize("case", KERNEL_CASES, ids=shape_id)
def test_bf16_conv_kernels_within_rounding_bound_of_float64(rng, case):
    native = needs_bf16_kernels()
    inputs = make_inputs(rng, case)
    x, kernel = inputs["x"], inputs["kernel"]
    *_, stride, padding, transpose = case
    strides = (stride, stride)
    geo = reference.Geometry(x.shape, kernel.shape, strides, padding, transpose)
    conv = geo.conv_adjoint if transpose else geo.conv
    z = native.conv_bf16(bits(x), kernel, strides=strides, padding=padding, transpose=transpose)
    terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[3 if transpose else 2]
    assert_within(z, conv(np.float64(x), np.float64(kernel)),
                  conv_bound(conv(np.abs(np.float64(x)), np.abs(np.float64(kernel))), terms),
                  "z")
    # The filter gradient patches(big)^T x small, summed over every small pixel of the batch.
    big, small = (z, x) if transpose else (x, z)
    big = rng.normal(size=big.shape).astype(np.float32)
    small = rng.normal(size=small.shape).astype(np.float32)
    dfilter = native.filter_grad_bf16(bits(big), bits(small), list(kernel.shape),
                                      strides=strides, padding=padding)
    plain = reference.Geometry(big.shape, kernel.shape, strides, padding, False)
    pixels = small.shape[0] * small.shape[1] * small.shape[2]
    assert_within(dfilter, plain.matrix_grad(np.float64(big), np.float64(small)),
                  conv_bound(plain.matrix_grad(np.abs(np.float64(big)),
                                               np.abs(np.float64(small))), pixels),
                  "dfilter")


# --- the bf16 fused op (TensorFlow) --------------------------------------------------------


def bf16_op(inputs, attrs, x=None):
    return pyae.ops.fused_conv_bn_leaky_relu(
        tf.constant(to_bf16(inputs["x"]) if x is None else x), inputs["kernel"],
        inputs["gamma"], inputs["beta"], inputs["moving_mean"], inputs["moving_variance"],
        impl="native", **attrs)


def reference_inputs(inputs):
    """The float64 values the bf16 op computes with: x and the kernel rounded to bf16."""
    return dict(inputs, x=rounded(inputs["x"]), kernel=rounded(inputs["kernel"]))


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=shape_id)
def test_bf16_op_forward_within_rounding_bound_of_float64(rng, case, training):
    needs_bf16_kernels()
    inputs = make_inputs(rng, case)
    attrs = op_attrs(case, training)
    out = bf16_op(inputs, attrs)
    assert out.y.dtype == tf.bfloat16 and out.mean.dtype == tf.float32
    y_ref, mean_ref, var_ref, _ = reference.forward(*reference_inputs(inputs).values(), **attrs)
    assert_within(out.y.numpy(), y_ref, U * np.abs(y_ref) + F32_RTOL * np.abs(y_ref).max(), "y")
    for name, value, value_ref in (("mean", out.mean, mean_ref),
                                   ("variance", out.variance, var_ref)):
        assert_within(value.numpy(), value_ref,
                      np.full(value_ref.shape, F32_RTOL * np.abs(value_ref).max()), name)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", FASHION_BLOCKS + AWKWARD[:6] + FILTER_GRAD_AWKWARD, ids=shape_id)
def test_bf16_op_gradients_within_rounding_bound_of_float64(rng, case, training):
    needs_bf16_kernels()
    inputs = make_inputs(rng, case)
    attrs = op_attrs(case, training)
    dy, grads = native_bf16_gradients(rng, inputs, attrs)
    assert grads[0].dtype == tf.bfloat16 and grads[1].dtype == tf.float32
    assert_gradients_within_bounds(reference_inputs(inputs), attrs, dy.astype(np.float64), grads)


def native_bf16_gradients(rng, inputs, attrs):
    """A fresh bf16 upstream dy and the native bf16 op's [dx, dkernel, dgamma, dbeta] for it."""
    x = tf.constant(to_bf16(inputs["x"]))
    params = [tf.constant(inputs[name]) for name in ("kernel", "gamma", "beta")]
    with tf.GradientTape() as tape:
        tape.watch([x] + params)
        y = pyae.ops.fused_conv_bn_leaky_relu(
            x, *params, inputs["moving_mean"], inputs["moving_variance"], impl="native",
            **attrs).y
        dy = to_bf16(rng.normal(size=y.shape))
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy.astype(np.float32))
    return dy, tape.gradient(loss, [x] + params)


def inversion_error(exact, attrs, dy):
    """Bounds of what recovering xhat from the bf16 y adds to dgamma and to each dz."""
    _, _, variance, cache = reference.forward(*exact.values(), **attrs)
    gamma, v, xhat = exact["gamma"], cache["u"], cache["xhat"]
    du = np.abs(np.where(v > 0, dy, attrs.get("negative_slope", 0.3) * dy))
    error = U * np.abs(v) / np.abs(gamma)
    dgamma_error = (du * error).sum(axis=(0, 1, 2))
    if not attrs["training"]:
        return dgamma_error, np.zeros_like(v)
    count = v.shape[0] * v.shape[1] * v.shape[2]
    rstd = 1.0 / np.sqrt(variance + 1e-3)
    dz_xhat = np.abs(gamma * rstd * (du * xhat).sum(axis=(0, 1, 2)) / count)
    dz_error = (np.abs(gamma) * rstd * (np.abs(xhat) + error) * dgamma_error / count
                + dz_xhat * error)
    return dgamma_error, dz_error


def assert_gradients_within_bounds(exact, attrs, dy, grads):
    dx, dkernel, dgamma, dbeta = grads
    dx_ref, dkernel_ref, dgamma_ref, dbeta_ref = reference.backward(dy, *exact.values(), **attrs)
    geo, dz_ref, _, _ = reference.batch_norm_backward(dy, *exact.values(), **attrs)
    dgamma_error, dz_error = inversion_error(exact, attrs, dy)
    abs_x, abs_kernel = np.abs(exact["x"]), np.abs(exact["kernel"])
    abs_dz = np.abs(dz_ref) + dz_error
    if attrs["transpose"]:
        dx_terms = geo.conv(abs_dz, abs_kernel)
        dx_error, dkernel_error = geo.conv(dz_error, abs_kernel), geo.matrix_grad(dz_error, abs_x)
        dkernel_terms = geo.matrix_grad(abs_dz, abs_x)
    else:
        dx_terms = geo.conv_adjoint(abs_dz, abs_kernel)
        dx_error = geo.conv_adjoint(dz_error, abs_kernel)
        dkernel_terms, dkernel_error = geo.matrix_grad(abs_x, abs_dz), geo.matrix_grad(abs_x, dz_error)
    assert_within(dx.numpy(), dx_ref, U * (np.abs(dx_ref) + dx_error) + (U + U * U) * dx_terms
                  + dx_error + F32_RTOL * np.abs(dx_ref).max(), "dx")
    assert_within(dkernel.numpy(), dkernel_ref, U * dkernel_terms + dkernel_error
                  + F32_RTOL * np.abs(dkernel_ref).max(), "dkernel")
    assert_within(dgamma.numpy(), dgamma_ref,
                  dgamma_error + F32_RTOL * np.abs(dgamma_ref).max(), "dgamma")
    assert_within(dbeta.numpy(), dbeta_ref,
                  np.full(dbeta_ref.shape, F32_RTOL * np.abs(dbeta_ref).max()), "dbeta")


@pytest.mark.parametrize("beta_over_gamma", [0.9, 3.0], ids=["xhat-from-y", "z-recomputed"])
def test_bf16_op_gradients_on_both_backward_paths(rng, beta_over_gamma):
    """|beta| <= |gamma| recovers xhat from y; above it the backward recomputes z."""
    needs_bf16_kernels()
    case = (2, 9, 9, 3, 8, 3, 2, "same", False)
    inputs = make_inputs(rng, case)
    signs = rng.choice([-1.0, 1.0], size=inputs["gamma"].shape)
    inputs["beta"] = (beta_over_gamma * signs * inputs["gamma"]).astype(np.float32)
    attrs = op_attrs(case, True)
    dy, grads = native_bf16_gradients(rng, inputs, attrs)
    assert_gradients_within_bounds(reference_inputs(inputs), attrs, dy.astype(np.float64), grads)


# A model's first block: nothing reads its dx, so inside a function (as in a train step) the op
# skips it, and at fewer than 4 input channels runs dkernel on the float32 kernels from dz
# rounded to bf16 (fused_bf16.cc, ConvInFloat), the same bound as the pair route's.
FIRST_BLOCKS = [FASHION_BLOCKS[0], AWKWARD[1], (3, 40, 36, 3, 32, 3, 2, "same", False)]


@pytest.mark.parametrize("beta_over_gamma", [0.9, 3.0], ids=["xhat-from-y", "z-recomputed"])
@pytest.mark.parametrize("case", FIRST_BLOCKS, ids=shape_id)
def test_bf16_op_parameter_gradients_without_dx_within_rounding_bound(rng, case,
                                                                      beta_over_gamma):
    needs_bf16_kernels()
    inputs = make_inputs(rng, case)
    signs = rng.choice([-1.0, 1.0], size=inputs["gamma"].shape)
    inputs["beta"] = (beta_over_gamma * signs * inputs["gamma"]).astype(np.float32)
    attrs = op_attrs(case, True)
    dy, (dx, *_) = native_bf16_gradients(rng, inputs, attrs)  # dx: the eager op computes it
    x = tf.constant(to_bf16(inputs["x"]))
    params = [tf.constant(inputs[name]) for name in ("kernel", "gamma", "beta")]

    @tf.function
    def parameter_gradients():
        with tf.GradientTape() as tape:
            tape.watch(params)
            y = pyae.ops.fused_conv_bn_leaky_relu(
                x, *params, inputs["moving_mean"], inputs["moving_variance"], impl="native",
                **attrs).y
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy.astype(np.float32))
        return tape.gradient(loss, params)

    assert_gradients_within_bounds(reference_inputs(inputs), attrs, dy.astype(np.float64),
                                   [dx] + parameter_gradients())


def test_bf16_op_names_an_invalid_parameter(rng):
    needs_bf16_kernels()
    case = FASHION_BLOCKS[0]
    inputs = make_inputs(rng, case)
    inputs["kernel"][0, 0, 0, 3] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="kernel contains NaN"):
        bf16_op(inputs, op_attrs(case, True))
    inputs = make_inputs(rng, case)
    inputs["moving_variance"][2] = -1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="moving_variance"):
        bf16_op(inputs, op_attrs(case, False))


def test_bf16_op_rejects_mismatched_shapes(rng):
    needs_bf16_kernels()
    inputs = make_inputs(rng, FASHION_BLOCKS[0])
    inputs["gamma"] = inputs["gamma"][:5]
    with pytest.raises(ValueError, match="gamma"):
        bf16_op(inputs, op_attrs(FASHION_BLOCKS[0], True))


# --- dispatch: the bf16 kernels follow the float32 path --------------------------------------


def test_a_forced_narrower_path_turns_the_bf16_kernels_off(bf16_path, rng):
    info = pyae.ops.build_info()["bf16"]
    choice, reason = pyae.ops.explain_impl("auto", tf.bfloat16)
    if bf16_path == "kernels":
        assert info["path"] == "avx512bf16" and "AMX" in info["reason"]
        assert choice == "native" and "bf16" in reason
        return
    assert info["path"] == "none" and choice == "tf" and reason
    case = FASHION_BLOCKS[0]
    if pyae.ops.native_available():
        with pytest.raises(ValueError, match="impl='native' is not available"):
            bf16_op(make_inputs(rng, case), op_attrs(case, True))
    out = pyae.ops.fused_conv_bn_leaky_relu(  # impl="auto": the composite ops in bf16
        tf.constant(to_bf16(rng.normal(size=(2, 6, 6, 1)))), np.ones((3, 3, 1, 4), np.float32),
        np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32),
        np.ones(4, np.float32), training=True)
    assert out.y.dtype == tf.bfloat16 and out.mean.dtype == tf.float32


# --- training the tutorial model ------------------------------------------------------------


def tutorial_test_mse(policy):
    """The tutorial's Fashion-MNIST model (28x28x1, latent 2) trained 3 epochs from fixed
    initial weights under `policy`, on the bundled offline digits: its test MSE, the
    implementations its fused blocks ran and the one its output layer ran."""
    (x_train, _), (x_test, _) = data.load_digits_28()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = models.build("fashion_mnist")
        model.compile()
        model.fit(x_train, epochs=3, batch_size=32, shuffle=False, verbose=0)
        reconstruction = model.predict(x_test, batch_size=256, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    output_layer = model.decoder.layers[-1]
    impls = {layer.last_impl for layer in model.encoder.layers + model.decoder.layers
             if hasattr(layer, "last_impl") and layer is not output_layer}
    mse = float(np.mean((np.asarray(reconstruction, np.float64) - x_test) ** 2))
    return mse, impls, output_layer.last_impl


@pytest.fixture(scope="module")
def float32_test_mse():
    return tutorial_test_mse("float32")[0]


def test_mixed_bfloat16_training_reaches_the_float32_test_mse(bf16_path, float32_test_mse):
    mse, impls, output_impl = tutorial_test_mse("mixed_bfloat16")
    # With the bf16 kernels every block runs the bf16 op (the 1-channel first block convolves
    # in float32 inside it).
    assert impls == ({"native-bf16"} if bf16_path == "kernels" else {"tf"})
    # Without them the step is XLA-compiled, where the output layer runs the composite too.
    assert output_impl == (pyae.ops.explain_output_impl("auto", "bfloat16", 1)[0]
                           if bf16_path == "kernels" else "tf")
    assert abs(mse - float32_test_mse) <= 0.05 * float32_test_mse, (mse, float32_test_mse)
