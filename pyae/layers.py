"""Keras layers on the fused Conv + BatchNorm + LeakyReLU op (``fuse_model()``: pyae.fusion).

``FusedConvBNLeakyReLU`` equals ``Conv2D(use_bias=False) + BatchNormalization() +
LeakyReLU()`` with the same weights (``FusedConvTransposeBNLeakyReLU`` the transposed twin):
its weights carry the Keras names and shapes (``kernel``, ``gamma``, ``beta``,
``moving_mean``, ``moving_variance``), so they can be copied either way, and
``fuse_model()`` converts an existing trained model.

The implementation is picked at call time (``impl="auto"``: native unless the call is
traced for XLA, or the native op is slower or absent for the compute dtype);
``layer.last_impl`` says which ran: "native", "native-bf16" or "tf". Under "mixed_bfloat16" a
transposed block with fewer than ``BF16_MIN_IN_CHANNELS`` input channels runs the float32
native op, faster there.
Under "mixed_bfloat16" the native op runs on bf16 activations (kernels for CPUs with
AVX512-BF16, ``pyae.ops.bf16_info()``): outputs in bfloat16, variables, statistics and the
batch norm in float32, as Keras computes its layers under that policy. Elsewhere under mixed
precision ("mixed_float16", or a CPU without the bf16 kernels) ``impl="auto"``/``"tf"`` runs
the convolution in the compute dtype and the batch norm in float32, as Keras does, and
``impl="native"`` casts to float32 and runs the float32 native op.

``FusedConv2DTranspose`` is Keras' ``Conv2DTranspose`` for a model's output layer (padding
"same", sigmoid or linear) on the output op, ``pyae.ops.conv_transpose_output``.
"""
import keras
import tensorflow as tf

from pyae import ops as pyae_ops
from pyae.ops import geometry

_PACKAGE = "pyae"
_HALF_DTYPES = ("float16", "bfloat16")
# Under mixed_bfloat16, a transposed block with fewer input channels than this runs the float32
# native op on cast inputs: its bf16 conv would pack a 9- or 27-long reduction in pairs for a
# wide output, where float32 wins. A Conv2D block with so few (the tutorial models' first
# layers: 1 and 3) runs the bf16 op, which convolves such inputs in float32 itself
# (ops/kernels/fused_bf16.cc, ConvInFloat) and keeps y and dy in bf16, with no cast ops
# (bench/RESULTS.md, "The first block under mixed_bfloat16").
BF16_MIN_IN_CHANNELS = 4


# --------------------------------------------------------------------------- validation


def _check_filters(filters):
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"filters must be a positive int, got filters={filters!r}")
    return filters


def _check_data_format(data_format):
    resolved = keras.config.image_data_format() if data_format is None else data_format
    if str(resolved).lower() != "channels_last":
        raise ValueError(
            f"data_format must be 'channels_last' (the fused op is NHWC only), "
            f"got data_format={data_format!r}"
        )
    return "channels_last"


def _check_dilation(dilation_rate):
    pair = geometry.normalize_pair(dilation_rate, "dilation_rate")
    if pair != (1, 1):
        raise ValueError(
            f"dilation_rate must be 1 (the fused op has no dilation), "
            f"got dilation_rate={dilation_rate!r}"
        )
    return pair


def _check_impl(impl):
    if impl not in pyae_ops.IMPLS:
        raise ValueError(f"impl must be one of {pyae_ops.IMPLS}, got impl={impl!r}")
    return impl


def _check_range(name, value, low, high=None):
    bad = not isinstance(value, (int, float)) or value < low or (high is not None and value > high)
    if bad:
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a number {bounds}, got {name}={value!r}")
    return float(value)


def _check_op_params(epsilon, negative_slope):
    """The kernels' own rule (pyae.ops.geometry asks the native contract)."""
    geometry.check_op_params(epsilon, negative_slope)
    return float(epsilon), float(negative_slope)


def _has_bf16_kernels():
    """True when the native op runs bf16 activations here (pyae.ops.bf16_info())."""
    return pyae_ops.native_available() and pyae_ops.bf16_info()["path"] != "none"


# --------------------------------------------------------------------------- layers


class _FusedConvBNLeakyReLUBase(keras.layers.Layer):
    """Shared body of the two fused layers; subclasses set ``transpose``."""

    transpose = False

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        kernel_constraint=None,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        negative_slope=0.3,
        impl="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _check_filters(filters)
        self.kernel_size = geometry.normalize_pair(kernel_size, "kernel_size")
        self.strides = geometry.normalize_pair(strides, "strides")
        self.padding = geometry.normalize_padding(padding)
        self.data_format = _check_data_format(data_format)
        self.dilation_rate = _check_dilation(dilation_rate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        self.epsilon, self.negative_slope = _check_op_params(epsilon, negative_slope)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.impl = _check_impl(impl)
        # Keras' fit() compiles with XLA when every layer supports it; a custom op cannot.
        self.supports_jit = impl != "native"
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.last_impl = None
        self.kernel = self.gamma = self.beta = None
        self.moving_mean = self.moving_variance = None

    # ---- weights

    def _kernel_shape(self, in_channels):
        if self.transpose:
            return self.kernel_size + (self.filters, in_channels)
        return self.kernel_size + (in_channels, self.filters)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected a rank-4 NHWC input, got shape {input_shape}")
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(
                f"{self.name}: the channel axis must be known, got shape {input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: in_channels})
        self.kernel = self.add_weight(
            name="kernel", shape=self._kernel_shape(in_channels),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint, trainable=True, autocast=False,
        )
        self._build_batch_norm_weights((self.filters,))

    def _build_batch_norm_weights(self, shape):
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma", shape=shape, initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                trainable=True, autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta", shape=shape, initializer=self.beta_initializer,
                regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                trainable=True, autocast=False,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer=self.moving_mean_initializer,
            trainable=False, autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer=self.moving_variance_initializer,
            trainable=False, autocast=False,
        )

    def _scale_and_offset(self, dtype):
        """gamma and beta as tensors of ``dtype``; constants 1 and 0 when scale/center=False."""
        shape = (self.filters,)
        gamma = tf.cast(self.gamma, dtype) if self.scale else tf.ones(shape, dtype)
        beta = tf.cast(self.beta, dtype) if self.center else tf.zeros(shape, dtype)
        return gamma, beta

    # ---- forward

    def call(self, inputs, training=None):
        use_batch_stats = bool(training) and self.trainable
        impl = self._resolve_impl()
        if impl in ("tf", "native-bf16") and self.compute_dtype in _HALF_DTYPES:
            y, mean, variance = self._mixed_precision(inputs, use_batch_stats, impl)
        else:
            y, mean, variance = self._fused_float(inputs, use_batch_stats, impl)
        if use_batch_stats:
            self._update_moving_statistics(mean, variance)
        self.last_impl = impl
        return y

    def _resolve_impl(self):
        """"native", "native-bf16" (the native op on bf16 activations) or "tf"."""
        if self.compute_dtype == "bfloat16" and self.impl == "auto":
            if pyae_ops.resolve_impl("auto", "bfloat16") != "native":
                return "tf"
            few_channels = self._in_channels() < BF16_MIN_IN_CHANNELS
            return "native" if self.transpose and few_channels else "native-bf16"
        if self.compute_dtype == "bfloat16" and self.impl == "native" and _has_bf16_kernels():
            return "native-bf16"
        if self.compute_dtype in _HALF_DTYPES and self.impl != "native":
            return "tf"  # Keras-style mixed precision: conv in half, batch norm in float32
        dtype = "float32" if self.compute_dtype in _HALF_DTYPES else self.compute_dtype
        return pyae_ops.resolve_impl(self.impl, dtype)

    def _in_channels(self):
        return self.kernel.shape[3 if self.transpose else 2]

    def _fused_float(self, inputs, use_batch_stats, impl):
        """The fused op; inputs in half precision are computed in float32 (native op), with
        the kernel rounded to the compute dtype first, as Keras' conv under the policy uses it."""
        dtype = "float32" if self.compute_dtype in _HALF_DTYPES else self.compute_dtype
        gamma, beta = self._scale_and_offset(dtype)
        kernel = tf.cast(tf.cast(self.kernel, self.compute_dtype), dtype)
        result = pyae_ops.fused_conv_bn_leaky_relu(
            tf.cast(inputs, dtype), kernel, gamma, beta,
            tf.cast(self.moving_mean, dtype), tf.cast(self.moving_variance, dtype),
            strides=self.strides, padding=self.padding, epsilon=self.epsilon,
            negative_slope=self.negative_slope, training=use_batch_stats,
            transpose=self.transpose, impl=impl,
        )
        return tf.cast(result.y, self.compute_dtype), result.mean, result.variance

    def _mixed_precision(self, inputs, use_batch_stats, impl):
        """As Keras under mixed precision: activations in the compute dtype, the kernel,
        batch norm and statistics in float32 (the native bf16 op, or the composite ops)."""
        gamma, beta = self._scale_and_offset(tf.float32)
        result = pyae_ops.fused_conv_bn_leaky_relu(
            tf.cast(inputs, self.compute_dtype), self.kernel, gamma, beta,
            self.moving_mean, self.moving_variance,
            strides=self.strides, padding=self.padding, epsilon=self.epsilon,
            negative_slope=self.negative_slope, training=use_batch_stats,
            transpose=self.transpose, impl="native" if impl == "native-bf16" else "tf",
        )
        return result

    def _update_moving_statistics(self, mean, variance):
        keep = self.momentum
        mean = tf.cast(mean, self.moving_mean.dtype)
        variance = tf.cast(variance, self.moving_variance.dtype)
        self.moving_mean.assign(self.moving_mean * keep + mean * (1.0 - keep))
        self.moving_variance.assign(self.moving_variance * keep + variance * (1.0 - keep))

    # ---- shapes and config

    def _output_length(self, length, axis):
        if self.transpose:
            return geometry.conv_transpose_output_length(
                length, self.kernel_size[axis], self.strides[axis], self.padding
            )
        return geometry.conv_output_length(
            length, self.kernel_size[axis], self.strides[axis], self.padding
        )

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected a rank-4 NHWC input, got shape {input_shape}")
        height = self._output_length(input_shape[1], 0)
        width = self._output_length(input_shape[2], 1)
        if (height is not None and height < 1) or (width is not None and width < 1):
            raise ValueError(
                f"{self.name}: input shape {input_shape} is too small for kernel_size="
                f"{self.kernel_size}, padding={self.padding!r} (output {height}x{width})"
            )
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        serialize_init = keras.initializers.serialize
        serialize_reg = keras.regularizers.serialize
        serialize_con = keras.constraints.serialize
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "kernel_initializer": serialize_init(self.kernel_initializer),
            "kernel_regularizer": serialize_reg(self.kernel_regularizer),
            "kernel_constraint": serialize_con(self.kernel_constraint),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": serialize_init(self.beta_initializer),
            "gamma_initializer": serialize_init(self.gamma_initializer),
            "moving_mean_initializer": serialize_init(self.moving_mean_initializer),
            "moving_variance_initializer": serialize_init(self.moving_variance_initializer),
            "beta_regularizer": serialize_reg(self.beta_regularizer),
            "gamma_regularizer": serialize_reg(self.gamma_regularizer),
            "beta_constraint": serialize_con(self.beta_constraint),
            "gamma_constraint": serialize_con(self.gamma_constraint),
            "negative_slope": self.negative_slope,
            "impl": self.impl,
        })
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedConvBNLeakyReLU(_FusedConvBNLeakyReLUBase):
    """``Conv2D(use_bias=False) -> BatchNormalization() -> LeakyReLU()`` as one layer.

    Arguments are those of the three Keras layers (``filters``, ``kernel_size``,
    ``strides``, ``padding``, the kernel's initializer/regularizer/constraint, BN's
    ``momentum``, ``epsilon``, ``center``, ``scale`` and its initializers, regularizers and
    constraints, LeakyReLU's ``negative_slope``) plus ``impl`` ("auto", "native", "tf").
    Only ``data_format="channels_last"`` and ``dilation_rate=1`` are supported.
    Weights: ``kernel`` ``(kh, kw, in, filters)``, ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance`` ``(filters,)``.
    """

    transpose = False


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedConvTransposeBNLeakyReLU(_FusedConvBNLeakyReLUBase):
    """``Conv2DTranspose(use_bias=False) -> BatchNormalization() -> LeakyReLU()`` as one layer.

    As ``FusedConvBNLeakyReLU``, with the kernel laid out as Keras' Conv2DTranspose stores
    it, ``(kh, kw, filters, in)``. ``output_padding`` must be None.
    """

    transpose = True

    def __init__(self, filters, kernel_size, *args, output_padding=None, **kwargs):
        if output_padding is not None:
            raise ValueError(
                f"output_padding must be None (the fused op derives the output size from "
                f"padding and strides), got output_padding={output_padding!r}"
            )
        self.output_padding = None
        super().__init__(filters, kernel_size, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "output_padding": None}


def _check_output_padding(output_padding):
    if output_padding is not None:
        raise ValueError(
            f"output_padding must be None (the output size follows from padding 'same' and "
            f"strides). Received: output_padding={output_padding!r}")


def _output_activation(activation):
    """``(keras activation, op activation name)`` of a sigmoid or linear activation."""
    function = keras.activations.get(activation)
    for name in pyae_ops.OUTPUT_ACTIVATIONS:
        if function is keras.activations.get(name):
            return function, name
    raise ValueError(
        f"activation must be one of {pyae_ops.OUTPUT_ACTIVATIONS} or None (what the output op "
        f"computes). Received: activation={activation!r}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedConv2DTranspose(keras.layers.Layer):
    """``keras.layers.Conv2DTranspose`` on pyae's output op (``pyae.ops.conv_transpose_output``):
    ``activation(conv2d_transpose(x, kernel) + bias)`` in one pass.

    The arguments, weights (``kernel`` ``(kh, kw, filters, in)``, ``bias`` ``(filters,)``) and
    initializers are Conv2DTranspose's, so weights copy 1:1 either way, restricted to what
    the op computes: ``padding="same"`` (the default here; Keras' is "valid"),
    ``activation`` "sigmoid", "linear" or None, ``channels_last``, ``dilation_rate=1``,
    ``output_padding=None``. ``impl`` ("auto", "native", "tf") picks the implementation;
    ``pyae.ops.explain_output_impl`` says what "auto" runs and why (the native op is built for
    a few output channels, an image's) and ``layer.last_impl`` what ran. Under an XLA-compiled
    step "auto" runs TF's ops. Under mixed precision the variables are float32 and the output
    is in the compute dtype, as Keras' layer gives it; a compute dtype the native op lacks
    (float16) runs it in float32 when ``impl="native"``.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        output_padding=None,
        data_format=None,
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        impl="auto",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = _check_filters(filters)
        self.kernel_size = geometry.normalize_pair(kernel_size, "kernel_size")
        self.strides = geometry.normalize_pair(strides, "strides")
        if str(padding).lower() != "same":
            raise ValueError(
                f"padding must be 'same' (the only padding the output op computes). "
                f"Received: padding={padding!r}")
        self.padding = "same"
        _check_output_padding(output_padding)
        self.output_padding = None
        self.data_format = _check_data_format(data_format)
        self.dilation_rate = _check_dilation(dilation_rate)
        self.activation, self._op_activation = _output_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.impl = _check_impl(impl)
        # Keras' fit() compiles with XLA when every layer supports it; a custom op cannot.
        self.supports_jit = impl != "native"
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.last_impl = None
        self.kernel = self.bias = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected a rank-4 NHWC input with a known channel "
                             f"axis. Received: input_shape={input_shape}")
        in_channels = input_shape[-1]
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: in_channels})
        # autocast=False: the op takes the float32 variables under mixed precision and
        # returns their gradients in float32.
        self.kernel = self.add_weight(
            name="kernel", shape=self.kernel_size + (self.filters, in_channels),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint, trainable=True, autocast=False,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                trainable=True, autocast=False,
            )

    def call(self, inputs):
        impl, dtype = self._resolve_impl()
        kernel, bias = self.kernel, self.bias
        if dtype != self.compute_dtype:  # float16 on the float32 native op
            kernel = tf.cast(tf.cast(kernel, self.compute_dtype), dtype)
            bias = None if bias is None else tf.cast(tf.cast(bias, self.compute_dtype), dtype)
        y = pyae_ops.conv_transpose_output(
            tf.cast(inputs, dtype), kernel, bias, strides=self.strides,
            activation=self._op_activation, impl=impl)
        self.last_impl = impl
        return tf.cast(y, self.compute_dtype)

    def _resolve_impl(self):
        """("native" or "tf", the dtype the op computes in): the op's own rule
        (``explain_output_impl``); "native" under float16 computes in float32."""
        dtype = self.compute_dtype
        if self.impl == "native" and dtype not in ("float32", "bfloat16"):
            dtype = "float32"
        return pyae_ops.explain_output_impl(self.impl, dtype, self.filters)[0], dtype

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected a rank-4 NHWC input. "
                             f"Received: input_shape={input_shape}")
        height, width = (
            geometry.conv_transpose_output_length(
                input_shape[axis + 1], self.kernel_size[axis], self.strides[axis], "same")
            for axis in (0, 1))
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "output_padding": self.output_padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "impl": self.impl,
        })
        return config


__all__ = [
    "FuseReport",
    "FusedChain",
    "FusedConv2DTranspose",
    "FusedConvBNLeakyReLU",
    "FusedConvTransposeBNLeakyReLU",
    "ReplacedLayer",
    "fuse_model",
]


def __getattr__(name):
    # fuse_model lives in pyae.fusion (which imports this module): resolve its names on
    # first use so that ``from pyae.layers import fuse_model`` keeps working, without a cycle.
    if name in ("FuseReport", "FusedChain", "ReplacedLayer", "fuse_model"):
        from pyae import fusion

        return getattr(fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
