"""Float64 numpy reference of the fused op, written from the definitions (no TF, no pyae).

Its geometry (_out_len, _transpose_len, _pad_before) deliberately does not come from the
kernel contract (ops/kernels/conv_geometry.h, asked through pyae.ops.geometry): a reference
that borrowed the code under test would agree with any bug in it. The contract is checked
against this copy by every op test, and against its Python mirror by tests/test_contract.py.
"""
import numpy as np


def _out_len(big, k, s, padding):
    if padding == "same":
        return -(-big // s)
    return -(-(big - k + 1) // s)


def _transpose_len(small, k, s, padding):
    return small * s if padding == "same" else small * s + max(k - s, 0)


def _pad_before(big, small, k, s, padding):
    return 0 if padding == "valid" else max((small - 1) * s + k - big, 0) // 2


class Geometry:
    """The conv from a big image to a small one (the transposed op is its adjoint)."""

    def __init__(self, x_shape, kernel_shape, strides, padding, transpose):
        kh, kw = kernel_shape[:2]
        self.kh, self.kw, (self.sh, self.sw) = kh, kw, strides
        if transpose:
            self.small = x_shape[1:3]
            self.big = (_transpose_len(x_shape[1], kh, strides[0], padding),
                        _transpose_len(x_shape[2], kw, strides[1], padding))
        else:
            self.big = x_shape[1:3]
            self.small = (_out_len(x_shape[1], kh, strides[0], padding),
                          _out_len(x_shape[2], kw, strides[1], padding))
        self.pad = (_pad_before(self.big[0], self.small[0], kh, strides[0], padding),
                    _pad_before(self.big[1], self.small[1], kw, strides[1], padding))
        # Padded canvas large enough for every tap of every small pixel.
        self.canvas = (max(self.big[0] + self.pad[0], (self.small[0] - 1) * self.sh + kh),
                       max(self.big[1] + self.pad[1], (self.small[1] - 1) * self.sw + kw))

    def taps(self):
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j, (slice(None), slice(i, i + self.sh * (self.small[0] - 1) + 1, self.sh),
                             slice(j, j + self.sw * (self.small[1] - 1) + 1, self.sw))

    def to_canvas(self, big):
        canvas = np.zeros((big.shape[0],) + self.canvas + (big.shape[3],))
        canvas[:, self.pad[0]:self.pad[0] + self.big[0], self.pad[1]:self.pad[1] + self.big[1]] = big
        return canvas

    def from_canvas(self, canvas):
        return canvas[:, self.pad[0]:self.pad[0] + self.big[0], self.pad[1]:self.pad[1] + self.big[1]]

    def conv(self, big, matrix):
        """small = conv(big); matrix[i, j] is (big_c, small_c)."""
        canvas = self.to_canvas(big)
        return sum(canvas[view] @ matrix[i, j] for i, j, view in self.taps())

    def conv_adjoint(self, small, matrix):
        """big = conv^T(small)."""
        canvas = np.zeros((small.shape[0],) + self.canvas + (matrix.shape[2],))
        for i, j, view in self.taps():
            canvas[view] += small @ matrix[i, j].T
        return self.from_canvas(canvas)

    def matrix_grad(self, big, small_grad):
        canvas = self.to_canvas(big)
        grad = np.zeros((self.kh, self.kw, big.shape[3], small_grad.shape[3]))
        for i, j, view in self.taps():
            grad[i, j] = np.einsum("nhwc,nhwd->cd", canvas[view], small_grad)
        return grad


def forward(x, kernel, gamma, beta, moving_mean, moving_variance, strides=(1, 1),
            padding="same", epsilon=1e-3, negative_slope=0.3, training=False, transpose=False):
    """Returns y, mean, variance, and the intermediates the backward needs."""
    x, kernel = np.float64(x), np.float64(kernel)
    geo = Geometry(x.shape, kernel.shape, strides, padding, transpose)
    z = geo.conv_adjoint(x, kernel) if transpose else geo.conv(x, kernel)
    if training:
        mean, variance = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
    else:
        mean, variance = np.float64(moving_mean), np.float64(moving_variance)
    xhat = (z - mean) / np.sqrt(variance + epsilon)
    u = gamma * xhat + beta
    y = np.where(u > 0, u, negative_slope * u)
    return y, mean, variance, {"geo": geo, "xhat": xhat, "u": u}


def backward(dy, x, kernel, gamma, beta, moving_mean, moving_variance, strides=(1, 1),
             padding="same", epsilon=1e-3, negative_slope=0.3, training=False, transpose=False):
    """Returns dx, dkernel, dgamma, dbeta of sum(dy * y)."""
    geo, dz, dgamma, dbeta = batch_norm_backward(
        dy, x, kernel, gamma, beta, moving_mean, moving_variance, strides, padding, epsilon,
        negative_slope, training, transpose)
    x = np.float64(x)
    if transpose:
        dx = geo.conv(dz, kernel)
        dkernel = geo.matrix_grad(dz, x)
    else:
        dx = geo.conv_adjoint(dz, kernel)
        dkernel = geo.matrix_grad(x, dz)
    return dx, dkernel, dgamma, dbeta


def batch_norm_backward(dy, x, kernel, gamma, beta, moving_mean, moving_variance, strides=(1, 1),
                        padding="same", epsilon=1e-3, negative_slope=0.3, training=False,
                        transpose=False):
    """Returns the geometry, dz (the gradient at the conv's output), dgamma and dbeta."""
    _, _, variance, cache = forward(x, kernel, gamma, beta, moving_mean, moving_variance,
                                    strides, padding, epsilon, negative_slope, training, transpose)
    geo, xhat, u = cache["geo"], cache["xhat"], cache["u"]
    du = np.where(u > 0, dy, negative_slope * dy)
    dbeta = du.sum(axis=(0, 1, 2))
    dgamma = (du * xhat).sum(axis=(0, 1, 2))
    rstd = 1.0 / np.sqrt(variance + epsilon)
    if training:
        count = du.shape[0] * du.shape[1] * du.shape[2]
        dz = gamma * rstd * (du - dbeta / count - xhat * dgamma / count)
    else:
        dz = gamma * rstd * du
    return geo, dz, dgamma, dbeta


def assert_within(actual, expected, bound, name):
    """Every element of `actual` within its own `bound` of the float64 `expected`."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: not finite (an element was never written)"
    excess = np.abs(actual - expected) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, (
        f"{name}: element {worst} is off by {abs(actual - expected)[worst]:.3e}, "
        f"beyond its bound {bound[worst]:.3e}")
