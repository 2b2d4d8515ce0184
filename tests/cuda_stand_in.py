"""A stand-in for pyae._native's CUDA entry points, served by its CPU kernels.

It takes the CUDA functions' arguments in their order and with their defaults (PyTorch CPU
tensors where the real ones take device arrays), writes its outputs in place as they do and
leaves an output it must not write untouched, so the code that drives the CUDA kernels
(tests/test_cuda.py, bench/gpu/check_and_time.py) runs entirely on a machine without a GPU;
only the device calls themselves wait for one.
"""
import torch


class CpuStandIn:
    def __init__(self, native):
        self.native = native

    def conv_bn_lrelu_output_shape(self, x_shape, w_shape, strides, padding, transpose=False):
        return self.native.conv_bn_lrelu_output_shape(x_shape, w_shape, strides, padding,
                                                      transpose)

    def build_info(self):
        return dict(self.native.build_info(), stand_in="CPU kernels behind the CUDA signatures")

    @staticmethod
    def _attrs(strides, padding, epsilon, negative_slope, training, transpose):
        strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        return dict(strides=strides, padding=padding, epsilon=epsilon,
                    negative_slope=negative_slope, training=training, transpose=transpose)

    @staticmethod
    def _write(targets, values):
        for target, value in zip(targets, values):
            if target is not None:
                target.copy_(torch.from_numpy(value))

    def conv_bn_lrelu_forward_cuda(self, x, w, gamma, beta, mean, var, y_out, mean_out, var_out,
                                   strides, padding, epsilon=1e-3, negative_slope=0.3,
                                   training=True, transpose=False, allow_tf32=False, stream=0):
        del allow_tf32, stream
        if not training and (mean is None or var is None):
            raise ValueError("inference needs mean and var")
        if training and (mean_out is None or var_out is None):
            raise ValueError("training=True needs mean_out and var_out")
        channels = gamma.shape[0]
        stats = [t.numpy() if t is not None else torch.ones(channels).numpy()
                 for t in (mean, var)]  # the CPU kernel reads them only in inference
        y, batch_mean, batch_var = self.native.conv_bn_lrelu_forward(
            x.numpy(), w.numpy(), gamma.numpy(), beta.numpy(), *stats,
            **self._attrs(strides, padding, epsilon, negative_slope, training, transpose))
        self._write((y_out,), (y,))
        if training:  # in inference the CUDA kernels leave mean_out and var_out alone
            self._write((mean_out, var_out), (batch_mean, batch_var))

    def conv_bn_lrelu_backward_cuda(self, dy, x, w, gamma, beta, y, mean, var, dx_out, dw_out,
                                    dgamma_out, dbeta_out, strides, padding, epsilon=1e-3,
                                    negative_slope=0.3, training=True, transpose=False,
                                    allow_tf32=False, stream=0):
        del allow_tf32, stream
        grads = self.native.conv_bn_lrelu_backward(
            *(t.numpy() for t in (dy, x, w, gamma, beta, y, mean, var)),
            **self._attrs(strides, padding, epsilon, negative_slope, training, transpose))
        self._write((dx_out, dw_out, dgamma_out, dbeta_out), grads)
