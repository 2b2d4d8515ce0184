"""pyae.fusion.fuse_model (also importable from pyae.layers): Conv -> BN -> LeakyReLU chains
become fused layers, a lone output Conv2DTranspose a FusedConv2DTranspose, outputs kept."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

import pyae.ops
from pyae.layers import (
    FuseReport, FusedConv2DTranspose, FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU,
    ReplacedLayer, fuse_model,
)

from _layer_fixtures import (  # noqa: F401  (fixtures are used by name; SEED seeds rng)
    SEED, assert_close, needs_native_output_op, random_normal, randomize_batch_norm, seeded,
)

FUSED_CLASSES = (FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU)


# ---------------------------------------------------------------------------- the tutorial


def tutorial_encoder(latent_dim=2):
    """The tutorial's Fashion-MNIST encoder (conv layers with bias, as written there)."""
    inputs = keras.Input((28, 28, 1), name="input_layer")
    x = inputs
    for block, (filters, strides) in enumerate([(32, 1), (64, 2), (64, 2), (64, 1)], start=1):
        x = layers.Conv2D(filters, 3, strides, padding="same", name=f"conv_{block}")(x)
        x = layers.BatchNormalization(name=f"bn_{block}")(x)
        x = layers.LeakyReLU(name=f"lrelu_{block}")(x)
    bottleneck = layers.Dense(latent_dim, name="dense_1")(layers.Flatten()(x))
    return keras.Model(inputs, bottleneck, name="Encoder")


def tutorial_decoder(latent_dim=2):
    """The tutorial's Fashion-MNIST decoder (Reshape layer in place of tf.reshape)."""
    inputs = keras.Input((latent_dim,), name="input_layer")
    x = layers.Reshape((7, 7, 64))(layers.Dense(3136, name="dense_1")(inputs))
    for block, (filters, strides) in enumerate([(64, 1), (64, 2), (32, 2)], start=1):
        x = layers.Conv2DTranspose(filters, 3, strides, padding="same",
                                   name=f"conv_transpose_{block}")(x)
        x = layers.BatchNormalization(name=f"bn_{block}")(x)
        x = layers.LeakyReLU(name=f"lrelu_{block}")(x)
    outputs = layers.Conv2DTranspose(1, 3, 1, padding="same", activation="sigmoid",
                                     name="conv_transpose_4")(x)
    return keras.Model(inputs, outputs, name="Decoder")


def randomize_trained_state(model, rng):
    """Stand-in for training: random conv biases and batch-norm statistics everywhere."""
    for layer in model._flatten_layers():  # pylint: disable=protected-access
        if isinstance(layer, layers.BatchNormalization):
            randomize_batch_norm(layer, rng)
        elif isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)) and layer.use_bias:
            layer.bias.assign(random_normal(rng, layer.bias.shape, 0.5))


def assert_same_inference(original, fused, inputs, tol=1e-4):
    assert_close(fused(inputs, training=False), original(inputs, training=False), tol=tol)


def fused_layer_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, FUSED_CLASSES)]


def test_tutorial_encoder(impl, rng):
    encoder = tutorial_encoder()
    randomize_trained_state(encoder, rng)
    fused, report = fuse_model(encoder, impl=impl)
    assert_same_inference(encoder, fused, random_normal(rng, (4, 28, 28, 1)))
    assert fused_layer_names(fused) == [f"conv_{i}_fused" for i in range(1, 5)]
    assert [chain.conv for chain in report.fused] == [f"conv_{i}" for i in range(1, 5)]
    assert all(chain.folded_bias for chain in report.fused)
    assert report.not_fused == {}
    assert {layer.last_impl for layer in fused.layers if isinstance(layer, FUSED_CLASSES)} \
        == {impl}


def test_tutorial_decoder(impl, rng):
    needs_native_output_op(impl)
    decoder = tutorial_decoder()
    randomize_trained_state(decoder, rng)
    fused, report = fuse_model(decoder, impl=impl)
    assert_same_inference(decoder, fused, random_normal(rng, (4, 2)))
    assert fused_layer_names(fused) == [f"conv_transpose_{i}_fused" for i in range(1, 4)]
    assert report.not_fused == {}
    assert report.replaced == [ReplacedLayer("conv_transpose_4", "conv_transpose_4_fused",
                                             "FusedConv2DTranspose")]
    assert "replaced  conv_transpose_4 -> conv_transpose_4_fused (FusedConv2DTranspose)" \
        in str(report)
    output_layer = fused.get_layer("conv_transpose_4_fused")
    assert isinstance(output_layer, FusedConv2DTranspose) and output_layer.impl == impl
    assert output_layer.last_impl == impl


def test_nested_autoencoder_is_fused_recursively(rng):
    encoder, decoder = tutorial_encoder(), tutorial_decoder()
    images = keras.Input((28, 28, 1))
    autoencoder = keras.Model(images, decoder(encoder(images)), name="Autoencoder")
    randomize_trained_state(autoencoder, rng)
    fused, report = fuse_model(autoencoder)
    assert_same_inference(autoencoder, fused, random_normal(rng, (2, 28, 28, 1)))
    assert len(report.fused) == 7 and report.not_fused == {}
    assert [(layer.layer, layer.fused) for layer in report.replaced] == \
        [("Decoder/conv_transpose_4", "Decoder/conv_transpose_4_fused")]
    assert report.fused[0].conv == "Encoder/conv_1"
    assert [layer.name for layer in fused.layers[1:]] == ["Encoder", "Decoder"]


def test_fused_model_matches_in_training_mode_too(rng):
    """Batch statistics absorb the conv bias, so training outputs agree as well."""
    encoder = tutorial_encoder()
    randomize_trained_state(encoder, rng)
    fused, _ = fuse_model(encoder)
    images = random_normal(rng, (4, 28, 28, 1))
    assert_close(fused(images, training=True), encoder(images, training=True), tol=2e-4)
    decoder = tutorial_decoder()
    randomize_trained_state(decoder, rng)
    fused, _ = fuse_model(decoder)
    codes = random_normal(rng, (4, 2))
    assert_close(fused(codes, training=True), decoder(codes, training=True), tol=2e-4)


def test_original_model_is_untouched(rng):
    encoder = tutorial_encoder()
    randomize_trained_state(encoder, rng)
    before = [w.numpy() for w in encoder.weights]
    fuse_model(encoder)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, encoder.weights))


def test_fused_model_trains_with_fit(rng):
    fused, _ = fuse_model(tutorial_encoder())
    fused.compile(optimizer=keras.optimizers.Adam(5e-4), loss="mse", jit_compile=False)
    history = fused.fit(random_normal(rng, (8, 28, 28, 1)), random_normal(rng, (8, 2)),
                        batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ---------------------------------------------------------------------------- Sequential


def test_sequential_model(impl, rng):
    model = keras.Sequential([
        keras.Input((9, 7, 3)),
        layers.Conv2D(4, 3, strides=2, padding="same", name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.LeakyReLU(negative_slope=0.1, name="lrelu"),
        layers.Conv2DTranspose(2, 5, padding="valid", use_bias=False, name="convT"),
        layers.BatchNormalization(center=False, name="bn_t"),
        layers.LeakyReLU(name="lrelu_t"),
        layers.Flatten(),
        layers.Dense(3, name="head"),
    ], name="seq")
    randomize_trained_state(model, rng)
    fused, report = fuse_model(model, impl=impl)
    assert isinstance(fused, keras.Sequential)
    assert fused_layer_names(fused) == ["conv_fused", "convT_fused"]
    assert [chain.folded_bias for chain in report.fused] == [True, False]
    assert fused.get_layer("conv_fused").negative_slope == pytest.approx(0.1)
    assert_same_inference(model, fused, random_normal(rng, (3, 9, 7, 3)))


# ---------------------------------------------------------------------------- output layers


def test_sequential_output_layers_replaced_with_weights(impl, rng):
    needs_native_output_op(impl)
    model = keras.Sequential([
        keras.Input((5, 5, 6)),
        layers.Conv2DTranspose(3, 3, strides=2, padding="same", activation="sigmoid",
                               name="to_rgb"),
        layers.Conv2DTranspose(1, 5, padding="same", use_bias=False, name="to_gray"),
    ], name="seq")
    randomize_trained_state(model, rng)
    fused, report = fuse_model(model, impl=impl)
    assert isinstance(fused, keras.Sequential)
    assert [type(layer) for layer in fused.layers] == [FusedConv2DTranspose] * 2
    assert [layer.layer for layer in report.replaced] == ["to_rgb", "to_gray"]
    assert report.fused == [] and report.not_fused == {}
    for original, replaced in zip(model.layers, fused.layers):
        assert [w.shape for w in replaced.weights] == [w.shape for w in original.weights]
        assert all(np.array_equal(a, b) for a, b in zip(replaced.get_weights(),
                                                         original.get_weights()))
    images = random_normal(rng, (2, 5, 5, 6))
    assert_close(fused(images), model(images))


def output_layer_with(**kwargs):
    options = {"filters": 1, "kernel_size": 3, "padding": "same", "activation": "sigmoid",
               **kwargs}
    return layers.Conv2DTranspose(**options, name="out")


NOT_REPLACED = [
    ({"padding": "valid"}, "padding='valid'"),
    ({"activation": "relu"}, "activation='relu'"),
    ({"filters": pyae.ops.MAX_AUTO_OUT_CHANNELS + 1},
     f"filters={pyae.ops.MAX_AUTO_OUT_CHANNELS + 1}, more than the "
     f"{pyae.ops.MAX_AUTO_OUT_CHANNELS} output channels"),
    ({"output_padding": 1, "strides": 2}, "output_padding=(1, 1)"),
    ({"dilation_rate": 2}, "dilation_rate=(2, 2)"),
]


@pytest.mark.parametrize("kwargs, reason", NOT_REPLACED, ids=[str(kw) for kw, _ in NOT_REPLACED])
def test_output_layer_the_op_does_not_compute_is_kept_and_explained(kwargs, reason, rng):
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, output_layer_with(**kwargs)(inputs))
    fused, report = fuse_model(model)
    assert report.replaced == [] and type(fused.layers[-1]) is layers.Conv2DTranspose
    assert "not a FusedConv2DTranspose either: " + reason in report.not_fused["out"]
    x = random_normal(rng, (2, 6, 6, 4))
    assert_close(fused(x), model(x), tol=1e-6)


def test_shared_output_layer_is_replaced_once(rng):
    inputs = [keras.Input((4, 4, 2)), keras.Input((4, 4, 2))]
    shared = output_layer_with(strides=2)
    model = keras.Model(inputs, [shared(inputs[0]), shared(inputs[1])])
    fused, report = fuse_model(model)
    assert [layer.layer for layer in report.replaced] == ["out"]
    assert sum(isinstance(layer, FusedConv2DTranspose) for layer in fused.layers) == 1
    x = [random_normal(rng, (2, 4, 4, 2)), random_normal(rng, (2, 4, 4, 2))]
    for got, expected in zip(fused(x), model(x)):
        assert_close(got, expected)


# ---------------------------------------------------------------------------- what is not fused


def conv_bn(x, **conv_kwargs):
    x = layers.Conv2D(4, 3, padding="same", name="conv", **conv_kwargs)(x)
    return layers.BatchNormalization(name="bn")(x)


def model_conv_with_activation(inputs):
    return layers.LeakyReLU()(conv_bn(inputs, activation="relu"))


def model_bn_then_relu(inputs):
    return layers.ReLU()(conv_bn(inputs))


def model_conv_output_branches(inputs):
    z = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    y = layers.LeakyReLU()(layers.BatchNormalization(name="bn")(z))
    return layers.Add()([y, z])


def model_bn_output_is_model_output(inputs):
    z = conv_bn(inputs)
    return [layers.LeakyReLU()(z), z]


def model_bn_channels_first_axis(inputs):
    z = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return layers.LeakyReLU()(layers.BatchNormalization(axis=1, name="bn")(z))


def model_dilated_conv(inputs):
    return layers.LeakyReLU()(conv_bn(inputs, dilation_rate=2))


def model_bn_then_activation_layer(inputs):
    return layers.Activation("leaky_relu")(conv_bn(inputs))


UNFUSABLE = [
    (model_conv_with_activation, "activation='relu'"),
    (model_bn_then_relu, "bn: followed by ReLU"),
    (model_conv_output_branches, "its output is used by 2 layers"),
    (model_bn_output_is_model_output, "bn: its output is used by 2 consumers"),
    (model_bn_channels_first_axis, "bn: axis=1, not the channel axis -1"),
    (model_dilated_conv, "dilation_rate=(2, 2)"),
    (model_bn_then_activation_layer, "bn: followed by Activation"),
]


@pytest.mark.parametrize("build, reason", UNFUSABLE, ids=[b.__name__[6:] for b, _ in UNFUSABLE])
def test_unfusable_chain_is_copied_and_explained(build, reason, rng):
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, build(inputs))
    randomize_trained_state(model, rng)
    fused, report = fuse_model(model)
    assert report.fused == [] and reason in report.not_fused["conv"]
    assert [type(layer) for layer in fused.layers] == [type(layer) for layer in model.layers]
    x = random_normal(rng, (2, 6, 6, 4))
    for got, expected in zip(keras.tree.flatten(fused(x)), keras.tree.flatten(model(x))):
        assert_close(got, expected, tol=1e-6)


def test_report_is_a_readable_dataclass(rng):
    _, report = fuse_model(tutorial_decoder())
    assert isinstance(report, FuseReport)
    text = str(report)
    assert text.splitlines()[0] == (
        "fuse_model('Decoder'): fused 3 chain(s), replaced 1 layer(s), left 0 convolution(s) "
        "unfused")
    assert ("conv_transpose_1 + bn_1 + lrelu_1 -> conv_transpose_1_fused "
            "(FusedConvTransposeBNLeakyReLU)") in text


def test_subclassed_model_is_a_value_error():
    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="subclassed"):
        fuse_model(Subclassed())


def test_bad_impl_is_a_value_error():
    with pytest.raises(ValueError, match="impl='gpu'"):
        fuse_model(tutorial_encoder(), impl="gpu")


def test_fuse_model_lives_in_pyae_fusion_and_stays_importable_from_layers():
    from pyae import fusion, layers

    assert layers.fuse_model is fusion.fuse_model
    assert layers.FuseReport is fusion.FuseReport and layers.FusedChain is fusion.FusedChain
    assert layers.ReplacedLayer is fusion.ReplacedLayer


def test_a_keras_file_with_fused_layers_loads_after_plain_import_pyae(tmp_path):
    # A fresh process: in this one the classes are registered already.
    inputs = keras.Input((8, 8, 2))
    outputs = FusedConvBNLeakyReLU(4, 3, padding="same")(inputs)
    path = tmp_path / "fused.keras"
    keras.Model(inputs, outputs).save(path)
    code = ("import sys\nimport pyae\nimport keras\n"
            "model = keras.saving.load_model(sys.argv[1])\n"
            "print(type(model.layers[-1]).__name__)\n")
    loaded = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["FusedConvBNLeakyReLU"]
