"""Keras' fit on the stock tutorial model against fit on the same model after fuse_model.

    python bench/fit_report.py [--rounds 5] [--steps 20] [--model fashion_mnist]
                               [--feeds arrays array_dataset]

The stock model is the tutorial's encoder and decoder (Keras Conv2D, BatchNormalization,
LeakyReLU, the sigmoid Conv2DTranspose) joined into one ``keras.Model``; the fused one is
``fuse_model`` of it (its output layer a FusedConv2DTranspose). Both are
compiled alike (``Adam(5e-4)``, the tutorial's per-image MSE, ``jit_compile="auto"``, which
Keras resolves to False on a CPU, and the fused layers then run the native op) and trained
with ``model.fit`` on the same images at the tutorial's batch, fed two ways: ``arrays``
(``fit(x, x)``: Keras' own pipeline for arrays, with tf.data's autotuning, whose iterator
teardown in TF 2.21 can hold an epoch's end until the autotuner's next round) and
``array_dataset`` (``fit(pyae.data.array_dataset(x))``: the same batches with autotuning off).
Every round times one ``fit`` epoch of each model and feed, interleaved, each after an
untimed one-step fit of the same model (after an untimed epoch of each that compiles); the
median round of each is reported, and their ratio (the issue's target: >= 1.5x), with the
median of the per-step times (a callback's, which leave out the epoch's start and end). A
third row is pyae's own ``Autoencoder`` (``models.build`` + ``compile()`` + ``fit(x)``,
which feeds arrays through ``array_dataset`` itself) for reference.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pyae import data, models, ops  # noqa: E402
from pyae.layers import fuse_model  # noqa: E402

BATCH_SIZES = {"fashion_mnist": 128, "cartoon": 32}
TARGET = 1.5
FEEDS = ("arrays", "array_dataset")


def ae_loss(y_true, y_pred):
    """The tutorial's loss: one mean squared error per image."""
    return tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])


def stock_model(model_name, seed=0):
    """The tutorial's autoencoder as one plain Keras model (Keras layers only)."""
    keras.utils.set_random_seed(seed)
    pair = models.build(model_name, unfused=True)
    images = keras.Input(pair.encoder.input.shape[1:])
    return keras.Model(images, pair.decoder(pair.encoder(images)), name="stock")


def compiled(model):
    model.compile(keras.optimizers.Adam(5e-4), loss=ae_loss)
    return model


def fit_epoch(model, images, batch_size, feed, callbacks=()):
    """One fit epoch on ``images``, fed as ``feed`` says: ``fit(x, x)`` for a plain Keras
    model, ``fit(x)`` for an Autoencoder (its objective is the loss)."""
    autoencoder = isinstance(model, models.Autoencoder)
    if feed == "arrays":
        model.fit(images, None if autoencoder else images, batch_size=batch_size, epochs=1,
                  verbose=0, callbacks=list(callbacks))
        return
    batches = data.array_dataset(images, batch_size)
    if not autoencoder:
        batches = batches.map(lambda batch: (batch, batch))
    model.fit(batches, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))


class StepTimes(keras.callbacks.Callback):
    """Seconds of each train step, from its batch's start to its end."""

    def __init__(self):
        super().__init__()
        self.seconds, self.started = [], None

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def time_fits(models_by_name, images, batch_size, rounds, feeds):
    for model in models_by_name.values():  # compile every train function first
        fit_epoch(model, images, batch_size, "arrays")
    runs = [(name, feed) for feed in feeds for name in models_by_name]
    seconds = {run: [] for run in runs}
    steps = {run: [] for run in runs}
    for _ in range(rounds):
        for name, feed in runs:
            model = models_by_name[name]
            # An untimed step first, so no model is timed in the wake of another's threads
            # (oneDNN's spin on the cores for a while after its ops return).
            fit_epoch(model, images[:batch_size], batch_size, feed)
            step_times = StepTimes()
            started = time.perf_counter()
            fit_epoch(model, images, batch_size, feed, [step_times])
            seconds[(name, feed)].append(time.perf_counter() - started)
            steps[(name, feed)].extend(step_times.seconds)
    return seconds, steps


def print_table(feed, names, seconds, steps, arguments, batch_size, count):
    medians = {name: statistics.median(seconds[(name, feed)]) for name in names}
    step_medians = {name: statistics.median(steps[(name, feed)]) for name in names}
    print(f"\nfed as `{feed}`:\n")
    print(f"| model | images/s | s per fit epoch ({arguments.steps} steps, batch {batch_size}) "
          "| vs stock | ms per step | vs stock |")
    print("|---|---:|---:|---:|---:|---:|")
    stock = names[0]
    for name in names:
        print(f"| {name} | {count / medians[name]:.1f} | {medians[name]:.2f} | "
              f"{medians[stock] / medians[name]:.2f}x | {1000 * step_medians[name]:.1f} | "
              f"{step_medians[stock] / step_medians[name]:.2f}x |")
    fused = names[1]
    ratio = medians[stock] / medians[fused]
    # This VM has slow spells of seconds; the ratio within each round (the two fits run
    # back to back) is the steadier figure.
    paired = statistics.median(stock_time / fused_time for stock_time, fused_time in
                               zip(seconds[(stock, feed)], seconds[(fused, feed)]))
    print(f"\n- speed-up {ratio:.2f}x (ratio of medians), {paired:.2f}x (median of the "
          f"{arguments.rounds} rounds' ratios), {step_medians[stock] / step_medians[fused]:.2f}x "
          f"per step, vs target >= {TARGET}x: "
          f"{'yes' if min(ratio, paired) >= TARGET else '**no**'}")
    print("- seconds per round: " + "; ".join(
        f"{name} {', '.join(f'{value:.2f}' for value in seconds[(name, feed)])}"
        for name in names))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", choices=list(BATCH_SIZES), default="fashion_mnist")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="train steps per timed fit")
    parser.add_argument("--feeds", nargs="+", choices=FEEDS, default=list(FEEDS),
                        help="how fit gets the images (see the module's doc)")
    arguments = parser.parse_args(argv)
    batch_size = BATCH_SIZES[arguments.model]
    shape = models.PRESETS[arguments.model]["input_shape"]
    images = np.random.default_rng(0).random((batch_size * arguments.steps, *shape),
                                             dtype="float32")
    stock = compiled(stock_model(arguments.model))
    fused, report = fuse_model(stock)
    fused = compiled(fused)
    keras.utils.set_random_seed(0)
    autoencoder = models.build(arguments.model)
    autoencoder.compile(seed=0)  # Adam(5e-4), the step chosen as for any user
    models_by_name = {"stock Keras": stock, "fuse_model": fused,
                      f"pyae Autoencoder ({autoencoder.chosen_step})": autoencoder}
    seconds, steps = time_fits(models_by_name, images, batch_size, arguments.rounds,
                               arguments.feeds)
    print(f"# fit: stock Keras vs fuse_model ({datetime.date.today()}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__})\n")
    print(f"command: `python bench/fit_report.py {' '.join(sys.argv[1:])}`  ")
    print(f"native op library: {'loaded' if ops.native_available() else 'not loaded'}; "
          f"jit_compile stock {stock.jit_compile}, fused {fused.jit_compile}; "
          f"{len(report.fused)} blocks fused, output layer replaced: "
          f"{', '.join(layer.layer for layer in report.replaced) or 'none'}")
    for feed in arguments.feeds:
        print_table(feed, list(models_by_name), seconds, steps, arguments, batch_size,
                    len(images))


if __name__ == "__main__":
    main()
