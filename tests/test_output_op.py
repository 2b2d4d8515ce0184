"""The output op (conv transpose + bias + activation): the composite vs Keras' Conv2DTranspose,
the implementation rule and bad arguments."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import pyae.ops

# (batch, height, width, in_channels, out_channels, stride): the models' two output layers at
# lean sizes, and awkward ones (odd channel counts, odd spatial sizes, unequal strides).
CASES = [
    (2, 7, 7, 32, 1, 1),
    (2, 6, 5, 32, 3, 2),
    (3, 5, 3, 5, 3, 2),
    (1, 4, 6, 5, 1, 1),
    (2, 3, 5, 7, 2, (2, 1)),
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
