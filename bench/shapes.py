"""The tutorial's fused blocks as data, and the work each one has to do.

Every Conv/ConvTranspose + BatchNorm + LeakyReLU block of the two autoencoders in
``shared/seed/autoencoder_tutorial.txt`` (kernel 3, padding "same"), with the batch the
tutorial trains at: 128 for Fashion-MNIST, 32 for the Cartoon Set.

Work is counted, not measured:

* FLOPs: a convolution does ``2 * MACs``; forward+backward is ``3 x`` the conv forward
  (forward, data gradient, filter gradient) plus the elementwise BN + LeakyReLU epilogue.
* Bytes: the least traffic any implementation needs in float32. Forward reads ``x`` and
  ``W`` and writes ``y``. Backward reads ``x, y, dy, W`` and writes ``dx, dW``;
  forward+backward is the sum of the two (the forward must still write ``y``).
  BN's per-channel vectors are counted too; they are negligible.
* Floor time: the roofline ``max(FLOPs / peak FLOP/s, bytes / peak bytes/s)``.
"""
import dataclasses
import math

BYTES_PER_FLOAT32 = 4
KERNEL_SIZE = 3
PADDING = "same"

# Elementwise FLOPs per output element of the BN + LeakyReLU epilogue.
# Training forward: sum and sum of squares (3), normalise as one multiply-add (2), LeakyReLU (1).
# Inference forward: multiply-add with folded scale/shift (2), LeakyReLU (1).
# Backward: LeakyReLU mask (1), sums of dy and dy*x_hat (3), recompute x_hat (2), dx formula (4).
EPILOGUE_FLOPS_PER_ELEMENT = {"train_fwd": 6, "infer_fwd": 3, "bwd": 10}

# What a benchmark runs: the training forward, forward+backward, or the inference forward.
MODES = ("train_fwd", "train_fwdbwd", "infer_fwd")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fused block: its input geometry and its conv's channels and stride."""

    model: str
    name: str
    batch: int
    height: int
    width: int
    in_channels: int
    out_channels: int
    stride: int
    transpose: bool

    @property
    def id(self):
        return f"{self.model}/{self.name}"

    @property
    def input_shape(self):
        return (self.batch, self.height, self.width, self.in_channels)

    @property
    def output_shape(self):
        if self.transpose:
            out_h, out_w = self.height * self.stride, self.width * self.stride
        else:
            out_h, out_w = -(-self.height // self.stride), -(-self.width // self.stride)
        return (self.batch, out_h, out_w, self.out_channels)

    @property
    def kernel_shape(self):
        """As Keras stores it: Conv2D ``(kh, kw, in, out)``, Conv2DTranspose ``(kh, kw, out, in)``."""
        if self.transpose:
            return (KERNEL_SIZE, KERNEL_SIZE, self.out_channels, self.in_channels)
        return (KERNEL_SIZE, KERNEL_SIZE, self.in_channels, self.out_channels)

    @property
    def label(self):
        kind = "convT" if self.transpose else "conv"
        _, height, width, channels = self.input_shape
        return f"{kind} {height}x{width}x{channels}->{self.out_channels} s{self.stride}"


def _encoder(model, batch, specs):
    return [
        Block(model, f"enc{i}", batch, h, w, cin, cout, stride, transpose=False)
        for i, (h, w, cin, cout, stride) in enumerate(specs, start=1)
    ]


def _decoder(model, batch, specs):
    return [
        Block(model, f"dec{i}", batch, h, w, cin, cout, stride, transpose=True)
        for i, (h, w, cin, cout, stride) in enumerate(specs, start=1)
    ]


FASHION_MNIST = _encoder("fashion_mnist", 128, [
    (28, 28, 1, 32, 1),
    (28, 28, 32, 64, 2),
    (14, 14, 64, 64, 2),
    (7, 7, 64, 64, 1),
]) + _decoder("fashion_mnist", 128, [
    (7, 7, 64, 64, 1),
    (7, 7, 64, 64, 2),
    (14, 14, 64, 32, 2),
])

CARTOON = _encoder("cartoon", 32, [
    (256, 256, 3, 32, 2),
    (128, 128, 32, 64, 2),
    (64, 64, 64, 64, 2),
    (32, 32, 64, 64, 2),
    (16, 16, 64, 64, 2),
]) + _decoder("cartoon", 32, [
    (8, 8, 64, 64, 2),
    (16, 16, 64, 64, 2),
    (32, 32, 64, 64, 2),
    (64, 64, 64, 32, 2),
])

MODELS = {"fashion_mnist": FASHION_MNIST, "cartoon": CARTOON}
ALL_BLOCKS = FASHION_MNIST + CARTOON
BLOCKS_BY_ID = {block.id: block for block in ALL_BLOCKS}

# Two small shapes, one conv and one transposed conv, for smoke runs (`--quick`).
QUICK_BLOCK_IDS = ("fashion_mnist/enc2", "cartoon/dec1")


def quick_blocks():
    return [BLOCKS_BY_ID[block_id] for block_id in QUICK_BLOCK_IDS]


def conv_macs(block):
    """Multiply-accumulates of the conv forward (every kernel tap, padding included)."""
    taps = KERNEL_SIZE * KERNEL_SIZE
    if block.transpose:
        # Each input pixel scatters a kh x kw x out patch.
        return math.prod(block.input_shape) * taps * block.out_channels
    return math.prod(block.output_shape) * taps * block.in_channels


def conv_flops(block):
    return 2 * conv_macs(block)


def output_elements(block):
    return math.prod(block.output_shape)


def flops(block, mode):
    """FLOPs of one call in ``mode`` (one of MODES)."""
    elements = output_elements(block)
    if mode == "infer_fwd":
        return conv_flops(block) + EPILOGUE_FLOPS_PER_ELEMENT["infer_fwd"] * elements
    if mode == "train_fwd":
        return conv_flops(block) + EPILOGUE_FLOPS_PER_ELEMENT["train_fwd"] * elements
    if mode == "train_fwdbwd":
        epilogue = EPILOGUE_FLOPS_PER_ELEMENT["train_fwd"] + EPILOGUE_FLOPS_PER_ELEMENT["bwd"]
        return 3 * conv_flops(block) + epilogue * elements
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _floats(shape):
    return math.prod(shape)


def forward_bytes(block):
    """Read x, W (and the BN vectors), write y."""
    bn_vectors = 4 * block.out_channels
    reads = _floats(block.input_shape) + _floats(block.kernel_shape) + bn_vectors
    writes = _floats(block.output_shape)
    return BYTES_PER_FLOAT32 * (reads + writes)


def backward_bytes(block):
    """Read x, y, dy, W (and gamma, beta, mean, var), write dx, dW (and dgamma, dbeta)."""
    x, y, w = _floats(block.input_shape), _floats(block.output_shape), _floats(block.kernel_shape)
    reads = x + 2 * y + w + 4 * block.out_channels
    writes = x + w + 2 * block.out_channels
    return BYTES_PER_FLOAT32 * (reads + writes)


def byte_floor(block, mode):
    """Least bytes moved by one call in ``mode``."""
    if mode in ("train_fwd", "infer_fwd"):
        return forward_bytes(block)
    if mode == "train_fwdbwd":
        return forward_bytes(block) + backward_bytes(block)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def floor_seconds(block, mode, peak_gflops, peak_gbytes_per_s):
    """Roofline floor for one call: compute-bound or memory-bound, whichever is slower."""
    compute_s = flops(block, mode) / (peak_gflops * 1e9)
    memory_s = byte_floor(block, mode) / (peak_gbytes_per_s * 1e9)
    return max(compute_s, memory_s)
