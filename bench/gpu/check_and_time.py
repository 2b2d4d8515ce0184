"""Checks the CUDA fused Conv + BN + LeakyReLU op against PyTorch and times it.

Runs on a GPU machine with PyTorch but no TensorFlow, against the pybind11 module built by
``bench/gpu/run.sh``. For every case and both modes (training, inference) it

* poisons every output with NaN, runs the fused forward and backward (FMA, then TF32),
* compares y, the batch moments, dx, dW, dgamma and dbeta with a float64 PyTorch reference
  (conv2d / conv_transpose2d + batch_norm + leaky_relu, autograd), as
  max|fused - ref| / max|ref|, against 1e-5 (FMA) and 1e-3 (TF32),
* checks that a second run gives bit-identical results,

then times fused vs PyTorch eager (cuDNN) vs torch.compile at the tutorial's shapes with CUDA
events (warm-up, median), printing each shape's FLOP and byte floor beside the time.

The reference's LeakyReLU derivative uses the fused op's own sign of y: where float32 and
float64 disagree on the sign of a pre-activation within rounding of 0, the two gradients are
both right and differ by (1 - slope); the count of such elements is printed instead.
"""
import argparse
import collections
import importlib
import math
import statistics
import sys

import torch
import torch.nn.functional as F

EPSILON = 1e-3
FMA_TOLERANCE = 1e-5
TF32_TOLERANCE = 1e-3

Case = collections.namedtuple(
    "Case",
    "name batch height width in_c out_c kernel stride padding transpose slope gamma_kind",
    defaults=(0.3, "normal"),
)


def block(name, batch, size, in_c, out_c, stride, transpose, kernel=3, padding="same"):
    return Case(name, batch, size, size, in_c, out_c, kernel, (stride, stride), padding, transpose)


def tutorial_cases():
    fashion = [
        block("fmnist enc1 conv 28x28x1->32 s1", 128, 28, 1, 32, 1, False),
        block("fmnist enc2 conv 28x28x32->64 s2", 128, 28, 32, 64, 2, False),
        block("fmnist enc3 conv 14x14x64->64 s2", 128, 14, 64, 64, 2, False),
        block("fmnist enc4 conv 7x7x64->64 s1", 128, 7, 64, 64, 1, False),
        block("fmnist dec1 convT 7x7x64->64 s1", 128, 7, 64, 64, 1, True),
        block("fmnist dec2 convT 7x7x64->64 s2", 128, 7, 64, 64, 2, True),
        block("fmnist dec3 convT 14x14x64->32 s2", 128, 14, 64, 32, 2, True),
    ]
    cartoon = [block("cartoon enc1 conv 256x256x3->32 s2", 32, 256, 3, 32, 2, False)]
    cartoon += [
        block(f"cartoon enc conv {s}x{s}x{c}->64 s2", 32, s, c, 64, 2, False)
        for s, c in ((128, 32), (64, 64), (32, 64), (16, 64))
    ]
    cartoon += [
        block(f"cartoon dec convT {s}x{s}x64->64 s2", 32, s, 64, 64, 2, True) for s in (8, 16, 32)
    ]
    cartoon.append(block("cartoon dec convT 64x64x64->32 s2", 32, 64, 64, 32, 2, True))
    return fashion + cartoon


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


def sanitize_cases():
    return [
        Case("sanitize conv b2 9x9x3->5 k3 s2 same", 2, 9, 9, 3, 5, (3, 3), (2, 2), "same", False),
        Case("sanitize convT b2 5x5x3->5 k3 s2 same", 2, 5, 5, 3, 5, (3, 3), (2, 2), "same", True),
        Case("sanitize recompute", 2, 5, 5, 3, 5, (3, 3), (1, 1), "valid", True, 0.3, "zero"),
    ]


# ---------------------------------------------------------------------------------------------
# Geometry (TensorFlow SAME/VALID, Keras Conv2DTranspose), computed here independently of C++.


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
    return tuple(
        length(n, k, s, case.padding)
        for n, k, s in zip((case.height, case.width), case.kernel, case.stride)
    )


def weight_shape(case):
    kh, kw = case.kernel
    if case.transpose:
        return (kh, kw, case.out_c, case.in_c)
    return (kh, kw, case.in_c, case.out_c)


def reference_conv(x_nchw, w_keras, case):
    """z (NCHW) with TensorFlow's padding, in whatever dtype the inputs have."""
    weight = w_keras.permute(3, 2, 0, 1)  # (out, in, kh, kw) or, transposed, (in, out, kh, kw)
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


# ---------------------------------------------------------------------------------------------
# Inputs, reference, fused calls


def make_inputs(case, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)

    def normal(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, device="cuda", dtype=torch.float64) * scale

    def uniform(n, low, high):
        return low + (high - low) * torch.rand(n, generator=generator, device="cuda",
                                               dtype=torch.float64)

    fan_in = case.kernel[0] * case.kernel[1] * case.in_c
    c = case.out_c
    sign = torch.where(uniform(c, 0, 1) < 0.2, -1.0, 1.0)
    inputs = {
        "x": normal(case.batch, case.height, case.width, case.in_c),
        "w": normal(*weight_shape(case), scale=math.sqrt(2.0 / fan_in)),
        "gamma": uniform(c, 0.5, 1.5) * sign,
        "beta": uniform(c, -0.5, 0.5),
        "mean": normal(c, scale=0.1),
        "var": uniform(c, 0.5, 1.5),
        "dy": normal(case.batch, *output_hw(case), c),
    }
    if case.gamma_kind == "zero":
        inputs["gamma"][0] = 0.0
    elif case.gamma_kind == "big_beta":
        inputs["beta"][0] = 100.0 * abs(float(inputs["gamma"][0]))
    # Round once to float32: both sides then start from the very same numbers.
    return {name: t.float().contiguous() for name, t in inputs.items()}


def reference(case, inputs, training, positive_mask):
    """Float64 forward and autograd backward. positive_mask: fused y > 0 (NHWC)."""
    x = inputs["x"].double().requires_grad_(True)
    w = inputs["w"].double().requires_grad_(True)
    gamma = inputs["gamma"].double().requires_grad_(True)
    beta = inputs["beta"].double().requires_grad_(True)
    z = reference_conv(x.permute(0, 3, 1, 2), w, case)
    if training:
        u = F.batch_norm(z, None, None, gamma, beta, training=True, eps=EPSILON)
    else:
        u = F.batch_norm(z, inputs["mean"].double(), inputs["var"].double(), gamma, beta,
                         training=False, eps=EPSILON)
    y = F.leaky_relu(u, case.slope)
    slope_factor = torch.where(positive_mask.permute(0, 3, 1, 2), 1.0, case.slope)
    y_for_grad = u * slope_factor.double()
    dy = inputs["dy"].double().permute(0, 3, 1, 2)
    dx, dw, dgamma, dbeta = torch.autograd.grad(y_for_grad, (x, w, gamma, beta), dy)
    zd = z.detach()
    return {
        "y": y.detach().permute(0, 2, 3, 1),
        "mean": zd.mean(dim=(0, 2, 3)),
        "var": zd.var(dim=(0, 2, 3), unbiased=False),
        "dx": dx, "dw": dw, "dgamma": dgamma, "dbeta": dbeta,
        "sign_flips": int(((y.detach().permute(0, 2, 3, 1) > 0) != positive_mask).sum()),
    }


def poisoned(shape):
    return torch.full(shape, float("nan"), device="cuda", dtype=torch.float32)


def fused_forward(native, case, inputs, training, tf32):
    c = case.out_c
    y = poisoned((case.batch, *output_hw(case), c))
    mean, var = poisoned((c,)), poisoned((c,))
    native.conv_bn_lrelu_forward_cuda(
        inputs["x"], inputs["w"], inputs["gamma"], inputs["beta"], inputs["mean"],
        inputs["var"], y, mean if training else None, var if training else None,
        list(case.stride), case.padding.upper(), EPSILON, case.slope, training,
        case.transpose, tf32, torch.cuda.current_stream().cuda_stream)
    return y, mean, var


def fused_backward(native, case, inputs, y, mean, var, training, tf32):
    grads = {
        "dx": poisoned(inputs["x"].shape), "dw": poisoned(inputs["w"].shape),
        "dgamma": poisoned((case.out_c,)), "dbeta": poisoned((case.out_c,)),
    }
    native.conv_bn_lrelu_backward_cuda(
        inputs["dy"], inputs["x"], inputs["w"], inputs["gamma"], inputs["beta"], y, mean, var,
        grads["dx"], grads["dw"], grads["dgamma"], grads["dbeta"], list(case.stride),
        case.padding.upper(), EPSILON, case.slope, training, case.transpose, tf32,
        torch.cuda.current_stream().cuda_stream)
    return grads


def run_fused(native, case, inputs, training, tf32):
    y, mean, var = fused_forward(native, case, inputs, training, tf32)
    stat_mean = mean if training else inputs["mean"]
    stat_var = var if training else inputs["var"]
    grads = fused_backward(native, case, inputs, y, stat_mean, stat_var, training, tf32)
    torch.cuda.synchronize()
    return {"y": y, "mean": mean, "var": var, **grads}


def relative_error(fused, ref):
    ref = ref.double()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = float((fused.double() - ref).abs().max()) if ref.numel() else 0.0
    return err / scale if scale > 0 else err


def check_case(native, case, seed):
    """Returns a list of result lines and whether everything passed."""
    inputs = make_inputs(case, seed)
    lines, passed = [], True
    for training in (True, False):
        for tf32 in (False, True):
            fused = run_fused(native, case, inputs, training, tf32)
            again = run_fused(native, case, inputs, training, tf32)
            ref = reference(case, inputs, training, fused["y"] > 0)
            names = ["y", "dx", "dw", "dgamma", "dbeta"] + (["mean", "var"] if training else [])
            tolerance = TF32_TOLERANCE if tf32 else FMA_TOLERANCE
            errors = {n: relative_error(fused[n], ref[n]) for n in names}
            deterministic = all(torch.equal(fused[n], again[n]) for n in names)
            ok = all(e < tolerance for e in errors.values()) and deterministic  # NaN fails
            passed &= ok
            worst = max(errors, key=lambda n: errors[n] if errors[n] == errors[n] else math.inf)
            lines.append(
                f"{'PASS' if ok else 'FAIL'}  {case.name:<40} "
                f"{'train' if training else 'infer'} {'tf32' if tf32 else 'fma '} "
                f"worst {worst}={errors[worst]:.2e} (tol {tolerance:.0e}) "
                f"{'deterministic' if deterministic else 'NOT DETERMINISTIC'} "
                f"sign flips {ref['sign_flips']}"
                + ("" if ok else "  " + " ".join(f"{n}={e:.2e}" for n, e in errors.items()))
            )
    return lines, passed


# ---------------------------------------------------------------------------------------------
# Timing


def cuda_time_ms(fn, warmup=10, repeats=50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_peaks():
    """Streaming bandwidth (bytes/s) and float32 FMA / TF32 matmul throughput (FLOP/s)."""
    buffer = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    copy = torch.empty_like(buffer)
    copy_ms = cuda_time_ms(lambda: copy.copy_(buffer), warmup=3, repeats=10)
    bandwidth = 2 * buffer.numel() * 4 / (copy_ms * 1e-3)
    del buffer, copy
    n = 8192
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    saved = torch.backends.cuda.matmul.allow_tf32
    peaks = {}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ms = cuda_time_ms(lambda: a @ b, warmup=2, repeats=5)
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
        if training:
            u = F.batch_norm(z, None, None, gamma, beta, training=True, eps=EPSILON)
        else:
            u = F.batch_norm(z, mean, var, gamma, beta, training=False, eps=EPSILON)
        return F.leaky_relu(u, case.slope)

    return run


def timing_row(native, case, peaks, use_compile, tf32):
    inputs = make_inputs(case, seed=1)
    stream = torch.cuda.current_stream().cuda_stream
    c = case.out_c
    y, mean, var = (torch.empty((case.batch, *output_hw(case), c), device="cuda"),
                    torch.empty(c, device="cuda"), torch.empty(c, device="cuda"))
    dx, dw = torch.empty_like(inputs["x"]), torch.empty_like(inputs["w"])
    dgamma, dbeta = torch.empty(c, device="cuda"), torch.empty(c, device="cuda")
    args = (list(case.stride), case.padding.upper(), EPSILON, case.slope)

    def fused_train():
        native.conv_bn_lrelu_forward_cuda(inputs["x"], inputs["w"], inputs["gamma"],
                                          inputs["beta"], None, None, y, mean, var, *args, True,
                                          case.transpose, tf32, stream)
        native.conv_bn_lrelu_backward_cuda(inputs["dy"], inputs["x"], inputs["w"],
                                           inputs["gamma"], inputs["beta"], y, mean, var, dx, dw,
                                           dgamma, dbeta, *args, True, case.transpose, tf32,
                                           stream)

    def fused_infer():
        native.conv_bn_lrelu_forward_cuda(inputs["x"], inputs["w"], inputs["gamma"],
                                          inputs["beta"], inputs["mean"], inputs["var"], y, None,
                                          None, *args, False, case.transpose, tf32, stream)

    x_t = inputs["x"].permute(0, 3, 1, 2).requires_grad_(True)  # NCHW view, channels-last memory
    w_t = inputs["w"].permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    w_t.requires_grad_(True)
    gamma = inputs["gamma"].clone().requires_grad_(True)
    beta = inputs["beta"].clone().requires_grad_(True)
    dy_t = inputs["dy"].permute(0, 3, 1, 2)
    block_args = (x_t, w_t, gamma, beta, inputs["mean"], inputs["var"])

    def train_step(fn):
        def step():
            out = fn(*block_args)
            torch.autograd.grad(out, (x_t, w_t, gamma, beta), dy_t)
        return step

    def infer_step(fn):
        def step():
            with torch.no_grad():
                fn(*block_args)
        return step

    eager_train, eager_infer = torch_block(case, True), torch_block(case, False)
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    times = {
        "fused train": cuda_time_ms(fused_train),
        "eager train": cuda_time_ms(train_step(eager_train)),
        "fused infer": cuda_time_ms(fused_infer),
        "eager infer": cuda_time_ms(infer_step(eager_infer)),
    }
    if use_compile:
        times["compile train"] = cuda_time_ms(train_step(torch.compile(eager_train)))
        times["compile infer"] = cuda_time_ms(infer_step(torch.compile(eager_infer)))
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    bandwidth, flop_peaks = peaks
    flop_peak = flop_peaks["tf32" if tf32 else "fp32"]
    flops = conv_flops(case)
    infer_bytes, train_bytes = byte_floors(case)
    floors = {
        "train": max(3 * flops / flop_peak, train_bytes / bandwidth) * 1e3,
        "infer": max(flops / flop_peak, infer_bytes / bandwidth) * 1e3,
    }
    return flops, infer_bytes, train_bytes, floors, times


def print_timings(native, cases, use_compile, tf32):
    peaks = measure_peaks()
    bandwidth, flop_peaks = peaks
    print(f"\nmeasured peaks: copy {bandwidth / 1e9:.0f} GB/s, fp32 matmul "
          f"{flop_peaks['fp32'] / 1e12:.1f} TFLOP/s, tf32 matmul {flop_peaks['tf32'] / 1e12:.1f} "
          f"TFLOP/s; timing with {'TF32' if tf32 else 'FMA float32'} in every implementation")
    print("times in ms (median of 50, CUDA events); floor = max(FLOP / peak, bytes / bandwidth); "
          "train = forward + backward, infer = inference forward")
    header = (f"{'shape':<40} {'GFLOP':>6} {'MB inf':>7} {'MB trn':>7} | "
              f"{'floor trn':>9} {'fused':>7} {'eager':>7} {'compile':>7} | "
              f"{'floor inf':>9} {'fused':>7} {'eager':>7} {'compile':>7}")
    print(header)
    print("-" * len(header))
    for case in cases:
        flops, infer_bytes, train_bytes, floors, t = timing_row(native, case, peaks, use_compile,
                                                                tf32)
        compiled_train = f"{t['compile train']:7.3f}" if use_compile else f"{'-':>7}"
        compiled_infer = f"{t['compile infer']:7.3f}" if use_compile else f"{'-':>7}"
        print(f"{case.name:<40} {3 * flops / 1e9:6.2f} {infer_bytes / 1e6:7.1f} "
              f"{train_bytes / 1e6:7.1f} | {floors['train']:9.3f} {t['fused train']:7.3f} "
              f"{t['eager train']:7.3f} {compiled_train} | {floors['infer']:9.3f} "
              f"{t['fused infer']:7.3f} {t['eager infer']:7.3f} {compiled_infer}")


# ---------------------------------------------------------------------------------------------


def import_native(native_dir):
    if native_dir:
        sys.path.insert(0, native_dir)
    try:
        return importlib.import_module("_native")
    except ImportError:
        return importlib.import_module("pyae._native")  # an installed pyae (needs TF to import)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-dir", help="folder holding the built _native*.so")
    parser.add_argument("--sanitize-case", action="store_true",
                        help="only check a few small cases (for compute-sanitizer)")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    parser.add_argument("--no-time", action="store_true", help="skip the timings")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile timings")
    parser.add_argument("--tf32-timing", action="store_true",
                        help="time with TF32 everywhere instead of FMA float32")
    return parser.parse_args()


def main():
    args = parse_args()
    native = import_native(args.native_dir)
    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"cuda {torch.version.cuda}  native: {native.cuda_device_info()}")
    all_passed = True
    if not args.no_check:
        cases = sanitize_cases() if args.sanitize_case else tutorial_cases() + awkward_cases()
        for seed, case in enumerate(cases):
            lines, passed = check_case(native, case, seed)
            all_passed &= passed
            print("\n".join(lines), flush=True)
        print(f"\ncorrectness: {'ALL PASSED' if all_passed else 'FAILURES (see FAIL lines)'}")
    if not args.no_time and not args.sanitize_case:
        print_timings(native, tutorial_cases(), not args.no_compile, args.tf32_timing)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
