"""Does pyae slow the TensorFlow ops that run after it? A stock Keras model and its
``fuse_model()`` twin trained alternately by ``fit`` in one process.

    python bench/interference.py [--model fashion_mnist|cartoon] [--images N] [--rounds R]
                                 [--isa avx512|avx2|generic] [--impl auto|native|tf]

Each round fits one epoch of: stock, stock, fused, stock. The stock epoch right after a stock
one and the one right after a fused one run the same graph on the same data; if threads that
the fused op leaves behind (its crew of helpers, OpenBLAS's pool) kept spinning on the cores,
the second would be slower. Reports the median images/s of each kind of epoch over the rounds
(after one untimed epoch of each model, which traces its train function); then, after untimed
epochs of each model at the end of every round, the CPU time the process burns while it
sleeps for IDLE_S (threads still spinning show up as CPU time; an idle process burns next to
none).
"""
import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pyae import models, ops  # noqa: E402
from pyae.fusion import fuse_model  # noqa: E402

BATCH_SIZES = {"fashion_mnist": 128, "cartoon": 32}
ROUND = ("stock", "stock", "fused", "stock")
IDLE_S = 0.2


def build_twins(model_name, impl="auto", seed=0):
    """The tutorial's Keras stack as one Sequential model, and its fused twin."""
    keras.utils.set_random_seed(seed)
    preset = models.PRESETS[model_name]
    encoder, decoder = models.build_pair(
        tuple(preset["input_shape"]), int(preset["latent_dim"]), tuple(preset["filters"]),
        tuple(preset["strides"]), unfused=True)
    stock = keras.Sequential([encoder, decoder], name=f"{model_name}_stock")
    fused, _ = fuse_model(stock, impl=impl)
    for model in (stock, fused):
        model.compile(optimizer=keras.optimizers.Adam(5e-4), loss="mse")
    return {"stock": stock, "fused": fused}


def epoch_images_per_s(model, images, batch_size):
    started = time.perf_counter()
    model.fit(images, images, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return len(images) / (time.perf_counter() - started)


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def idle_cpu_fraction():
    """CPU seconds the process burns per second of sleeping (about 0 when no thread spins)."""
    before = _cpu_seconds()
    time.sleep(IDLE_S)
    return (_cpu_seconds() - before) / IDLE_S


def measure(model_name, count, rounds, impl="auto"):
    """({kind: [images/s per epoch]}, {model: [idle CPU fraction right after its epochs]})
    for the kinds "stock after stock", "stock after fused", "fused after stock"."""
    shape = models.PRESETS[model_name]["input_shape"]
    images = np.random.default_rng(0).random((count, *shape), dtype="float32")
    batch_size = BATCH_SIZES[model_name]
    twins = build_twins(model_name, impl)
    for model in twins.values():
        epoch_images_per_s(model, images, batch_size)  # traces the train function
    speeds = {"stock after stock": [], "stock after fused": [], "fused after stock": []}
    idle = {"stock": [], "fused": []}
    for _ in range(rounds):
        previous = "stock"
        for kind in ROUND:
            speed = epoch_images_per_s(twins[kind], images, batch_size)
            speeds.setdefault(f"{kind} after {previous}", []).append(speed)
            previous = kind
        for kind in idle:  # untimed epochs, each followed by a sleep
            epoch_images_per_s(twins[kind], images, batch_size)
            idle[kind].append(idle_cpu_fraction())
    return speeds, idle


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", choices=list(BATCH_SIZES), default="fashion_mnist")
    parser.add_argument("--images", type=int, default=2048, help="images per epoch")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--impl", choices=ops.IMPLS, default="auto",
                        help="the fused twin's impl (native: the op even where auto would not)")
    parser.add_argument("--isa", choices=("avx512", "avx2", "generic", "auto"),
                        help="the native op's CPU kernel path (default: PYAE_ISA or the best)")
    arguments = parser.parse_args(argv)
    if arguments.isa:
        os.environ["PYAE_ISA"] = arguments.isa  # read at the op's first call
    speeds, idle = measure(arguments.model, arguments.images, arguments.rounds, arguments.impl)
    isa = ops.build_info()["isa"]
    print(f"# stock/fused interference ({datetime.date.today()}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__})\n")
    print(f"command: `python bench/interference.py {' '.join(sys.argv[1:])}`  ")
    print(f"CPU kernel path: {isa['active']}; fused impl={arguments.impl}; ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}; {arguments.model}, batch "
          f"{BATCH_SIZES[arguments.model]}, {arguments.images} images per epoch, "
          f"{arguments.rounds} rounds of {', '.join(ROUND)}\n")
    print("| epoch | median images/s | min | max | epochs |")
    print("|---|---:|---:|---:|---:|")
    for kind, values in speeds.items():
        print(f"| {kind} | {statistics.median(values):.0f} | {min(values):.0f} | "
              f"{max(values):.0f} | {len(values)} |")
    after_fused = statistics.median(speeds["stock after fused"])
    after_stock = statistics.median(speeds["stock after stock"])
    print(f"\nstock epoch after a fused one / after a stock one: {after_fused / after_stock:.2f}  ")
    for kind, fractions in idle.items():
        print(f"CPU busy while sleeping {IDLE_S * 1e3:.0f} ms right after a {kind} epoch: median "
              f"{statistics.median(fractions):.2f} cores (max {max(fractions):.2f})  ")


if __name__ == "__main__":
    main()
