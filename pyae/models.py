"""The tutorial's two convolutional autoencoders, built from fused blocks, and their model.

Each encoder block ``conv_i`` is one ``FusedConvBNLeakyReLU`` (the tutorial's
``conv_i``/``bn_i``/``lrelu_i`` triple); each decoder block ``conv_transpose_i`` is one
``FusedConvTransposeBNLeakyReLU``. ``unfused=True`` builds the tutorial's own Keras stack
instead, which is the reference the fused model is measured and tested against.

The decoder mirrors the encoder: its blocks take the encoder's filters in reverse order
without the first (whose mirror is the output layer) and its strides in reverse order, the
last stride belonging to the output layer. That rule gives both of the tutorial's decoders.
"""
import math

import keras
import numpy as np

from pyae import objectives as objectives_lib
from pyae.layers import FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU
from pyae.ops import geometry

PRESETS = {
    "fashion_mnist": {
        "input_shape": (28, 28, 1), "latent_dim": 2,
        "filters": (32, 64, 64, 64), "strides": (1, 2, 2, 1),
    },
    "cartoon": {
        "input_shape": (256, 256, 3), "latent_dim": 200,
        "filters": (32, 64, 64, 64, 64), "strides": (2, 2, 2, 2, 2),
    },
}


def _conv_block(x, index, filters, kernel_size, stride, transpose, impl, unfused, conv_bias):
    """One Conv(+Transpose) + BatchNorm + LeakyReLU block, fused or as the tutorial's triple."""
    conv_name = f"conv_transpose_{index}" if transpose else f"conv_{index}"
    if not unfused:
        fused_class = FusedConvTransposeBNLeakyReLU if transpose else FusedConvBNLeakyReLU
        return fused_class(filters, kernel_size, strides=stride, padding="same", impl=impl,
                           name=conv_name)(x)
    conv_class = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    x = conv_class(filters, kernel_size, strides=stride, padding="same", use_bias=conv_bias,
                   name=conv_name)(x)
    x = keras.layers.BatchNormalization(name=f"bn_{index}")(x)
    return keras.layers.LeakyReLU(name=f"lrelu_{index}")(x)


def _check_blocks(filters, strides, what):
    if len(filters) != len(strides) or not filters:
        raise ValueError(
            f"{what}: filters {tuple(filters)} and strides {tuple(strides)} must be non-empty "
            "and of equal length")


def build_encoder(input_shape, latent_dim, filters, strides, *, kernel_size=3, impl="auto",
                  unfused=False, conv_bias=True, code_multiplier=1, name="Encoder"):
    """Conv blocks, Flatten, Dense(``latent_dim * code_multiplier``) named ``dense_1``.

    ``code_multiplier=2`` is the variational encoder: its Dense emits mean and log-variance.
    ``conv_bias`` only applies to ``unfused=True`` (a bias before batch norm is redundant).
    """
    _check_blocks(filters, strides, "encoder")
    inputs = keras.Input(shape=tuple(input_shape), name="input_layer")
    x = inputs
    for index, (block_filters, stride) in enumerate(zip(filters, strides), start=1):
        x = _conv_block(x, index, block_filters, kernel_size, stride, False, impl, unfused,
                        conv_bias)
    x = keras.layers.Flatten(name="flatten")(x)
    code = keras.layers.Dense(latent_dim * code_multiplier, name="dense_1")(x)
    return keras.Model(inputs, code, name=name)


def encoder_output_grid(input_shape, strides, last_filters):
    """The (H, W, C) the encoder's last block emits: what the decoder's Reshape restores."""
    height, width = input_shape[0], input_shape[1]
    for stride in strides:
        height = geometry.conv_output_length(height, 3, stride, "same")
        width = geometry.conv_output_length(width, 3, stride, "same")
    return (height, width, last_filters)


def build_decoder(latent_dim, grid_shape, filters, strides, output_channels, output_stride, *,
                  kernel_size=3, impl="auto", unfused=False, conv_bias=True, name="Decoder"):
    """Dense(prod(grid)), Reshape(grid), conv-transpose blocks, sigmoid Conv2DTranspose."""
    _check_blocks(filters, strides, "decoder")
    inputs = keras.Input(shape=(latent_dim,), name="input_layer")
    x = keras.layers.Dense(math.prod(grid_shape), name="dense_1")(inputs)
    x = keras.layers.Reshape(tuple(grid_shape), name="reshape_layer")(x)
    for index, (block_filters, stride) in enumerate(zip(filters, strides), start=1):
        x = _conv_block(x, index, block_filters, kernel_size, stride, True, impl, unfused,
                        conv_bias)
    outputs = keras.layers.Conv2DTranspose(
        output_channels, kernel_size, output_stride, padding="same", activation="sigmoid",
        name=f"conv_transpose_{len(filters) + 1}")(x)
    return keras.Model(inputs, outputs, name=name)


def build_pair(input_shape, latent_dim, filters, strides, *, kernel_size=3, impl="auto",
               unfused=False, conv_bias=True, code_multiplier=1):
    """The encoder and its mirrored decoder; checks the decoder gives back the input shape."""
    common = {"kernel_size": kernel_size, "impl": impl, "unfused": unfused,
              "conv_bias": conv_bias}
    encoder = build_encoder(input_shape, latent_dim, filters, strides,
                            code_multiplier=code_multiplier, **common)
    grid = encoder_output_grid(input_shape, strides, filters[-1])
    reversed_strides = tuple(reversed(strides))
    decoder = build_decoder(latent_dim, grid, tuple(reversed(filters))[1:],
                            reversed_strides[:-1], input_shape[-1], reversed_strides[-1],
                            **common)
    if tuple(decoder.output.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"strides {tuple(strides)} do not divide input_shape {tuple(input_shape)}: the "
            f"decoder would output {tuple(decoder.output.shape[1:])}")
    return encoder, decoder


@keras.saving.register_keras_serializable(package="pyae")
class Autoencoder(keras.Model):
    """An encoder, a decoder and the objective they are trained with.

    ``call(x)`` returns the reconstruction of ``x`` from its code (for a VAE, the mean);
    ``objective_terms(x)`` returns the training loss terms. ``encode``, ``decode`` and
    ``reconstruct`` take numpy arrays of any length and run in batches.
    """

    def __init__(self, encoder, decoder, objective="vanilla", **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.objective = objectives_lib.get(objective)
        # Functional encoder/decoder are built at construction; so is the model made of them
        # (count_params, summary and saving need that without a first call).
        self.built = encoder.built and decoder.built

    def call(self, inputs, training=False):
        code = self.objective.code(self.encoder(inputs, training=training))
        return self.decoder(code, training=training)

    def objective_terms(self, images, training=True, seed=None):
        """The objective's dict of loss terms on ``images`` (``"loss"`` is the total)."""
        return self.objective(self.encoder, self.decoder, images, training=training, seed=seed)

    def _batched(self, function, array, batch_size):
        array = np.asarray(array, dtype="float32")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        outputs = [np.asarray(function(array[start:start + batch_size]))
                   for start in range(0, len(array), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), "float32")

    def encode(self, images, batch_size=256):
        """Latent codes of ``images`` (inference mode), as a numpy array."""
        return self._batched(
            lambda batch: self.objective.code(self.encoder(batch, training=False)),
            images, batch_size)

    def decode(self, codes, batch_size=256):
        """Images decoded from latent ``codes`` (inference mode), as a numpy array."""
        return self._batched(lambda batch: self.decoder(batch, training=False), codes,
                             batch_size)

    def reconstruct(self, images, batch_size=256):
        """``decode(encode(images))`` batch by batch, as a numpy array."""
        return self._batched(lambda batch: self(batch, training=False), images, batch_size)

    @property
    def latent_dim(self):
        return self.decoder.input.shape[-1]

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "objective": objectives_lib.serialize(self.objective),
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"),
                                                         custom_objects=custom_objects)
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"),
                                                         custom_objects=custom_objects)
        objective = objectives_lib.deserialize(config.pop("objective"))
        return cls(encoder, decoder, objective=objective, **config)


def _autoencoder(preset, *, input_shape=None, latent_dim=None, filters=None, strides=None,
                 kernel_size=3, impl="auto", unfused=False, conv_bias=None,
                 objective="vanilla", name=None, **objective_options):
    defaults = PRESETS[preset]
    objective = objectives_lib.get(objective, **objective_options)
    encoder, decoder = build_pair(
        tuple(input_shape or defaults["input_shape"]),
        int(latent_dim or defaults["latent_dim"]),
        tuple(filters or defaults["filters"]),
        tuple(strides or defaults["strides"]),
        kernel_size=kernel_size, impl=impl, unfused=unfused,
        # The tutorial's Conv2D layers keep their (redundant) bias; the fused op has none.
        conv_bias=unfused if conv_bias is None else conv_bias,
        code_multiplier=objective.code_multiplier,
    )
    return Autoencoder(encoder, decoder, objective=objective, name=name or preset)


def fashion_mnist_autoencoder(**options):
    """The tutorial's Fashion-MNIST autoencoder: 28x28x1 -> 2 -> 28x28x1.

    Options: ``input_shape``, ``latent_dim``, ``filters``, ``strides`` (encoder blocks; the
    decoder mirrors them), ``kernel_size``, ``impl`` ("auto"/"native"/"tf"), ``unfused``
    (the tutorial's Keras Conv2D/BatchNormalization/LeakyReLU stack), ``conv_bias``
    (unfused only; default True as in the tutorial), ``objective`` (a name from
    ``pyae.objectives.OBJECTIVES``) and that objective's options (``noise_std``,
    ``sparsity_weight``, ``contractive_weight``, ``num_probes``, ``beta``...).
    """
    return _autoencoder("fashion_mnist", **options)


def cartoon_autoencoder(**options):
    """The tutorial's Cartoon Set autoencoder: 256x256x3 -> 200 -> 256x256x3 (same options)."""
    return _autoencoder("cartoon", **options)


def build(preset, **options):
    """``build("fashion_mnist" | "cartoon", **options)``: the preset's Autoencoder."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    return _autoencoder(preset, **options)


def _block_weights(model):
    """{block name: {weight name: variable}} for every conv/bn/dense layer in a sub-model."""
    blocks = {}
    for layer in model.layers:
        for variable in layer.weights:
            short_name = variable.name.split("/")[-1].split(":")[0]
            blocks.setdefault(layer.name, {})[short_name] = variable
    return blocks


def copy_weights(source, target):
    """Copy an Autoencoder's weights into another of the same shape, fused or unfused.

    An unfused block's ``conv_i`` + ``bn_i`` go to the fused ``conv_i`` and back. A conv
    bias before batch norm has no fused counterpart: it is folded into the moving mean
    (``BN(z + b)`` with mean ``m`` equals ``BN(z)`` with mean ``m - b``), or dropped
    (left at zero) when copying into a model that has one.
    """
    for source_part, target_part in ((source.encoder, target.encoder),
                                      (source.decoder, target.decoder)):
        _copy_part(_block_weights(source_part), _block_weights(target_part))


def _suffix(name):
    return name.rsplit("_", 1)[-1]


def _conv_name(blocks, suffix):
    """The conv_i / conv_transpose_i block paired with bn_i (they share the index i)."""
    return next(name for name in blocks if name.startswith("conv") and _suffix(name) == suffix)


def _merged_blocks(blocks):
    """Each conv/dense block's weights, with an unfused block's bn_i merged into its conv_i."""
    merged = {}
    for name, weights in blocks.items():
        if name.startswith("bn_"):
            continue
        merged[name] = dict(weights)
        if name.startswith("conv") and "bn_" + _suffix(name) in blocks:
            merged[name].update(blocks["bn_" + _suffix(name)])
    return merged


def _copy_part(source_blocks, target_blocks):
    source = _merged_blocks(source_blocks)
    for name, target_weights in target_blocks.items():
        conv_name = _conv_name(target_blocks, _suffix(name)) if name.startswith("bn_") else name
        available = source[conv_name]
        target_has_bias = "bias" in target_blocks[conv_name]
        for weight_name, variable in target_weights.items():
            if weight_name not in available:  # only a conv bias can be missing
                variable.assign(np.zeros(variable.shape, "float32"))
                continue
            value = np.asarray(available[weight_name])
            if weight_name == "moving_mean" and "bias" in available and not target_has_bias:
                value = value - np.asarray(available["bias"])
            variable.assign(value)
