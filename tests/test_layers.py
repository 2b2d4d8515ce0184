"""pyae.layers: the fused layers equal Conv2D(use_bias=False)+BatchNormalization+LeakyReLU."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import pyae.layers
import pyae.ops
from pyae.layers import FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU

import reference
from conftest import native_unavailable_reason

from _layer_fixtures import (  # noqa: F401  (fixtures are used by name; SEED seeds rng)
    SEED, assert_close, dtype_policy, needs_native_output_op, random_normal,
    randomize_batch_norm, seeded,
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One block: input shape (NHWC), filters, kernel size, strides, padding, transposed."""

    input_shape: tuple
    filters: int
    kernel_size: int = 3
    strides: int = 1
    padding: str = "same"
    transpose: bool = False

    def __str__(self):
        kind = "convT" if self.transpose else "conv"
        shape = "x".join(map(str, self.input_shape))
        return f"{kind}-{shape}-f{self.filters}-k{self.kernel_size}-s{self.strides}-{self.padding}"


TUTORIAL_CASES = [  # Fashion-MNIST encoder and decoder blocks, batch 4
    Case((4, 28, 28, 1), 32),
    Case((4, 28, 28, 32), 64, strides=2),
    Case((4, 14, 14, 64), 64, strides=2),
    Case((4, 7, 7, 64), 64),
    Case((4, 7, 7, 64), 64, transpose=True),
    Case((4, 7, 7, 64), 64, strides=2, transpose=True),
    Case((4, 14, 14, 64), 32, strides=2, transpose=True),
]
AWKWARD_CASES = [
    Case((1, 9, 7, 3), 5),
    Case((1, 9, 7, 3), 5, transpose=True),
    Case((3, 9, 7, 1), 3, kernel_size=1),
    Case((3, 9, 7, 1), 3, kernel_size=1, transpose=True),
    Case((2, 11, 9, 3), 1, kernel_size=5, padding="valid"),
    Case((2, 11, 9, 3), 1, kernel_size=5, padding="valid", transpose=True),
    Case((2, 9, 7, 3), 4, strides=2, padding="valid"),
    Case((2, 9, 7, 3), 4, strides=2, padding="valid", transpose=True),
    Case((2, 10, 6, 2), 3, kernel_size=5, strides=2),
    Case((2, 5, 3, 2), 3, kernel_size=5, strides=2, transpose=True),
]
ALL_CASES = TUTORIAL_CASES + AWKWARD_CASES


# ---------------------------------------------------------------------------- helpers


def fused_class(transpose):
    return FusedConvTransposeBNLeakyReLU if transpose else FusedConvBNLeakyReLU


def build_fused(case, **kwargs):
    layer = fused_class(case.transpose)(
        case.filters, case.kernel_size, strides=case.strides, padding=case.padding, **kwargs
    )
    layer.build(case.input_shape)
    return layer


def build_keras_stack(case):
    """(conv, batch_norm, leaky_relu), built, with non-trivial BN weights."""
    conv_class = keras.layers.Conv2DTranspose if case.transpose else keras.layers.Conv2D
    conv = conv_class(case.filters, case.kernel_size, strides=case.strides,
                      padding=case.padding, use_bias=False)
    batch_norm = keras.layers.BatchNormalization()
    conv.build(case.input_shape)
    batch_norm.build(conv.compute_output_shape(case.input_shape))
    return conv, batch_norm, keras.layers.LeakyReLU()


def copy_stack_weights(stack, fused):
    conv, batch_norm, _ = stack
    fused.kernel.assign(conv.kernel)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(fused, name).assign(getattr(batch_norm, name))


def matched_pair(case, rng, **fused_kwargs):
    stack = build_keras_stack(case)
    randomize_batch_norm(stack[1], rng)
    fused = build_fused(case, **fused_kwargs)
    copy_stack_weights(stack, fused)
    return stack, fused


def run_stack(stack, x, training):
    conv, batch_norm, leaky_relu = stack
    return leaky_relu(batch_norm(conv(x), training=training))


def stack_variables(stack):
    conv, batch_norm, _ = stack
    return [conv.kernel, batch_norm.gamma, batch_norm.beta]


def fused_variables(fused):
    return [fused.kernel, fused.gamma, fused.beta]


def output_and_gradients(forward, variables, x, upstream):
    """y, and the gradients of sum(y * upstream) w.r.t. x and each variable."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = forward(x)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x] + variables)
    return y, grads


def moving_statistics(layer):
    return [layer.moving_mean.numpy(), layer.moving_variance.numpy()]


# ---------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_matches_keras_stack(case, training, impl, rng):
    stack, fused = matched_pair(case, rng, impl=impl)
    x = tf.constant(random_normal(rng, case.input_shape))
    expected_shape = fused.compute_output_shape(case.input_shape)
    upstream = tf.constant(random_normal(rng, expected_shape))

    y_ref, grads_ref = output_and_gradients(
        lambda t: run_stack(stack, t, training), stack_variables(stack), x, upstream)
    y, grads = output_and_gradients(
        lambda t: fused(t, training=training), fused_variables(fused), x, upstream)

    assert fused.last_impl == impl
    assert tuple(y.shape) == tuple(expected_shape)
    assert_close(y, y_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad, grad_ref, tol=2e-4)
    for stat, stat_ref in zip(moving_statistics(fused), moving_statistics(stack[1])):
        assert_close(stat, stat_ref)


def test_weights_named_and_shaped_like_keras(rng):
    case = Case((2, 9, 7, 3), 5, transpose=True)
    stack, fused = matched_pair(case, rng)
    keras_weights = {w.name: tuple(w.shape) for layer in stack for w in layer.weights}
    fused_weights = {w.name: tuple(w.shape) for w in fused.weights}
    assert fused_weights == keras_weights
    assert [w.name for w in fused.trainable_weights] == ["kernel", "gamma", "beta"]


@pytest.mark.parametrize("center, scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_off_match_keras(center, scale, impl, rng):
    case = Case((2, 8, 8, 3), 4)
    x = tf.constant(random_normal(rng, case.input_shape))
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    batch_norm = keras.layers.BatchNormalization(center=center, scale=scale)
    y_ref = keras.layers.LeakyReLU()(batch_norm(conv(x), training=True))
    fused = build_fused(case, center=center, scale=scale, impl=impl)
    fused.kernel.assign(conv.kernel)
    y = fused(x, training=True)
    assert len(fused.weights) == len(conv.weights) + len(batch_norm.weights)
    assert_close(y, y_ref)


def test_negative_slope_and_epsilon_are_used(impl, rng):
    case = Case((2, 6, 6, 2), 3)
    x = tf.constant(random_normal(rng, case.input_shape))
    conv = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)
    z = keras.layers.BatchNormalization(epsilon=0.1)(conv(x), training=True)
    y_ref = keras.layers.LeakyReLU(negative_slope=0.05)(z)
    fused = build_fused(case, epsilon=0.1, negative_slope=0.05, impl=impl)
    fused.kernel.assign(conv.kernel)
    assert_close(fused(x, training=True), y_ref)


def test_trainable_false_freezes_moving_statistics(impl, rng):
    case = Case((3, 8, 8, 2), 4, strides=2)
    stack, fused = matched_pair(case, rng, impl=impl)
    stack[1].trainable = False
    fused.trainable = False
    before = moving_statistics(fused)
    x = tf.constant(random_normal(rng, case.input_shape))
    y = fused(x, training=True)
    assert_close(y, run_stack(stack, x, training=True))
    for stat, stat_before in zip(moving_statistics(fused), before):
        np.testing.assert_array_equal(stat, stat_before)
    assert fused.trainable_weights == []


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_repeated_training_calls_update_moving_statistics_like_keras(training, impl, rng):
    case = Case((4, 7, 7, 3), 4)
    stack, fused = matched_pair(case, rng, impl=impl)
    before = moving_statistics(fused)
    for batch in (random_normal(rng, case.input_shape), random_normal(rng, case.input_shape)):
        run_stack(stack, batch, training)
        fused(batch, training=training)
    after = moving_statistics(fused)
    for stat, stat_ref in zip(after, moving_statistics(stack[1])):
        assert_close(stat, stat_ref)
    changed = any(not np.array_equal(a, b) for a, b in zip(after, before))
    assert changed == training


def test_auto_reports_native_when_available(rng):
    fused = build_fused(Case((1, 5, 5, 2), 2))
    fused(random_normal(rng, (1, 5, 5, 2)))
    assert fused.last_impl == pyae.ops.resolve_impl("auto")
    if not pyae.ops.native_available():
        assert fused.last_impl == "tf"


def test_auto_picks_native_only_on_paths_where_it_beats_the_composite(isa, rng):
    fused = build_fused(Case((1, 5, 5, 2), 2))
    fused(random_normal(rng, (1, 5, 5, 2)))
    choice, reason = pyae.ops.explain_impl("auto")
    expected = "tf" if isa in pyae.ops.SLOWER_THAN_TF_PATHS else "native"
    assert fused.last_impl == choice == expected
    assert isa in reason


# ---------------------------------------------------------------------------- tf.function / XLA


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convT"])
def test_jit_compile_auto_uses_tf_and_matches_eager(transpose, rng):
    case = Case((2, 9, 9, 3), 4, strides=2, transpose=transpose)
    stack, fused = matched_pair(case, rng)
    x = tf.constant(random_normal(rng, case.input_shape))

    @tf.function(jit_compile=True)
    def compiled_step(inputs):
        return fused(inputs, training=True)

    y = compiled_step(x)
    assert fused.last_impl == "tf"
    assert_close(y, run_stack(stack, x, training=True))
    for stat, stat_ref in zip(moving_statistics(fused), moving_statistics(stack[1])):
        assert_close(stat, stat_ref)


def test_jit_compile_with_native_is_a_clear_error(rng):
    fused = build_fused(Case((1, 5, 5, 2), 2), impl="native")
    assert fused.supports_jit is False

    @tf.function(jit_compile=True)
    def compiled_step(inputs):
        return fused(inputs)

    with pytest.raises(ValueError, match="native"):
        compiled_step(tf.constant(random_normal(rng, (1, 5, 5, 2))))


def test_custom_training_loop_in_tf_function_matches_keras(impl, rng):
    case = Case((4, 8, 8, 3), 4, strides=2)
    stack, fused = matched_pair(case, rng, impl=impl)
    images = tf.constant(random_normal(rng, case.input_shape))
    target = tf.constant(random_normal(rng, fused.compute_output_shape(case.input_shape)))

    def make_train_step(forward, variables):
        optimizer = keras.optimizers.SGD(0.1)

        @tf.function
        def train_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(forward(x) - target))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return train_step

    loss_ref = make_train_step(lambda t: run_stack(stack, t, True), stack_variables(stack))(images)
    loss = make_train_step(lambda t: fused(t, training=True), fused_variables(fused))(images)
    assert fused.last_impl == impl
    assert_close(loss, loss_ref)
    for variable, variable_ref in zip(fused_variables(fused), stack_variables(stack)):
        assert_close(variable, variable_ref)


# ---------------------------------------------------------------------------- models


class TinySubclassed(keras.Model):
    def __init__(self, impl, **kwargs):
        super().__init__(**kwargs)
        self.down = FusedConvBNLeakyReLU(4, 3, strides=2, padding="same", impl=impl)
        self.up = FusedConvTransposeBNLeakyReLU(2, 3, strides=2, padding="same", impl=impl)

    def call(self, inputs, training=None):
        return self.up(self.down(inputs, training=training), training=training)


def tiny_model(kind, impl):
    if kind == "subclassed":
        return TinySubclassed(impl)
    blocks = [FusedConvBNLeakyReLU(4, 3, strides=2, padding="same", impl=impl),
              FusedConvTransposeBNLeakyReLU(2, 3, strides=2, padding="same", impl=impl)]
    if kind == "sequential":
        return keras.Sequential([keras.Input((8, 8, 2))] + blocks)
    inputs = keras.Input((8, 8, 2))
    return keras.Model(inputs, blocks[1](blocks[0](inputs)))


def fused_layers(model):
    fused_classes = (FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU)
    return [layer for layer in model.layers if isinstance(layer, fused_classes)]


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_fit_one_epoch_changes_weights(kind, impl, rng):
    model = tiny_model(kind, impl)
    images = random_normal(rng, (16, 8, 8, 2))
    model(images[:1])  # build
    before = [w.numpy() for w in model.weights]
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse", jit_compile=False)
    history = model.fit(images, images, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))
    assert {layer.last_impl for layer in fused_layers(model)} == {impl}
    assert model.predict(images, verbose=0).shape == (16, 8, 8, 2)


def test_fit_with_jit_compile_uses_tf(rng):
    model = tiny_model("functional", "auto")
    images = random_normal(rng, (16, 8, 8, 2))
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.fit(images, images, batch_size=8, epochs=1, verbose=0)
    assert {layer.last_impl for layer in fused_layers(model)} == {"tf"}


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_keras_file_round_trip(kind, impl, rng, tmp_path):
    model = tiny_model(kind, impl)
    images = random_normal(rng, (4, 8, 8, 2))
    model(images, training=True)  # moves the moving statistics away from their init
    path = tmp_path / "fused.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert_close(loaded(images, training=False), model(images, training=False), tol=1e-6)


# ---------------------------------------------------------------------------- config


CONFIG_KWARGS = dict(
    strides=(2, 1), padding="valid", kernel_initializer="he_normal",
    kernel_regularizer=keras.regularizers.L2(1e-4), kernel_constraint="non_neg",
    momentum=0.9, epsilon=1e-2, center=False, scale=True, gamma_initializer="zeros",
    moving_variance_initializer="ones", gamma_regularizer="l1", negative_slope=0.1,
    impl="tf", name="block", trainable=False,
)


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convT"])
def test_get_config_round_trip(transpose):
    layer = fused_class(transpose)(7, (5, 3), **CONFIG_KWARGS)
    config = layer.get_config()
    clone = fused_class(transpose).from_config(config)
    assert clone.get_config() == config
    assert config["kernel_size"] == (5, 3) and config["impl"] == "tf"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convT"])
def test_regularizers_add_losses(transpose, rng):
    layer = fused_class(transpose)(3, 3, kernel_regularizer="l2", gamma_regularizer="l1")
    layer(random_normal(rng, (1, 5, 5, 2)))
    assert len(layer.losses) == 2


@pytest.mark.parametrize("case", ALL_CASES[:4] + AWKWARD_CASES[4:8], ids=str)
def test_compute_output_shape_with_unknown_batch(case):
    fused = fused_class(case.transpose)(case.filters, case.kernel_size,
                                        strides=case.strides, padding=case.padding)
    symbolic = fused(keras.Input(case.input_shape[1:]))
    expected = (None,) + fused.compute_output_shape(case.input_shape)[1:]
    assert tuple(symbolic.shape) == expected


# ---------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convT"])
@pytest.mark.parametrize("dtype_policy", ["mixed_float16"], indirect=True)
def test_mixed_float16_matches_keras_stack(dtype_policy, transpose, rng):
    case = Case((4, 8, 8, 3), 4, strides=2, transpose=transpose)
    stack, fused = matched_pair(case, rng)
    x = random_normal(rng, case.input_shape)
    y_ref = run_stack(stack, x, training=True)
    y = fused(x, training=True)
    tol = 2e-2
    assert fused.last_impl == "tf"
    assert y.dtype == y_ref.dtype == dtype_policy.split("_")[1]
    assert fused.moving_mean.dtype == "float32" and fused.kernel.dtype == "float32"
    assert_close(y, y_ref, tol=tol)
    for stat, stat_ref in zip(moving_statistics(fused), moving_statistics(stack[1])):
        assert_close(stat, stat_ref, tol=tol)


BF16_UNIT_ROUNDOFF = 2.0 ** -8


def float64_reference(case, fused, x, upstream, training):
    """y and the gradients (x, kernel, gamma, beta) in float64 from what a bf16 layer computes
    with: x, the kernel and the upstream gradient rounded to bf16."""
    def rounded(value):
        return np.asarray(tf.cast(tf.cast(value, tf.bfloat16), tf.float64))

    args = [rounded(x), rounded(fused.kernel)] + [
        np.asarray(v) for v in (fused.gamma, fused.beta, fused.moving_mean,
                                fused.moving_variance)]
    attrs = {"strides": (case.strides,) * 2, "padding": case.padding, "training": training,
             "transpose": case.transpose}
    y = reference.forward(*args, **attrs)[0]
    return y, reference.backward(rounded(upstream), *args, **attrs)


def max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))


# Under mixed_bfloat16 the fused layer rounds less than Keras' stack: Keras stores the conv's
# output in bf16 before its float32 batch norm and reduces gradients in bf16, the fused op keeps
# z and every reduction in float32 and rounds only y, dz and dx. So against the float64
# reference of the same bf16-rounded inputs, each output of the fused layer is at most as far
# off as the stack's (measured: 10-30x closer), give or take one bf16 rounding of its scale.
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", TUTORIAL_CASES + AWKWARD_CASES[:6], ids=str)
@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16"], indirect=True)
def test_mixed_bfloat16_at_least_as_accurate_as_keras_stack(
        dtype_policy, bf16_path, case, training, rng):
    stack, fused = matched_pair(case, rng)
    x = tf.constant(random_normal(rng, case.input_shape))
    upstream = tf.constant(random_normal(rng, fused.compute_output_shape(case.input_shape)))
    y_exact, grads_exact = float64_reference(case, fused, x, upstream, training)

    y_ref, grads_ref = output_and_gradients(
        lambda t: tf.cast(run_stack(stack, t, training), tf.float32), stack_variables(stack),
        x, upstream)
    y, grads = output_and_gradients(
        lambda t: tf.cast(fused(t, training=training), tf.float32), fused_variables(fused), x,
        upstream)

    # A transposed block with few input channels runs the float32 op on cast inputs.
    few_channels = case.transpose and case.input_shape[-1] < pyae.layers.BF16_MIN_IN_CHANNELS
    assert fused.last_impl == ("tf" if bf16_path == "fallback"
                               else "native" if few_channels else "native-bf16")
    assert fused(x, training=False).dtype == "bfloat16"
    assert all(weight.dtype == "float32" for weight in fused.weights)
    assert [g.dtype for g in grads[1:]] == [g.dtype for g in grads_ref[1:]] == ["float32"] * 3
    names = ("y", "dx", "dkernel", "dgamma", "dbeta")
    for name, ours, keras_value, exact in zip(names, [y] + grads, [y_ref] + grads_ref,
                                              [y_exact] + list(grads_exact)):
        slack = BF16_UNIT_ROUNDOFF * np.max(np.abs(exact))
        assert max_error(ours, exact) <= max_error(keras_value, exact) + slack, name
    for stat, stat_ref in zip(moving_statistics(fused), moving_statistics(stack[1])):
        assert_close(stat, stat_ref, tol=4 * BF16_UNIT_ROUNDOFF)


@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16"], indirect=True)
def test_mixed_bfloat16_native_runs_the_bf16_kernels_or_float32(dtype_policy, bf16_path, rng):
    fused = build_fused(Case((2, 6, 6, 3), 4), impl="native")
    x = random_normal(rng, (2, 6, 6, 3))
    if not pyae.ops.native_available():
        with pytest.raises(ValueError, match="impl='native' is not available"):
            fused(x, training=True)
        return
    y = fused(x, training=True)
    assert y.dtype == "bfloat16"
    assert fused.last_impl == ("native-bf16" if bf16_path == "kernels" else "native")


@pytest.mark.parametrize("dtype_policy", ["mixed_float16"], indirect=True)
def test_mixed_precision_native_runs_in_float32_or_explains(dtype_policy, rng):
    fused = build_fused(Case((2, 6, 6, 3), 4), impl="native")
    x = random_normal(rng, (2, 6, 6, 3))
    if not pyae.ops.native_available():
        with pytest.raises(ValueError, match="impl='native' is not available"):
            fused(x, training=True)
        return
    y = fused(x, training=True)
    assert fused.last_impl == "native" and y.dtype == "float16"


# ---------------------------------------------------------------------------- bad arguments


BAD_ARGUMENTS = [
    (False, {"data_format": "channels_first"}, "channels_first"),
    (False, {"dilation_rate": 2}, "dilation_rate=2"),
    (True, {"output_padding": 1}, "output_padding=1"),
    (False, {"impl": "cuda"}, "cuda"),
    (False, {"filters": 0}, "filters=0"),
    (True, {"filters": 2.5}, "filters=2.5"),
    (False, {"padding": "causal"}, "causal"),
    (False, {"strides": 0}, "strides"),
    (False, {"kernel_size": (3, 3, 3)}, r"\(3, 3, 3\)"),
    (False, {"epsilon": 0.0}, "epsilon=0.0"),
    (False, {"momentum": 1.5}, "momentum=1.5"),
    (True, {"negative_slope": -1.0}, "negative_slope=-1.0"),
]


@pytest.mark.parametrize("transpose, kwargs, message", BAD_ARGUMENTS,
                         ids=[str(kw) for _, kw, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error_naming_the_value(transpose, kwargs, message):
    arguments = {"filters": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        fused_class(transpose)(**arguments)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 3, 3, 2, 1)])
def test_wrong_input_rank_is_a_value_error(shape, rng):
    with pytest.raises(ValueError, match="ndim|rank"):
        FusedConvBNLeakyReLU(2, 3)(random_normal(rng, shape))


def test_input_too_small_for_valid_padding_is_a_value_error(rng):
    with pytest.raises(ValueError, match="too small"):
        FusedConvBNLeakyReLU(2, 5, padding="valid")(keras.Input((3, 3, 1)))


# ---------------------------------------------------------------------------- FusedConv2DTranspose


@dataclasses.dataclass(frozen=True)
class OutputCase:
    """An output layer: input shape (NHWC), filters, kernel size, strides, activation, bias."""

    input_shape: tuple
    filters: int
    kernel_size: int = 3
    strides: int = 1
    activation: str = "sigmoid"
    use_bias: bool = True

    def __str__(self):
        shape = "x".join(map(str, self.input_shape))
        bias = "" if self.use_bias else "-nobias"
        return (f"out-{shape}-f{self.filters}-k{self.kernel_size}-s{self.strides}-"
                f"{self.activation}{bias}")


OUTPUT_CASES = [
    OutputCase((2, 14, 14, 8), 1),  # Fashion-MNIST's output layer, fewer input channels
    OutputCase((2, 8, 8, 8), 3, strides=2),  # Cartoon's
    OutputCase((1, 5, 7, 3), 2, kernel_size=5, strides=2, activation="linear"),
    OutputCase((3, 6, 5, 4), 4, kernel_size=1, use_bias=False),
]


def output_layer_pair(case, rng, dtype=None, **kwargs):
    """(keras Conv2DTranspose, FusedConv2DTranspose), built, the same random weights."""
    needs_native_output_op(kwargs.get("impl"))
    arguments = dict(strides=case.strides, padding="same", activation=case.activation,
                     use_bias=case.use_bias, dtype=dtype)
    stock = keras.layers.Conv2DTranspose(case.filters, case.kernel_size, **arguments)
    fused = pyae.layers.FusedConv2DTranspose(case.filters, case.kernel_size, **arguments,
                                             **kwargs)
    stock.build(case.input_shape)
    fused.build(case.input_shape)
    if case.use_bias:
        stock.bias.assign(random_normal(rng, stock.bias.shape, 0.5))
    fused.set_weights(stock.get_weights())
    return stock, fused


def output_layer_variables(layer):
    return [layer.kernel] + ([layer.bias] if layer.use_bias else [])


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", OUTPUT_CASES, ids=str)
def test_conv2d_transpose_matches_keras_forward_and_gradients(case, training,
                                                                 impl_on_every_path, rng):
    stock, fused = output_layer_pair(case, rng, impl=impl_on_every_path)
    x = tf.constant(random_normal(rng, case.input_shape))
    upstream = tf.constant(random_normal(rng, stock.compute_output_shape(case.input_shape)))
    y_ref, grads_ref = output_and_gradients(lambda t: stock(t, training=training),
                                            output_layer_variables(stock), x, upstream)
    y, grads = output_and_gradients(lambda t: fused(t, training=training),
                                    output_layer_variables(fused), x, upstream)
    assert fused.last_impl == impl_on_every_path
    assert y.shape == y_ref.shape and y.dtype == "float32"
    for ours, theirs in zip([y] + grads, [y_ref] + grads_ref):
        assert_close(ours, theirs)


def test_conv2d_transpose_weights_are_keras_own():
    stock = keras.layers.Conv2DTranspose(3, (3, 5), strides=2, padding="same")
    fused = pyae.layers.FusedConv2DTranspose(3, (3, 5), strides=2)
    stock.build((None, 4, 4, 6))
    fused.build((None, 4, 4, 6))
    assert [(w.path.split("/")[-1], tuple(w.shape)) for w in fused.weights] == \
        [(w.path.split("/")[-1], tuple(w.shape)) for w in stock.weights] == \
        [("kernel", (3, 5, 3, 6)), ("bias", (3,))]
    for name in ("kernel_initializer", "bias_initializer"):
        assert type(getattr(fused, name)) is type(getattr(stock, name))
    stock.set_weights(fused.get_weights())  # and back: the same layout either way


def test_conv2d_transpose_auto_follows_the_output_ops_rule(rng):
    for filters in (1, 3, pyae.ops.MAX_AUTO_OUT_CHANNELS + 1):
        layer = pyae.layers.FusedConv2DTranspose(filters, 3, activation="sigmoid")
        layer(random_normal(rng, (1, 4, 4, 2)))
        choice, reason = pyae.ops.explain_output_impl("auto", "float32", filters)
        assert layer.last_impl == choice and reason


def test_conv2d_transpose_in_a_jit_compiled_train_step_runs_the_composite(rng):
    case = OUTPUT_CASES[1]
    stock, fused = output_layer_pair(case, rng)
    images = tf.constant(random_normal(rng, case.input_shape))
    target = tf.constant(rng.random(stock.compute_output_shape(case.input_shape)),
                         dtype=tf.float32)

    def train_step_for(layer, **compile_options):
        optimizer = keras.optimizers.SGD(0.1)
        variables = output_layer_variables(layer)

        @tf.function(**compile_options)
        def train_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(layer(x, training=True) - target))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return train_step

    loss = train_step_for(fused, jit_compile=True)(images)
    assert fused.last_impl == "tf"
    assert_close(loss, train_step_for(stock)(images))
    for ours, theirs in zip(output_layer_variables(fused), output_layer_variables(stock)):
        assert_close(ours, theirs)


def test_conv2d_transpose_native_under_jit_compile_is_a_clear_error(rng):
    layer = pyae.layers.FusedConv2DTranspose(1, 3, impl="native")
    assert layer.supports_jit is False

    @tf.function(jit_compile=True)
    def compiled(x):
        return layer(x)

    with pytest.raises(ValueError, match="native"):
        compiled(tf.constant(random_normal(rng, (1, 4, 4, 2))))


def test_conv2d_transpose_fit_with_xla_trains(rng):
    model = keras.Sequential([keras.Input((6, 6, 4)), pyae.layers.FusedConv2DTranspose(
        1, 3, strides=2, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    before = [w.numpy().copy() for w in model.weights]
    model.fit(random_normal(rng, (8, 6, 6, 4)), rng.random((8, 12, 12, 1)), batch_size=4,
              epochs=1, verbose=0)
    assert model.layers[-1].last_impl == "tf"
    assert all(not np.allclose(b, w) for b, w in zip(before, model.weights))


def bf16_output_reference(stock, x, upstream):
    """y and the gradients (x, kernel, bias) in float64 from what a bf16 layer computes with:
    x, the kernel and the upstream gradient rounded to bf16, the bias as it is."""
    as_bf16 = lambda t: tf.cast(tf.cast(t, tf.bfloat16), tf.float64)  # noqa: E731
    exact = keras.layers.Conv2DTranspose.from_config({**stock.get_config(), "dtype": "float64"})
    exact.build(x.shape)
    exact.set_weights([w.astype("float64") for w in stock.get_weights()])
    exact.kernel.assign(as_bf16(exact.kernel))
    y, grads = output_and_gradients(exact, output_layer_variables(exact), as_bf16(x),
                                    as_bf16(upstream))
    return y.numpy(), [grad.numpy() for grad in grads]


@pytest.fixture(params=["auto", "native"])
def output_impl(request):
    """The output layer's impl="auto" (what a model runs) and "native" (where it is built)."""
    if request.param == "native" and not pyae.ops.native_available():
        pytest.skip(f"native op library not available: {native_unavailable_reason()}")
    return request.param


# bf16 bounds as tests/test_bf16.py derives them: against a float64 reference of the same
# bf16-rounded inputs, each output is at most as far off as Keras' own layer under the policy
# (which rounds the conv's output, the bias sum and the sigmoid to bf16), give or take one
# bf16 rounding (unit roundoff 2^-8) of the output's scale.
@pytest.mark.parametrize("case", OUTPUT_CASES[:3], ids=str)
@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16"], indirect=True)
def test_conv2d_transpose_mixed_bfloat16_at_least_as_accurate_as_keras(
        dtype_policy, bf16_path, case, output_impl, rng):
    stock, fused = output_layer_pair(case, rng, impl=output_impl)
    x = tf.constant(random_normal(rng, case.input_shape))
    upstream = tf.constant(random_normal(rng, stock.compute_output_shape(case.input_shape)))
    y_exact, grads_exact = bf16_output_reference(stock, x, upstream)
    as_float32 = lambda layer: lambda t: tf.cast(layer(t), tf.float32)  # noqa: E731
    y_ref, grads_ref = output_and_gradients(as_float32(stock), output_layer_variables(stock),
                                            x, upstream)
    y, grads = output_and_gradients(as_float32(fused), output_layer_variables(fused), x,
                                    upstream)
    assert fused(x).dtype == "bfloat16"
    assert fused.last_impl == pyae.ops.explain_output_impl(output_impl, "bfloat16",
                                                           case.filters)[0]
    assert all(weight.dtype == "float32" for weight in fused.weights)
    assert [g.dtype for g in grads[1:]] == [g.dtype for g in grads_ref[1:]] == ["float32"] * 2
    for name, ours, keras_value, exact in zip(("y", "dx", "dkernel", "dbias"), [y] + grads,
                                              [y_ref] + grads_ref, [y_exact] + grads_exact):
        slack = BF16_UNIT_ROUNDOFF * np.max(np.abs(exact))
        assert max_error(ours, exact) <= max_error(keras_value, exact) + slack, name


@pytest.mark.parametrize("dtype_policy", ["mixed_float16"], indirect=True)
def test_conv2d_transpose_mixed_float16_matches_keras(dtype_policy, impl, rng):
    case = OUTPUT_CASES[1]
    stock, fused = output_layer_pair(case, rng, impl=impl)
    x = random_normal(rng, case.input_shape)
    y = fused(x)
    assert y.dtype == "float16" and fused.kernel.dtype == "float32"
    assert fused.last_impl == impl
    assert_close(y, stock(x), tol=2e-2)


CONV2D_TRANSPOSE_CONFIG = dict(
    strides=(2, 1), activation="linear", use_bias=False, kernel_initializer="he_normal",
    bias_initializer="ones", kernel_regularizer="l2", bias_regularizer="l1",
    activity_regularizer="l2", kernel_constraint="non_neg", impl="tf", name="out",
    trainable=False,
)


def test_conv2d_transpose_get_config_round_trip():
    layer = pyae.layers.FusedConv2DTranspose(3, (5, 3), **CONV2D_TRANSPOSE_CONFIG)
    config = layer.get_config()
    assert pyae.layers.FusedConv2DTranspose.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    stock_config = keras.layers.Conv2DTranspose(3, 3, padding="same").get_config()
    assert set(config) == set(stock_config) | {"impl"}


def test_conv2d_transpose_keras_file_round_trip(impl, rng, tmp_path):
    model = keras.Sequential([
        keras.Input((5, 5, 4)),
        pyae.layers.FusedConv2DTranspose(3, 3, strides=2, activation="sigmoid", impl=impl),
    ])
    needs_native_output_op(impl)
    model.layers[-1].bias.assign(random_normal(rng, (3,)))
    path = tmp_path / "output_layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[-1]) is pyae.layers.FusedConv2DTranspose
    assert loaded.layers[-1].impl == impl
    images = random_normal(rng, (2, 5, 5, 4))
    assert_close(loaded(images), model(images), tol=1e-6)


def test_conv2d_transpose_regularizers_add_losses(rng):
    layer = pyae.layers.FusedConv2DTranspose(2, 3, kernel_regularizer="l2",
                                             bias_regularizer="l1", activity_regularizer="l2")
    layer(random_normal(rng, (1, 4, 4, 2)))
    assert len(layer.losses) == 3


CONV2D_TRANSPOSE_BAD_ARGUMENTS = [
    ({"padding": "valid"}, "Received: padding='valid'"),
    ({"activation": "relu"}, "Received: activation='relu'"),
    ({"output_padding": 1}, "Received: output_padding=1"),
    ({"data_format": "channels_first"}, "channels_first"),
    ({"dilation_rate": 2}, "dilation_rate=2"),
    ({"impl": "cuda"}, "impl='cuda'"),
    ({"filters": 0}, "filters=0"),
    ({"kernel_size": (3, 3, 3)}, r"\(3, 3, 3\)"),
]


@pytest.mark.parametrize("kwargs, message", CONV2D_TRANSPOSE_BAD_ARGUMENTS,
                         ids=[str(kw) for kw, _ in CONV2D_TRANSPOSE_BAD_ARGUMENTS])
def test_conv2d_transpose_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pyae.layers.FusedConv2DTranspose(**{"filters": 1, "kernel_size": 3, **kwargs})


def test_conv2d_transpose_input_of_the_wrong_shape_is_a_value_error(rng):
    with pytest.raises(ValueError, match="ndim|rank"):
        pyae.layers.FusedConv2DTranspose(1, 3)(random_normal(rng, (2, 4, 4)))
    layer = pyae.layers.FusedConv2DTranspose(1, 3)
    layer(random_normal(rng, (1, 4, 4, 2)))
    with pytest.raises(ValueError, match="axis -1|expected axis"):
        layer(random_normal(rng, (1, 4, 4, 3)))
