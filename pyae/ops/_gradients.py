"""Gradient of the native op: a second native op, registered by name."""
import tensorflow as tf

from pyae.ops import _loader

FORWARD_OP = "PyaeFusedConvBnLeakyRelu"
BF16_FORWARD_OP = "PyaeFusedConvBnLeakyReluBf16"


def _grad(grad_op, op, grad_y):
    # The mean/variance outputs feed moving averages only (the Python wrapper stops their
    # gradient), so their incoming gradients are ignored.
    x, kernel, gamma, beta = op.inputs[0], op.inputs[1], op.inputs[2], op.inputs[3]
    y, mean, variance = op.outputs
    grad_x, grad_kernel, grad_gamma, grad_beta = grad_op(
        grad_y, x, kernel, gamma, beta, y, mean, variance,
        strides=op.get_attr("strides"),
        padding=op.get_attr("padding"),
        epsilon=op.get_attr("epsilon"),
        negative_slope=op.get_attr("negative_slope"),
        is_training=op.get_attr("is_training"),
        transpose=op.get_attr("transpose"),
    )
    return grad_x, grad_kernel, grad_gamma, grad_beta, None, None


@tf.RegisterGradient(FORWARD_OP)
def _fused_conv_bn_leaky_relu_grad(op, grad_y, _grad_mean, _grad_variance):
    return _grad(_loader.load().pyae_fused_conv_bn_leaky_relu_grad, op, grad_y)


@tf.RegisterGradient(BF16_FORWARD_OP)
def _fused_conv_bn_leaky_relu_bf16_grad(op, grad_y, _grad_mean, _grad_variance):
    return _grad(_loader.load().pyae_fused_conv_bn_leaky_relu_bf16_grad, op, grad_y)


OUTPUT_OP = "PyaeConvTransposeOutput"


@tf.RegisterGradient(OUTPUT_OP)
def _conv_transpose_output_grad(op, grad_y):
    """dx, dkernel and dbias in one native pass (dkernel and dbias float32, as the variables)."""
    x, kernel = op.inputs[0], op.inputs[1]
    return _loader.load().pyae_conv_transpose_output_grad(
        grad_y, op.outputs[0], x, kernel,
        strides=op.get_attr("strides"), activation=op.get_attr("activation"))
