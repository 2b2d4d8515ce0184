"""The fused op's test cases, shared by the CPU op tests (test_op.py) and the CUDA kernel
tests (test_cuda.py): the tutorial's block shapes at small batches and awkward ones, with
fresh random inputs. numpy only, so the CUDA tests run where TensorFlow is absent.
"""
import numpy as np

# (batch, height, width, in_channels, filters, kernel, stride, padding, transpose)
FASHION_BLOCKS = [
    (4, 28, 28, 1, 32, 3, 1, "same", False),
    (4, 28, 28, 32, 64, 3, 2, "same", False),
    (4, 14, 14, 64, 64, 3, 2, "same", False),
    (4, 7, 7, 64, 64, 3, 1, "same", False),
    (4, 7, 7, 64, 64, 3, 1, "same", True),
    (4, 7, 7, 64, 64, 3, 2, "same", True),
    (4, 14, 14, 64, 32, 3, 2, "same", True),
]
CARTOON_BLOCKS = [
    (2, 256, 256, 3, 32, 3, 2, "same", False),
    (2, 64, 64, 64, 64, 3, 2, "same", False),
    (2, 16, 16, 64, 64, 3, 2, "same", False),
    (2, 8, 8, 64, 64, 3, 2, "same", True),
    (2, 64, 64, 64, 32, 3, 2, "same", True),
]
AWKWARD = [
    (1, 9, 7, 3, 5, 3, 1, "same", False),      # batch 1, odd sizes
    (3, 11, 13, 1, 4, 5, 2, "same", False),    # kernel 5, one channel
    (2, 10, 9, 3, 6, 1, 1, "valid", False),    # kernel 1, VALID
    (2, 12, 11, 4, 3, 5, 3, "valid", False),   # stride 3, VALID
    (1, 5, 6, 3, 2, 3, 2, "valid", True),      # transposed VALID, k > s
    (2, 4, 5, 2, 3, 1, 2, "valid", True),      # transposed VALID, k < s
    (3, 6, 5, 3, 1, 5, 1, "same", True),       # transposed, one filter
    (1, 37, 35, 3, 5, 3, 1, "same", False),    # image copied in bands, short last band
    (2, 61, 53, 2, 4, 5, 2, "valid", False),   # bands of a strided VALID conv
    (2, 3, 2, 4, 3, 5, 1, "same", False),      # kernel larger than the image
    (2, 9, 8, 20, 44, 3, 2, "same", False),    # partial column tiles: 44 = 32 + 12, dx 20
    (2, 5, 6, 24, 88, 3, 2, "same", True),     # two column blocks: 88 = 64 + 24
    (1, 30, 23, 5, 20, 5, 2, "valid", True),   # transposed conv in bands of rows, k 5
    (1, 45, 40, 16, 8, 4, 3, "same", False),   # its dx in bands, even kernel, stride 3
    # The filter gradient read in place, a tap at a time (unit stride, >= 16 input channels):
    (1, 37, 35, 17, 6, 3, 1, "same", False),   # in bands of rows; 17 rows per tap, 6 filters
    (2, 9, 7, 20, 12, 5, 1, "valid", False),   # no padding: every pixel runs every tap
    (2, 3, 2, 16, 8, 5, 1, "same", False),     # taps no pixel reaches
    (2, 6, 5, 8, 24, 3, 1, "same", True),      # transposed: its big image is z, 24 channels
]
ALL_SHAPES = FASHION_BLOCKS + CARTOON_BLOCKS + AWKWARD


def shape_id(case):
    n, h, w, c, f, k, s, pad, transpose = case
    kind = "convT" if transpose else "conv"
    return f"{kind}-{n}x{h}x{w}x{c}-f{f}-k{k}-s{s}-{pad}"


def make_inputs(rng, case, gamma_scale=1.0, beta_scale=0.2):
    n, h, w, c, f, k, _, _, transpose = case
    kernel_shape = (k, k, f, c) if transpose else (k, k, c, f)
    return {
        "x": rng.normal(size=(n, h, w, c)).astype(np.float32),
        "kernel": (rng.normal(size=kernel_shape) / np.sqrt(k * k * c)).astype(np.float32),
        "gamma": (gamma_scale * rng.uniform(0.5, 1.5, size=f)).astype(np.float32),
        "beta": (beta_scale * rng.normal(size=f)).astype(np.float32),
        "moving_mean": (0.1 * rng.normal(size=f)).astype(np.float32),
        "moving_variance": rng.uniform(0.5, 2.0, size=f).astype(np.float32),
    }


def op_attrs(case, training):
    *_, s, pad, transpose = case
    return {"strides": (s, s), "padding": pad, "training": training, "transpose": transpose}
