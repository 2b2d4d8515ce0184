"""The pure-TensorFlow composite of the fused op: conv, moments, batch norm, LeakyReLU.

XLA compiles and fuses this form by itself, so it is also the path used under
``jit_compile=True``. It is the numerical reference the native kernels are tested against.
"""
import tensorflow as tf

from pyae.ops import geometry


def conv(x, kernel, strides, padding, transpose):
    """Conv2D (kernel ``(kh, kw, in, out)``) or Conv2DTranspose (kernel ``(kh, kw, out, in)``)."""
    tf_padding = padding.upper()
    if not transpose:
        return tf.nn.conv2d(x, kernel, strides=(1,) + strides + (1,), padding=tf_padding)
    kh, kw, out_channels = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    in_shape = tf.shape(x)
    out_h = geometry.conv_transpose_output_length(in_shape[1], kh, strides[0], padding)
    out_w = geometry.conv_transpose_output_length(in_shape[2], kw, strides[1], padding)
    output_shape = tf.stack([in_shape[0], out_h, out_w, out_channels])
    z = tf.nn.conv2d_transpose(
        x, kernel, output_shape, strides=(1,) + strides + (1,), padding=tf_padding
    )
    static_h = geometry.conv_transpose_output_length(x.shape[1], kh, strides[0], padding)
    static_w = geometry.conv_transpose_output_length(x.shape[2], kw, strides[1], padding)
    return tf.ensure_shape(z, (x.shape[0], static_h, static_w, out_channels))


def fused_conv_bn_leaky_relu(
    x, kernel, gamma, beta, moving_mean, moving_variance,
    *, strides, padding, epsilon, negative_slope, training, transpose,
):
    z = conv(x, kernel, strides, padding, transpose)
    if training:
        mean, variance = tf.nn.moments(z, axes=[0, 1, 2])
    else:
        mean, variance = moving_mean, moving_variance
    normalized = tf.nn.batch_normalization(z, mean, variance, beta, gamma, epsilon)
    y = tf.nn.leaky_relu(normalized, alpha=negative_slope)
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)


def mixed_precision(
    x, kernel, gamma, beta, moving_mean, moving_variance,
    *, strides, padding, epsilon, negative_slope, training, transpose,
):
    """As Keras' three layers under a "mixed_*" policy: the conv in x's (half) dtype, batch
    norm in float32 (gamma, beta and the statistics float32), LeakyReLU in x's dtype."""
    z = tf.cast(conv(x, tf.cast(kernel, x.dtype), strides, padding, transpose), tf.float32)
    if training:
        mean, variance = tf.nn.moments(z, axes=[0, 1, 2])
    else:
        mean, variance = moving_mean, moving_variance
    normalized = tf.nn.batch_normalization(z, mean, variance, beta, gamma, epsilon)
    y = tf.nn.leaky_relu(tf.cast(normalized, x.dtype), alpha=negative_slope)
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)
