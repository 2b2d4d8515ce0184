"""Time the output op (conv transpose + bias + sigmoid) alone: native vs impl="tf".

    python bench/output_op.py [--isa avx512|avx2|generic] [--repeats N]

The two tutorial output layers, ``Conv2DTranspose(c, 3, stride, "same", activation="sigmoid")``:
Fashion-MNIST 28x28x32 -> 28x28x1 (stride 1, batch 128) and Cartoon 128x128x32 -> 256x256x3
(stride 2, batch 32); forward and forward+backward (dx, dkernel, dbias for a fixed dy), in
float32 and in bfloat16 (x, y, dy, dx bf16, the variables float32, as under mixed_bfloat16).
``impl="tf"`` is what Keras' layer runs (oneDNN's conv transpose, the bias add, the sigmoid).
Interleaved rounds (``report.time_rounds``); the ratio is the median of the per-round
tf/native ratios with its quartiles. Hold TF's oneDNN to the native path's ISA when
comparing the AVX2 path: ``ONEDNN_MAX_CPU_ISA=AVX2 python bench/output_op.py --isa avx2``.

Beside each time, the floor: the bytes the op must move (x, y and kernel once; the backward
also dy, y, dx) at the machine's copy rate, and the FLOPs of the taps that land (2 per
multiply-add; a stride-2 layer has 9/4 taps per output pixel on average) at its matmul rate.
"""
import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.append(os.path.dirname(BENCH_DIR))
import report  # noqa: E402
import run_options  # noqa: E402

import pyae.ops  # noqa: E402

# name: (batch, height, width, in_channels, out_channels, stride)
LAYERS = {
    "fashion_mnist": (128, 28, 28, 32, 1, 1),
    "cartoon": (32, 128, 128, 32, 3, 2),
}
DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}
MODES = ("fwd", "fwdbwd")


def make_step(layer, dtype, mode, impl, seed=0):
    batch, height, width, in_channels, out_channels, stride = layer
    rng = np.random.default_rng(seed)
    x = tf.cast(rng.random((batch, height, width, in_channels), dtype=np.float32), dtype)
    kernel = tf.Variable(rng.normal(scale=0.1, size=(3, 3, out_channels, in_channels))
                         .astype(np.float32))
    bias = tf.Variable(np.zeros(out_channels, np.float32))
    dy = tf.cast(rng.normal(size=(batch, height * stride, width * stride, out_channels))
                 .astype(np.float32), dtype)

    @tf.function
    def forward():
        return [pyae.ops.conv_transpose_output(x, kernel, bias, strides=stride, impl=impl)]

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pyae.ops.conv_transpose_output(x, kernel, bias, strides=stride, impl=impl)
        return tape.gradient(y, [x, kernel, bias], output_gradients=dy)

    return forward if mode == "fwd" else forward_backward


def floor_ms(layer, dtype, mode, gflops, gbps):
    """(FLOP floor, byte floor) in ms."""
    batch, height, width, in_channels, out_channels, stride = layer
    out_pixels = batch * height * width * stride * stride
    taps = 9 / (stride * stride)
    flops = 2 * out_pixels * taps * in_channels * out_channels
    size = 2 if dtype == "bfloat16" else 4
    x_bytes = batch * height * width * in_channels * size
    y_bytes = out_pixels * out_channels * size
    moved = x_bytes + y_bytes
    if mode == "fwdbwd":
        flops *= 3  # dx and dkernel each cost what the forward does
        moved += x_bytes + 2 * y_bytes + x_bytes  # reads x, dy, y; writes dx
    return flops / gflops / 1e6, moved / gbps / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--isa", choices=run_options.ISA_CHOICES)
    options = parser.parse_args(argv)
    if options.isa:
        pyae.ops.set_isa(options.isa)
    info = pyae.ops.build_info()
    gflops = report.measure_peak_gflops(1024, 5)
    gbps = report.measure_peak_gbps(64, 5)
    print(f"# output op, {datetime.date.today()}, {platform.node()}, "
          f"{' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"# {run_options.isa_line(info)}")
    print(f"# machine: {gflops:.0f} GFLOP/s matmul, {gbps:.1f} GB/s copy")
    print(f"# auto: {pyae.ops.explain_output_impl('auto', tf.float32, 3)}")
    print("| layer | dtype | mode | native ms | tf ms | tf / native (q1-q3) | "
          "FLOP floor ms | byte floor ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, layer in LAYERS.items():
        for dtype_name, dtype in DTYPES.items():
            for mode in MODES:
                steps = {impl: make_step(layer, dtype, mode, impl) for impl in ("native", "tf")}
                try:
                    seconds = report.time_rounds(steps, options.repeats, warmup=2)
                except tf.errors.OpError as err:  # e.g. oneDNN held to AVX2 has no bf16 conv
                    print(f"| {name} | {dtype_name} | {mode} | failed: "
                          f"{err.message.splitlines()[0][:120]} |||||", flush=True)
                    continue
                low, median, high = report.quartiles(
                    report.paired_ratios(seconds["tf"], seconds["native"]))
                flop_floor, byte_floor = floor_ms(layer, dtype_name, mode, gflops, gbps)
                print(f"| {name} | {dtype_name} | {mode} | "
                      f"{1e3 * statistics.median(seconds['native']):.2f} | "
                      f"{1e3 * statistics.median(seconds['tf']):.2f} | "
                      f"{median:.2f}x ({low:.2f}-{high:.2f}) | {flop_floor:.2f} | "
                      f"{byte_floor:.2f} |", flush=True)


if __name__ == "__main__":
    main()
