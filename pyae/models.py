"""The tutorial's two convolutional autoencoders, built from fused blocks, and their model.

Each encoder block ``conv_i`` is one ``FusedConvBNLeakyReLU`` (the tutorial's
``conv_i``/``bn_i``/``lrelu_i`` triple); each decoder block ``conv_transpose_i`` is one
``FusedConvTransposeBNLeakyReLU``; the decoder's sigmoid output layer is a
``FusedConv2DTranspose`` (the same name, ``conv_transpose_{n}``, and weights as the tutorial's
Conv2DTranspose). ``unfused=True`` builds the tutorial's own Keras stack instead, which is the
reference the fused model is measured and tested against.

The decoder mirrors the encoder: its blocks take the encoder's filters in reverse order
without the first (whose mirror is the output layer) and its strides in reverse order, the
last stride belonging to the output layer. That rule gives both of the tutorial's decoders.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses import loss as loss_module

from pyae import data as data_lib
from pyae import objectives as objectives_lib
from pyae.layers import (FusedConv2DTranspose, FusedConvBNLeakyReLU,
                         FusedConvTransposeBNLeakyReLU)
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
                  kernel_size=3, impl="auto", output_impl=None, unfused=False, conv_bias=True,
                  name="Decoder"):
    """Dense(prod(grid)), Reshape(grid), conv-transpose blocks, a sigmoid conv transpose
    (``FusedConv2DTranspose`` with ``output_impl``, default ``impl``; Keras'
    ``Conv2DTranspose`` when ``unfused``)."""
    _check_blocks(filters, strides, "decoder")
    inputs = keras.Input(shape=(latent_dim,), name="input_layer")
    x = keras.layers.Dense(math.prod(grid_shape), name="dense_1")(inputs)
    x = keras.layers.Reshape(tuple(grid_shape), name="reshape_layer")(x)
    for index, (block_filters, stride) in enumerate(zip(filters, strides), start=1):
        x = _conv_block(x, index, block_filters, kernel_size, stride, True, impl, unfused,
                        conv_bias)
    output_name = f"conv_transpose_{len(filters) + 1}"
    if unfused:
        output_layer = keras.layers.Conv2DTranspose(
            output_channels, kernel_size, output_stride, padding="same", activation="sigmoid",
            name=output_name)
    else:
        output_layer = FusedConv2DTranspose(
            output_channels, kernel_size, output_stride, padding="same", activation="sigmoid",
            impl=impl if output_impl is None else output_impl, name=output_name)
    outputs = output_layer(x)
    return keras.Model(inputs, outputs, name=name)


def build_pair(input_shape, latent_dim, filters, strides, *, kernel_size=3, impl="auto",
               output_impl=None, unfused=False, conv_bias=True, code_multiplier=1):
    """The encoder and its mirrored decoder; checks the decoder gives back the input shape."""
    common = {"kernel_size": kernel_size, "impl": impl, "unfused": unfused,
              "conv_bias": conv_bias}
    encoder = build_encoder(input_shape, latent_dim, filters, strides,
                            code_multiplier=code_multiplier, **common)
    grid = encoder_output_grid(input_shape, strides, filters[-1])
    reversed_strides = tuple(reversed(strides))
    decoder = build_decoder(latent_dim, grid, tuple(reversed(filters))[1:],
                            reversed_strides[:-1], input_shape[-1], reversed_strides[-1],
                            output_impl=output_impl, **common)
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
        # Keras' loss tracker reports "loss"; these report the objective's other terms.
        self.term_trackers = [keras.metrics.Mean(name=name)
                              for name in self.objective.term_names if name != "loss"]
        self.seed = None  # the base of every step's noise seed; set by compile
        self.chosen_step = self.step_reason = None
        self._step_reported = False
        # Functional encoder/decoder are built at construction; so is the model made of them
        # (count_params, summary and saving need that without a first call).
        self.built = encoder.built and decoder.built

    def call(self, inputs, training=False):
        code = self.objective.code(self.encoder(inputs, training=training))
        return self.decoder(code, training=training)

    def objective_terms(self, images, training=True, seed=None):
        """The objective's dict of loss terms on ``images`` (``"loss"`` is the total)."""
        return self.objective(self.encoder, self.decoder, images, training=training, seed=seed)

    # -- training with Keras' compile/fit/evaluate

    def compile(self, optimizer=None, *, jit_compile="auto", auto_policy="rule", seed=None,
                **kwargs):
        """Keras' ``compile``; the objective is the loss, so ``loss``/``metrics`` are not taken.

        ``optimizer`` defaults to the tutorial's ``Adam(5e-4)``. ``jit_compile="auto"`` picks
        the faster train step (see :mod:`pyae.train`; ``auto_policy="measure"`` times both
        in ``fit``). ``seed`` is the base of the objective's noise (drawn from NumPy's global
        generator, which ``keras.utils.set_random_seed`` seeds, when None): each step's draws
        are a function of it and the optimizer's iteration, so a resumed run draws what the
        uninterrupted one would have.
        """
        for name in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"an Autoencoder's loss and metrics are its objective's terms "
                    f"({', '.join(self.objective.term_names)}); received: {name}="
                    f"{kwargs[name]!r}")
        from pyae import train as train_lib  # pylint: disable=import-outside-toplevel

        jit, self.chosen_step, self.step_reason = train_lib.choose_step(
            jit_compile, auto_policy, kwargs.get("run_eagerly", False), self.compute_dtype)
        self.seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
        self._step_reported = False
        super().compile(optimizer=optimizer or train_lib.default_optimizer(),
                        jit_compile=jit, **kwargs)

    def _step_seed(self, training):
        """The stateless seed of this step and replica: the base seed, the optimizer's
        iteration (-1 when evaluating, so every evaluation draws alike) and the replica."""
        counter = self.optimizer.iterations if training else -1
        seed = tf.stack([tf.constant(self.seed or 0, tf.int32), tf.cast(counter, tf.int32)])
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(
                seed, replica.replica_id_in_sync_group)
        return seed

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The objective's total on the images ``x`` (labels ``y`` play no part) plus any
        layer losses, scaled for the replicas as Keras' own; records the other terms."""
        images = tf.cast(x, self.compute_dtype)
        terms = self.objective_terms(images, training=training, seed=self._step_seed(training))
        images_in_batch = tf.shape(images)[0]
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name], sample_weight=images_in_batch)
        total = loss_module.scale_loss_for_distribution(terms["loss"])
        for layer_loss in self.losses:
            total = total + self._aggregate_additional_loss(layer_loss)
        return total

    def train_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self._compute_loss(x=images, training=True)
            self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss),
                                            sample_weight=tf.shape(images)[0])
            loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._step_logs()

    def test_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        loss = self._compute_loss(x=images, training=False)
        self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss),
                                        sample_weight=tf.shape(images)[0])
        return self._step_logs()

    def _step_logs(self):
        """The metrics' results, as Keras' steps return them, fit for every strategy.

        Under a multi-worker strategy Keras 3 reduces a step's outputs with ``MEAN`` over
        axis 0, which a scalar lacks (keras-team/keras#20585): each result goes out as a
        vector of one, which that reduction turns back into the scalar. Remove this the day
        Keras reduces scalars there.
        """
        logs = self.get_metrics_result()
        if _is_multi_worker(self.distribute_strategy):
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            **kwargs):
        """Keras' ``fit``, with the tutorial's batch of 128 for arrays, a console-aware
        ``verbose="auto"`` (one line per epoch when not on a terminal), the train step's
        choice said once, and an op's refusal of NaN input reported as
        ``NonFiniteLossError`` when a ``StopOnNonFinite`` callback is given."""
        from pyae import callbacks as callbacks_lib  # pylint: disable=import-outside-toplevel
        from pyae import train as train_lib  # pylint: disable=import-outside-toplevel

        self._assert_compile_called("fit")
        batch_size = _default_batch_size(x, batch_size)
        verbose = train_lib.console_verbose(verbose)
        if self.chosen_step is None:
            self.chosen_step, self.step_reason, _ = train_lib.measure_step(
                self, _first_batch(x, batch_size))
        self._report_step(verbose)
        if self._feeds_array_itself(x, kwargs):
            # Keras' own pipeline for arrays autotunes, and in TF 2.21 an epoch's end can
            # then wait for the autotuner (see pyae.data.without_autotune).
            validation_batch_size = kwargs.pop("validation_batch_size", None) or batch_size
            x = data_lib.array_dataset(x, batch_size, shuffle=kwargs.pop("shuffle", True))
            kwargs["shuffle"] = False  # the dataset shuffles itself; Keras' would warn
            kwargs["validation_data"] = _images_as_dataset(kwargs.get("validation_data"),
                                                           validation_batch_size)
            y = batch_size = None
        try:
            return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                               callbacks=callbacks, **kwargs)
        except tf.errors.InvalidArgumentError as error:
            stop = callbacks_lib.non_finite_stop_in(callbacks)
            if stop is None or not callbacks_lib.is_non_finite_error(error):
                raise
            raise stop.error_for(error) from error

    def _feeds_array_itself(self, x, fit_options):
        """Whether ``fit`` takes ``x`` through :func:`pyae.data.array_dataset`: an array of
        images on one replica, with none of the options only Keras' array pipeline has."""
        if not _is_image_array(x) or x.shape[0] == 0:
            return False
        if fit_options.get("validation_split") or any(
                fit_options.get(name) is not None
                for name in ("sample_weight", "class_weight", "steps_per_epoch")):
            return False
        if not isinstance(fit_options.get("shuffle", True), bool):  # "batch": Keras' own
            return False
        strategy = self.distribute_strategy
        return strategy.num_replicas_in_sync == 1 and not _is_multi_worker(strategy)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        return super().evaluate(x, y, batch_size=_default_batch_size(x, batch_size), **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        return super().predict(x, batch_size=_default_batch_size(x, batch_size), **kwargs)

    def _report_step(self, verbose):
        if self._step_reported:
            return
        self._step_reported = True
        message = f"pyae: train step {self.chosen_step!r} ({self.step_reason})"
        if verbose:
            from pyae.callbacks import say  # pylint: disable=import-outside-toplevel

            say(message)

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


def _is_multi_worker(strategy):
    extended = strategy.extended
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        extended._in_multi_worker_mode()  # pylint: disable=protected-access


def _default_batch_size(data, batch_size):
    """The tutorial's batch size for arrays when none is given (datasets come batched)."""
    if batch_size is not None or data is None or isinstance(data, tf.data.Dataset):
        return batch_size
    if isinstance(data, (np.ndarray, tf.Tensor)) or (
            isinstance(data, (tuple, list)) and np.ndim(data[0]) == 4):
        from pyae.train import DEFAULT_BATCH_SIZE  # pylint: disable=import-outside-toplevel

        return DEFAULT_BATCH_SIZE
    return batch_size


def _is_image_array(data):
    return isinstance(data, (np.ndarray, tf.Tensor)) and len(data.shape) == 4


def _images_as_dataset(data, batch_size):
    """Validation images (an array, or ``(images, labels)``: the labels play no part) as
    :func:`pyae.data.array_dataset` batches in order; anything else as it is."""
    if isinstance(data, (tuple, list)) and data and _is_image_array(data[0]):
        data = data[0]
    if _is_image_array(data) and data.shape[0] > 0:
        return data_lib.array_dataset(data, batch_size, shuffle=False)
    return data


def _first_batch(data, batch_size):
    """The first batch of images ``fit`` will see, to time the train steps on."""
    if isinstance(data, tf.data.Dataset):
        element = next(iter(data.take(1)))
        images = element[0] if isinstance(element, (tuple, list)) else element
        return images if images.shape.rank == 4 else images[None]
    if isinstance(data, (tuple, list)):
        data = data[0]
    return np.asarray(data, dtype="float32")[:batch_size or 32]


def _autoencoder(preset, *, input_shape=None, latent_dim=None, filters=None, strides=None,
                 kernel_size=3, impl="auto", output_impl=None, unfused=False, conv_bias=None,
                 objective="vanilla", name=None, **objective_options):
    defaults = PRESETS[preset]
    objective = objectives_lib.get(objective, **objective_options)
    encoder, decoder = build_pair(
        tuple(input_shape or defaults["input_shape"]),
        int(latent_dim or defaults["latent_dim"]),
        tuple(filters or defaults["filters"]),
        tuple(strides or defaults["strides"]),
        kernel_size=kernel_size, impl=impl, output_impl=output_impl, unfused=unfused,
        # The tutorial's Conv2D layers keep their (redundant) bias; the fused op has none.
        conv_bias=unfused if conv_bias is None else conv_bias,
        code_multiplier=objective.code_multiplier,
    )
    return Autoencoder(encoder, decoder, objective=objective, name=name or preset)


def fashion_mnist_autoencoder(**options):
    """The tutorial's Fashion-MNIST autoencoder: 28x28x1 -> 2 -> 28x28x1.

    Options: ``input_shape``, ``latent_dim``, ``filters``, ``strides`` (encoder blocks; the
    decoder mirrors them), ``kernel_size``, ``impl`` ("auto"/"native"/"tf"), ``output_impl``
    (the output layer's, default ``impl``), ``unfused``
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
