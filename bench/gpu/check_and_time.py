"""Checks the fused Conv + BN + LeakyReLU op against a float64 reference and times it.

On a GPU machine (PyTorch, no TensorFlow) it drives the CUDA kernels of the pybind11 module
that ``bench/gpu/run.sh`` builds. For every case and both modes (training, inference) it

* poisons every output with NaN, runs the fused forward and backward (FMA, then TF32),
* compares y, the batch moments, dx, dW, dgamma and dbeta with a float64 reference
  (PyTorch: conv2d / conv_transpose2d + batch_norm + leaky_relu and autograd; without
  PyTorch, tests/reference.py) as max|fused - ref| / max|ref|, against 1e-5 (FMA) and 1e-3
  (TF32),
* checks that a second run gives bit-identical results,

then times fused vs PyTorch eager (cuDNN, channels_last) vs torch.compile at the tutorial's
shapes (median of interleaved runs), each with its FLOP and byte floor.

``--dry-run`` runs the same flow on this machine's CPU kernels (pyae._native), with PyTorch
on the CPU as the reference and the baseline when it is installed, at small batches: what
the GPU session runs has run once before it gets a device.

The reference's LeakyReLU derivative uses the fused op's own sign of y: where float32 and
float64 disagree on the sign of a pre-activation within rounding of 0, both gradients are
right and differ by (1 - slope); the count of such elements is printed instead.
"""
import argparse
import collections
import json
import math
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

import reference  # noqa: E402  tests/reference.py: the float64 numpy reference
from native_module import load_native  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the numpy reference and fused-only timings
    torch = F = None

EPSILON = 1e-3
FMA_TOLERANCE = 1e-5
TF32_TOLERANCE = 1e-3
DRY_RUN_BATCH = 2

Case = collections.namedtuple(
    "Case",
    "name batch height width in_c out_c kernel stride padding transpose slope gamma_kind",
    defaults=(0.3, "normal"),
)


def block(name, batch, size, in_c, out_c, stride, transpose, kernel=3, padding="same"):
    return Case(name, batch, size, size, in_c, out_c, (kernel, kernel), (stride, stride), padding,
                transpose)


def fashion_cases():
    return [
        block("fmnist enc1 conv 28x28x1->32 s1", 128, 28, 1, 32, 1, False),
        block("fmnist enc2 conv 28x28x32->64 s2", 128, 28, 32, 64, 2, False),
        block("fmnist enc3 conv 14x14x64->64 s2", 128, 14, 64, 64, 2, False),
        block("fmnist enc4 conv 7x7x64->64 s1", 128, 7, 64, 64, 1, False),
        block("fmnist dec1 convT 7x7x64->64 s1", 128, 7, 64, 64, 1, True),
        block("fmnist dec2 convT 7x7x64->64 s2", 128, 7, 64, 64, 2, True),
        block("fmnist dec3 convT 14x14x64->32 s2", 128, 14, 64, 32, 2, True),
    ]


def cartoon_cases():
    cases = [block("cartoon enc1 conv 256x256x3->32 s2", 32, 256, 3, 32, 2, False)]
    cases += [block(f"cartoon enc conv {s}x{s}x{c}->64 s2", 32, s, c, 64, 2, False)
              for s, c in ((128, 32), (64, 64), (32, 64), (16, 64))]
    cases += [block(f"cartoon dec convT {s}x{s}x64->64 s2", 32, s, 64, 64, 2, True)
              for s in (8, 16, 32)]
    cases.append(block("cartoon dec convT 64x64x64->32 s2", 32, 64, 64, 32, 2, True))
    return cases


def tutorial_cases():
    return fashion_cases() + cartoon_cases()


def awkward_cases():
    return [
        Case("conv b1 9x7x1->3 k5 s2 valid", 1, 9, 7, 1, 3, (5, 5), (2, 2), "valid", False),
        Case("conv b1 9x7x3->1 k1 s1 same", 1, 9, 7, 3, 1, (1, 1), (1, 1), "same", False),
        Case("conv b3 13x11x3->5 k3 s2 same", 3, 13, 11, 3, 5, (3, 3), (2, 2), "same", False),
        Case("conv b2 8x8x3->4 k2 s3 valid", 2, 8, 8, 3, 4, (2, 2), (3, 3), "valid", False),
        Case("conv b2 10x9x5->6 k5x3 s2x1 same", 2, 10, 9, 5, 6, (5, 3), (2, 1), "same", False),
        Case("conv b2 6x6x70->130 k3 s1 same", 2, 6, 6, 70, 130, (3, 3), (1, 1), "same", False),
        Case("convT b1 5x4x1->3 k5 s2 same", 1, 5, 4, 1, 3, (5, 5), (2, 2), "same", True),
        Case("convT b3 5x5x3->1 k1 s2 valid", 3, 5, 5, 3, 1, (1, 1), (2, 2), "valid", True),
        Case("convT b2 6x7x3->5 k3 s2 valid", 2, 6, 7, 3, 5, (3, 3), (2, 2), "valid", True),
        Case("convT b1 4x3x5->3 k5 s1 valid", 1, 4, 3, 5, 3, (5, 5), (1, 1), "valid", True),
        Case("convT b2 3x5x4->6 k2 s3 same", 2, 3, 5, 4, 6, (2, 2), (3, 3), "same", True),
        Case("convT b2 5x5x70->130 k3 s2 same", 2, 5, 5, 70, 130, (3, 3), (2, 2), "same", True),
        # The backward must recompute z here instead of inverting y (see the op contract).
        Case("recompute: a gamma is 0", 2, 9, 9, 3, 4, (3, 3), (1, 1), "same", False,
             0.3, "zero"),
        Case("recompute: beta > 64 gamma", 2, 9, 9, 3, 4, (3, 3), (2, 2), "same", True,
             0.3, "big_beta"),
        Case("recompute: slope 0 (ReLU)", 2, 9, 9, 3, 4, (3, 3), (2, 2), "same", False, 0.0),
    ]


def at_batch(cases, batch):
    return [case._replace(batch=min(case.batch, batch)) for case in cases]


# ---------------------------------------------------------------------------------------------
# Geometry: this script's own (TensorFlow SAME/VALID, Keras Conv2DTranspose). A reference
# must not borrow the code it checks, so it is written here again rather than asked of the
# kernels' contract (ops/kernels/conv_geometry.h); every check compares the shapes too (a
# mismatch is an infinite error).


def conv_length(length, kernel, stride, padding):
    if padding == "same":
        return -(-length // stride)
    return max(-(-(length - kernel + 1) // stride), 0)


def transpose_length(length, kernel, stride, padding):
    if padding == "same":
        return length * stride
    return length * stride + max(kernel - stride, 0)


def tf_pads(big, small, kernel, stride, padding):
    """(before, after) padding of the forward conv from the big image to the small one."""
    if padding != "same":
        return 0, 0
    total = max((small - 1) * stride + kernel - big, 0)
    return total // 2, total - total // 2


def output_hw(case):
    length = transpose_length if case.transpose else conv_length
    return tuple(length(n, k, s, case.padding)
                 for n, k, s in zip((case.height, case.width), case.kernel, case.stride))


def weight_shape(case):
    kh, kw = case.kernel
    return (kh, kw, case.out_c, case.in_c) if case.transpose else (kh, kw, case.in_c, case.out_c)


# ---------------------------------------------------------------------------------------------
# Inputs and the float64 references


def make_inputs(case, seed):
    """Fresh random float32 inputs (numpy); never zeros."""
    rng = np.random.default_rng(seed)
    fan_in = case.kernel[0] * case.kernel[1] * case.in_c
    c = case.out_c
    sign = np.where(rng.uniform(size=c) < 0.2, -1.0, 1.0)
    inputs = {
        "x": rng.normal(size=(case.batch, case.height, case.width, case.in_c)),
        "w": rng.normal(size=weight_shape(case)) * math.sqrt(2.0 / fan_in),
        "gamma": rng.uniform(0.5, 1.5, size=c) * sign,
        "beta": rng.uniform(-0.5, 0.5, size=c),
        "mean": rng.normal(size=c) * 0.1,
        "var": rng.uniform(0.5, 1.5, size=c),
        "dy": rng.normal(size=(case.batch, *output_hw(case), c)),
    }
    if case.gamma_kind == "zero":
        inputs["gamma"][0] = 0.0
    elif case.gamma_kind == "big_beta":
        inputs["beta"][0] = 100.0 * abs(inputs["gamma"][0])
    # Rounded once to float32: both sides start from the very same numbers.
    return {name: np.ascontiguousarray(v, np.float32) for name, v in inputs.items()}


def torch_reference_conv(x_nchw, w_keras, case):
    """z (NCHW) with TensorFlow's padding, in whatever dtype the inputs have."""
    # (out, in, kh, kw) or, transposed, (in, out, kh, kw); contiguous, as some backward
    # kernels (float64 on the CPU) require of the weight.
    weight = w_keras.permute(3, 2, 0, 1).contiguous()
    out_h, out_w = output_hw(case)
    (sh, sw), (kh, kw) = case.stride, case.kernel
    if not case.transpose:
        top, bottom = tf_pads(case.height, out_h, kh, sh, case.padding)
        left, right = tf_pads(case.width, out_w, kw, sw, case.padding)
        padded = F.pad(x_nchw, (left, right, top, bottom))
        return F.conv2d(padded, weight, stride=(sh, sw))[:, :, :out_h, :out_w]
    top, _ = tf_pads(out_h, case.height, kh, sh, case.padding)
    left, _ = tf_pads(out_w, case.width, kw, sw, case.padding)
    full = F.conv_transpose2d(x_nchw, weight, stride=(sh, sw))
    missing_h = max(top + out_h - full.shape[2], 0)
    missing_w = max(left + out_w - full.shape[3], 0)
    full = F.pad(full, (0, missing_w, 0, missing_h))
    return full[:, :, top:top + out_h, left:left + out_w]


def torch_reference(case, inputs, training, positive_mask, device):
    """Float64 forward and autograd backward on `device`. positive_mask: fused y > 0 (NHWC)."""
    t = {n: torch.from_numpy(v).to(device=device, dtype=torch.float64) for n, v in inputs.items()}
    x, w = t["x"].requires_grad_(True), t["w"].requires_grad_(True)
    gamma, beta = t["gamma"].requires_grad_(True), t["beta"].requires_grad_(True)
    z = torch_reference_conv(x.permute(0, 3, 1, 2), w, case)
    stats = (None, None) if training else (t["mean"], t["var"])
    u = F.batch_norm(z, *stats, gamma, beta, training=training, eps=EPSILON)
    y = F.leaky_relu(u, case.slope)
    mask = torch.from_numpy(positive_mask).to(device).permute(0, 3, 1, 2)
    y_for_grad = u * torch.where(mask, 1.0, case.slope).double()
    dy = t["dy"].permute(0, 3, 1, 2)
    dx, dw, dgamma, dbeta = torch.autograd.grad(y_for_grad, (x, w, gamma, beta), dy)
    zd = z.detach()
    host = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
    y_nhwc = host(y.permute(0, 2, 3, 1))
    return {
        "y": y_nhwc, "mean": host(zd.mean(dim=(0, 2, 3))),
        "var": host(zd.var(dim=(0, 2, 3), unbiased=False)),
        "dx": host(dx), "dw": host(dw), "dgamma": host(dgamma), "dbeta": host(dbeta),
        "sign_flips": int(((y_nhwc > 0) != positive_mask).sum()),
    }


def numpy_reference(case, inputs, training, positive_mask):
    """tests/reference.py (float64 numpy): its own sign of the pre-activation."""
    attrs = dict(strides=case.stride, padding=case.padding, epsilon=EPSILON,
                 negative_slope=case.slope, training=training, transpose=case.transpose)
    args = (inputs["x"], inputs["w"], inputs["gamma"], inputs["beta"], inputs["mean"],
            inputs["var"])
    y, mean, var, _ = reference.forward(*args, **attrs)
    dx, dw, dgamma, dbeta = reference.backward(inputs["dy"], *args, **attrs)
    return {"y": y, "mean": mean, "var": var, "dx": dx, "dw": dw, "dgamma": dgamma,
            "dbeta": dbeta, "sign_flips": int(((y > 0) != positive_mask).sum())}


# ---------------------------------------------------------------------------------------------
# Where the fused op runs: the CUDA entry points on PyTorch tensors (on the GPU; in a dry run
# on the CPU, served by the CPU kernels through tests/cuda_stand_in.py), or, without PyTorch,
# the CPU entry points on numpy arrays.


class TorchBackend:
    def __init__(self, native, device):
        self.native, self.torch_device = native, device
        self.name = device
        self.on_gpu = device == "cuda"
        self.tf32_modes = (False, True) if self.on_gpu else (False,)

    def describe(self):
        if self.on_gpu:
            return (f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
                    f"cuda {torch.version.cuda}  native: {self.native.cuda_device_info()}")
        return (f"device: CPU (dry run: the CPU kernels behind the CUDA entry points' "
                f"signatures)  torch {torch.__version__}  native: {self.native.build_info()}")

    def to_device(self, inputs):
        return {n: torch.from_numpy(v).to(self.torch_device) for n, v in inputs.items()}

    def poisoned(self, shape):
        return torch.full(tuple(shape), float("nan"), device=self.torch_device,
                          dtype=torch.float32)

    def stream(self):
        return torch.cuda.current_stream().cuda_stream if self.on_gpu else 0

    def forward(self, case, d, training, tf32, outputs=None):
        c = case.out_c
        y, mean, var = outputs or (self.poisoned((case.batch, *output_hw(case), c)),
                                   self.poisoned((c,)), self.poisoned((c,)))
        self.native.conv_bn_lrelu_forward_cuda(
            d["x"], d["w"], d["gamma"], d["beta"], d["mean"], d["var"], y,
            mean if training else None, var if training else None, list(case.stride),
            case.padding.upper(), EPSILON, case.slope, training, case.transpose, tf32,
            self.stream())
        return y, (mean if training else d["mean"]), (var if training else d["var"])

    def backward(self, case, d, y, mean, var, training, tf32, outputs=None):
        dx, dw, dgamma, dbeta = outputs or (
            self.poisoned(d["x"].shape), self.poisoned(d["w"].shape),
            self.poisoned((case.out_c,)), self.poisoned((case.out_c,)))
        self.native.conv_bn_lrelu_backward_cuda(
            d["dy"], d["x"], d["w"], d["gamma"], d["beta"], y, mean, var, dx, dw, dgamma, dbeta,
            list(case.stride), case.padding.upper(), EPSILON, case.slope, training,
            case.transpose, tf32, self.stream())
        return dx, dw, dgamma, dbeta

    def output_buffers(self, case, d):
        """Preallocated (forward, backward) outputs for the timed calls."""
        empty = lambda *shape: torch.empty(shape, device=self.torch_device)  # noqa: E731
        c = case.out_c
        return ((empty(case.batch, *output_hw(case), c), empty(c), empty(c)),
                (torch.empty_like(d["x"]), torch.empty_like(d["w"]), empty(c), empty(c)))

    def to_host(self, tensors):
        self.synchronize()
        return {n: t.cpu().numpy() for n, t in tensors.items()}

    def synchronize(self):
        if self.on_gpu:
            torch.cuda.synchronize()

    def time_ms(self, fn, warmup, repeats):
        """`repeats` times of fn after `warmup` calls: CUDA events on the GPU."""
        if not self.on_gpu:
            return wall_clock_ms(fn, warmup, repeats)
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times


def wall_clock_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


class NumpyBackend:
    """The dry run without PyTorch: the CPU entry points, which poison their own outputs."""
    name = "cpu"
    torch_device = "cpu"
    tf32_modes = (False,)

    def __init__(self, native):
        self.native = native

    def describe(self):
        return ("device: CPU (dry run, no PyTorch: the numpy reference)  native: "
                f"{self.native.build_info()}")

    @staticmethod
    def to_device(inputs):
        return inputs

    def forward(self, case, d, training, tf32, outputs=None):
        del tf32, outputs  # the CPU kernels allocate (and poison) their outputs
        return self.native.conv_bn_lrelu_forward(
            d["x"], d["w"], d["gamma"], d["beta"], d["mean"], d["var"], strides=case.stride,
            padding=case.padding, epsilon=EPSILON, negative_slope=case.slope,
            training=training, transpose=case.transpose)

    def backward(self, case, d, y, mean, var, training, tf32, outputs=None):
        del tf32, outputs
        return self.native.conv_bn_lrelu_backward(
            d["dy"], d["x"], d["w"], d["gamma"], d["beta"], y, mean, var, strides=case.stride,
            padding=case.padding, epsilon=EPSILON, negative_slope=case.slope,
            training=training, transpose=case.transpose)

    @staticmethod
    def output_buffers(case, d):
        del case, d
        return None, None

    @staticmethod
    def to_host(arrays):
        return {n: np.asarray(a) for n, a in arrays.items()}

    @staticmethod
    def synchronize():
        pass

    @staticmethod
    def time_ms(fn, warmup, repeats):
        return wall_clock_ms(fn, warmup, repeats)


# ---------------------------------------------------------------------------------------------
# Correctness


def run_fused(backend, case, d, training, tf32):
    y, mean, var = backend.forward(case, d, training, tf32)
    dx, dw, dgamma, dbeta = backend.backward(case, d, y, mean, var, training, tf32)
    return backend.to_host({"y": y, "mean": mean, "var": var, "dx": dx, "dw": dw,
                            "dgamma": dgamma, "dbeta": dbeta})


def relative_error(fused, ref):
    fused, ref = np.asarray(fused, np.float64), np.asarray(ref, np.float64)
    if fused.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    if not np.all(np.isfinite(fused)):  # poison left: an element was never written
        return math.inf
    scale = float(np.abs(ref).max())
    err = float(np.abs(fused - ref).max())
    return err / scale if scale > 0 else err


def reference_of(backend, case, inputs, training, positive_mask):
    if torch is not None:
        return torch_reference(case, inputs, training, positive_mask, backend.torch_device)
    return numpy_reference(case, inputs, training, positive_mask)


def check_case(backend, case, seed):
    """Result lines (one per mode) and whether every mode passed."""
    inputs = make_inputs(case, seed)
    d = backend.to_device(inputs)
    lines, passed = [], True
    for training in (True, False):
        for tf32 in backend.tf32_modes:
            fused = run_fused(backend, case, d, training, tf32)
            again = run_fused(backend, case, d, training, tf32)
            ref = reference_of(backend, case, inputs, training, fused["y"] > 0)
            names = ["y", "dx", "dw", "dgamma", "dbeta"] + (["mean", "var"] if training else [])
            tolerance = TF32_TOLERANCE if tf32 else FMA_TOLERANCE
            errors = {n: relative_error(fused[n], ref[n]) for n in names}
            deterministic = all(np.array_equal(fused[n], again[n], equal_nan=True)
                                for n in names)
            ok = all(e < tolerance for e in errors.values()) and deterministic  # NaN fails
            passed &= ok
            worst = max(errors, key=lambda n: errors[n] if errors[n] == errors[n] else math.inf)
            lines.append(
                f"{'PASS' if ok else 'FAIL'}  {case.name:<40} "
                f"{'train' if training else 'infer'} {'tf32' if tf32 else 'fma '} "
                f"worst {worst}={errors[worst]:.2e} (tol {tolerance:.0e}) "
                f"{'deterministic' if deterministic else 'NOT DETERMINISTIC'} "
                f"sign flips {ref['sign_flips']}"
                + ("" if ok else "  " + " ".join(f"{n}={e:.2e}" for n, e in errors.items())))
    return lines, passed


# ---------------------------------------------------------------------------------------------
# Floors


def measure_peaks(backend, quick):
    """Streaming bandwidth (bytes/s) and float32 / TF32 matmul throughput (FLOP/s)."""
    copy_n, n, reps = ((1 << 22, 512, 3) if quick else (1 << 28, 8192, 10))
    if torch is None:
        source = np.ones(copy_n, np.float32)
        target = np.empty_like(source)
        copy_ms = statistics.median(backend.time_ms(lambda: np.copyto(target, source), 1, reps))
        a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
        matmul_ms = statistics.median(backend.time_ms(lambda: a @ a, 1, reps))
        return 2 * copy_n * 4 / (copy_ms * 1e-3), {"fp32": 2 * n**3 / (matmul_ms * 1e-3)}
    device = backend.torch_device
    source = torch.randn(copy_n, device=device)
    target = torch.empty_like(source)
    copy_ms = statistics.median(backend.time_ms(lambda: target.copy_(source), 2, reps))
    bandwidth = 2 * copy_n * 4 / (copy_ms * 1e-3)
    del source, target
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    peaks = {}
    for tf32 in backend.tf32_modes:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ms = statistics.median(backend.time_ms(lambda: a @ b, 2, max(reps // 2, 1)))
        peaks["tf32" if tf32 else "fp32"] = 2 * n**3 / (ms * 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = saved
    return bandwidth, peaks


def conv_flops(case):
    """Multiply-adds x 2 of one convolution (forward); dx and dW cost the same each."""
    out_h, out_w = output_hw(case)
    kh, kw = case.kernel
    small_pixels = case.batch * (case.height * case.width if case.transpose else out_h * out_w)
    return 2.0 * small_pixels * kh * kw * case.in_c * case.out_c


def byte_floors(case):
    """Bytes each call must move at least: (inference forward, training forward + backward)."""
    out_h, out_w = output_hw(case)
    x = case.batch * case.height * case.width * case.in_c * 4
    y = case.batch * out_h * out_w * case.out_c * 4
    w = case.kernel[0] * case.kernel[1] * case.in_c * case.out_c * 4
    inference = x + w + y
    # forward: x, w in, y out; backward: x, w, y, dy in, dx, dw out
    training = (x + w + y) + (x + w + 2 * y) + (x + w)
    return inference, training


def floors_ms(case, peaks, tf32):
    bandwidth, flop_peaks = peaks
    flop_peak = flop_peaks["tf32" if tf32 else "fp32"]
    flops = conv_flops(case)
    infer_bytes, train_bytes = byte_floors(case)
    return {"train": max(3 * flops / flop_peak, train_bytes / bandwidth) * 1e3,
            "infer": max(flops / flop_peak, infer_bytes / bandwidth) * 1e3}


# ---------------------------------------------------------------------------------------------
# Timing


def torch_block(case, training):
    """Float32 PyTorch block on channels-last tensors, symmetric padding (same cost as TF's)."""
    (kh, kw), stride = case.kernel, case.stride
    padding = (kh // 2, kw // 2) if case.padding == "same" else (0, 0)

    def run(x, w, gamma, beta, mean, var):
        if case.transpose:
            extra = tuple(s - 1 if case.padding == "same" else 0 for s in stride)
            z = F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=extra)
        else:
            z = F.conv2d(x, w, stride=stride, padding=padding)
        stats = (None, None) if training else (mean, var)
        u = F.batch_norm(z, *stats, gamma, beta, training=training, eps=EPSILON)
        return F.leaky_relu(u, case.slope)

    return run


def fused_steps(backend, case, d, tf32):
    """(training forward + backward, inference forward) of the fused op, outputs reused."""
    forward_out, backward_out = backend.output_buffers(case, d)

    def train():
        y, mean, var = backend.forward(case, d, True, tf32, forward_out)
        backend.backward(case, d, y, mean, var, True, tf32, backward_out)

    def infer():
        backend.forward(case, d, False, tf32, forward_out)

    return train, infer


def torch_steps(case, inputs, device, compiled):
    """(training step, inference step) of the PyTorch block, eager or torch.compile'd."""
    t = {n: torch.from_numpy(v).to(device) for n, v in inputs.items()}
    x = t["x"].permute(0, 3, 1, 2).requires_grad_(True)  # NCHW view, channels-last memory
    w = t["w"].permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    w.requires_grad_(True)
    gamma, beta = t["gamma"].clone().requires_grad_(True), t["beta"].clone().requires_grad_(True)
    dy = t["dy"].permute(0, 3, 1, 2)
    args = (x, w, gamma, beta, t["mean"], t["var"])
    train_fn, infer_fn = torch_block(case, True), torch_block(case, False)
    if compiled:
        train_fn, infer_fn = torch.compile(train_fn), torch.compile(infer_fn)

    def train():
        torch.autograd.grad(train_fn(*args), (x, w, gamma, beta), dy)

    def infer():
        with torch.no_grad():
            infer_fn(*args)

    return train, infer


def interleaved_medians(backend, steps, warmup, rounds, repeats):
    """Median ms of each step, timed in `rounds` interleaved rounds of `repeats` calls."""
    for step in steps.values():
        backend.time_ms(step, warmup, 0)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += backend.time_ms(step, 0, repeats)
    return {name: statistics.median(t) for name, t in times.items()}


def time_case(backend, case, tf32, use_compile, settings):
    inputs = make_inputs(case, seed=1)
    d = backend.to_device(inputs)
    fused_train, fused_infer = fused_steps(backend, case, d, tf32)
    steps = {"fused train": fused_train, "fused infer": fused_infer}
    if torch is not None:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        eager_train, eager_infer = torch_steps(case, inputs, backend.torch_device, False)
        steps.update({"eager train": eager_train, "eager infer": eager_infer})
        if use_compile:
            compiled_train, compiled_infer = torch_steps(case, inputs, backend.torch_device,
                                                         True)
            steps.update({"compile train": compiled_train, "compile infer": compiled_infer})
    try:
        return interleaved_medians(backend, steps, **settings)
    finally:
        if torch is not None:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def timing_table(backend, cases, tf32, use_compile, settings, quick, report):
    """Times every case; torch.compile where use_compile(index of the case)."""
    peaks = measure_peaks(backend, quick)
    bandwidth, flop_peaks = peaks
    report(f"\nmeasured peaks: copy {bandwidth / 1e9:.0f} GB/s, "
           + ", ".join(f"{k} matmul {v / 1e12:.2f} TFLOP/s" for k, v in flop_peaks.items())
           + f"; timing with {'TF32' if tf32 else 'FMA float32'} in every implementation")
    clock = "CUDA events" if backend.name == "cuda" else "wall clock"
    report(f"times in ms (median of {settings['rounds']} interleaved rounds of "
           f"{settings['repeats']} calls, {clock}); "
           "floor = max(FLOP / peak, bytes / bandwidth); train = forward + backward, "
           "infer = inference forward; x = eager / fused, c = compile / fused")
    header = (f"{'shape':<40} {'GFLOP':>6} {'MB trn':>7} | {'floor':>7} {'fused':>7} "
              f"{'eager':>7} {'compile':>7} {'x':>5} {'c':>5} | {'floor':>7} {'fused':>7} "
              f"{'eager':>7} {'compile':>7} {'x':>5} {'c':>5}")
    report(header)
    report("-" * len(header))
    rows = []
    for index, case in enumerate(cases):
        t = time_case(backend, case, tf32, use_compile(index), settings)
        floors = floors_ms(case, peaks, tf32)
        _, train_bytes = byte_floors(case)
        cells = []
        for mode in ("train", "infer"):
            fused = t[f"fused {mode}"]
            eager, compiled = t.get(f"eager {mode}"), t.get(f"compile {mode}")
            ratio = lambda other: f"{other / fused:5.2f}" if other else f"{'-':>5}"  # noqa: E731
            value = lambda v: f"{v:7.3f}" if v else f"{'-':>7}"  # noqa: E731
            cells.append(f"{floors[mode]:7.3f} {fused:7.3f} {value(eager)} {value(compiled)} "
                         f"{ratio(eager)} {ratio(compiled)}")
        report(f"{case.name:<40} {3 * conv_flops(case) / 1e9:6.2f} {train_bytes / 1e6:7.1f} | "
               + " | ".join(cells))
        rows.append({"case": case._asdict(), "floors_ms": floors, "times_ms": t,
                     "gflop_train": 3 * conv_flops(case) / 1e9, "mb_train": train_bytes / 1e6})
    report_speedups(rows, report)
    return rows


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def report_speedups(rows, report):
    """Per model: geometric mean and minimum of eager/fused (train) and compile/fused (infer)."""
    for model in ("fmnist", "cartoon"):
        model_rows = [r for r in rows if r["case"]["name"].startswith(model)]
        for label, other, mode in (("train vs eager", "eager", "train"),
                                   ("infer vs compile", "compile", "infer")):
            ratios = [r["times_ms"][f"{other} {mode}"] / r["times_ms"][f"fused {mode}"]
                      for r in model_rows if f"{other} {mode}" in r["times_ms"]]
            if ratios:
                report(f"{model:<8} {label:<17} geomean {geometric_mean(ratios):5.2f}x  "
                       f"min {min(ratios):5.2f}x  over {len(ratios)} shapes")


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-dir", help="folder holding the built _native*.so "
                        "(default: $PYAE_NATIVE_DIR, else beside the pyae package)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the whole flow on the CPU kernels, small batches, few repeats")
    parser.add_argument("--quick", action="store_true",
                        help="a few cases and shapes only (the CI test of the dry run)")
    parser.add_argument("--sanitize-case", action="store_true",
                        help="only check the awkward cases, no timing")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    parser.add_argument("--no-time", action="store_true", help="skip the timings")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile timings")
    parser.add_argument("--compile-budget", type=float, default=240.0,
                        help="seconds after the timing starts during which shapes still get "
                        "torch.compile timings (compiling costs seconds a shape)")
    parser.add_argument("--tf32-timing", action="store_true",
                        help="time with TF32 everywhere instead of FMA float32")
    parser.add_argument("--out", help="folder for check.txt, timing.txt and results.json")
    return parser.parse_args(argv)


def select_cases(args):
    check = awkward_cases() if args.sanitize_case else tutorial_cases() + awkward_cases()
    timed = tutorial_cases()
    if args.dry_run:
        check, timed = at_batch(check, DRY_RUN_BATCH), at_batch(timed, DRY_RUN_BATCH)
    if args.quick:  # a conv and a convT of each model, an awkward VALID convT, a recompute
        names = ("fmnist enc2", "fmnist dec2", "cartoon enc1", "cartoon dec convT 8x8",
                 "convT b2 6x7", "recompute: beta")
        check = [c for c in check if c.name.startswith(names)]
        timed = [c for c in timed if c.name.startswith(names[:2])]
    return check, timed


def main(argv=None):
    args = parse_args(argv)
    native = load_native(args.native_dir)
    if native is None:
        print("pyae._native is not built (no _native*.so found)", file=sys.stderr)
        return 2
    if args.dry_run and torch is None:
        backend = NumpyBackend(native)
    elif args.dry_run:
        from cuda_stand_in import CpuStandIn  # pylint: disable=import-outside-toplevel

        backend = TorchBackend(CpuStandIn(native), "cpu")
    else:
        if torch is None or not torch.cuda.is_available():
            print("no CUDA device visible to PyTorch (use --dry-run on a CPU machine)",
                  file=sys.stderr)
            return 2
        if not hasattr(native, "conv_bn_lrelu_forward_cuda"):
            print("pyae._native was built without the CUDA kernels", file=sys.stderr)
            return 2
        backend = TorchBackend(native, "cuda")
    out_files = {}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out_files = {k: open(os.path.join(args.out, k), "w", encoding="utf-8")
                     for k in ("check.txt", "timing.txt")}

    def reporter(file_name):
        def report(line):
            print(line, flush=True)
            if file_name in out_files:
                out_files[file_name].write(line + "\n")
                out_files[file_name].flush()
        return report

    check_cases, timed_cases = select_cases(args)
    results = {"describe": backend.describe(), "dry_run": args.dry_run}
    reporter("check.txt")(results["describe"])
    all_passed = True
    if not args.no_check:
        report = reporter("check.txt")
        for seed, case in enumerate(check_cases):
            lines, passed = check_case(backend, case, seed)
            all_passed &= passed
            for line in lines:
                report(line)
        report(f"\ncorrectness: {'ALL PASSED' if all_passed else 'FAILURES (see FAIL lines)'}")
    results["all_passed"] = all_passed
    if not args.no_time and not args.sanitize_case:
        settings = (dict(warmup=1, rounds=2, repeats=2) if args.dry_run
                    else dict(warmup=10, rounds=5, repeats=20))
        rows = timing_table(backend, timed_cases, args.tf32_timing, compile_rule(args),
                            settings, args.dry_run or args.quick, reporter("timing.txt"))
        results["timing"] = rows
    if args.out:
        for handle in out_files.values():
            handle.close()
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1, default=str)
    return 0 if all_passed else 1


def compile_rule(args):
    """Which timed shapes (by index) get torch.compile timings: on the GPU those that start
    within --compile-budget seconds; in a dry run the first (its code path runs, once)."""
    if args.no_compile or torch is None:
        return lambda index: False
    if args.dry_run:
        return lambda index: index == 0
    deadline = time.monotonic() + args.compile_budget
    return lambda index: time.monotonic() < deadline


if __name__ == "__main__":
    sys.exit(main())
