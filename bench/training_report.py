"""Whole train steps of both tutorial models: pyae's steps vs the tutorial's own loop.

    python bench/training_report.py [--quick] [--models fashion_mnist cartoon] [--no-rss]
                                    [--no-quality] [--isa avx512|avx2|generic] [--configs ...]
                                    [--policy float32|mixed_bfloat16]

``--isa`` runs the native op on that CPU kernel path; run the AVX2 path against a tutorial
loop held to AVX2 as well: ``ONEDNN_MAX_CPU_ISA=AVX2 python bench/training_report.py --isa avx2``.

Configs (see ``CONFIGS``), all Adam(5e-4) and the tutorial's per-image MSE:

* ``tutorial``     the tutorial's exact ``train_step``: ``tf.function``, Keras
                   Conv2D/BatchNormalization/LeakyReLU (conv bias kept), two tapes, two
                   ``apply_gradients`` calls
* ``pyae-native``  fused layers on the native op, graph-mode ``tf.function`` step
* ``pyae-xla``     fused layers on the composite ops, ``tf.function(jit_compile=True)``
* ``pyae-auto``    ``Autoencoder.compile()``'s choice (``jit_compile="auto"``; says which)
* ``pyae-native-f32``  ``pyae-native`` built under float32 whatever ``--policy`` says: pyae's
                   float32 step, the baseline of mixed precision's target
* ``pyae-native-tfout``  ``pyae-native`` with the output layer on TF's ops
                   (``output_impl="tf"``, Keras' Conv2DTranspose math): the step without the
                   native output op, to measure what that op gives in the same run

The pyae configs' decoders end with ``FusedConv2DTranspose`` (the output op, with the
config's impl); the tutorial's with Keras' ``Conv2DTranspose``.

``--policy mixed_bfloat16`` builds every model (the tutorial's too) under that Keras dtype
policy: activations in bfloat16, variables float32, as Keras' mixed precision runs them.

Fashion-MNIST runs at batch 128, Cartoon at batch 32. Speed is timed for every config in
this one process; memory in a fresh subprocess per config: ``ru_maxrss`` (the whole
process's peak, TensorFlow's import included) and the training peak above the RSS before
the model was built (the kernel's high-water mark reset there); ratios use the latter. The quality check trains pyae (auto) and the tutorial loop from the same initial
weights on the same batches in the same order, then compares test MSE.

Targets (the issue's): Fashion-MNIST >= 1.5x the tutorial loop's images/s; Cartoon >= 1.5x
and peak training memory <= 60% of the loop's; test MSE within 5%.
Also importable: ``make_step`` is what ``test_bench_training.py`` times.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pyae import models, ops, train  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_options  # noqa: E402
from run_options import policy  # noqa: E402

CONFIGS = ("tutorial", "pyae-native", "pyae-xla", "pyae-auto", "pyae-native-f32",
           "pyae-native-tfout")
# Mixed precision's targets (issue 14): the whole step under the policy vs the tutorial loop
# under it, and vs pyae's own float32 step.
TARGET_MIXED_SPEEDUP, TARGET_MIXED_VS_FLOAT32 = 2.0, 1.4
BATCH_SIZES = {"fashion_mnist": 128, "cartoon": 32}
LEARNING_RATE = 5e-4
TARGET_SPEEDUP, TARGET_MEMORY_RATIO, TARGET_MSE_GAP = 1.5, 0.60, 0.05


# ----------------------------------------------------------------------------- the steps


def ae_loss(y_true, y_pred):
    """The tutorial's loss: one mean squared error per image (a vector, not a scalar); in
    float32 under a mixed policy, as Keras computes its losses."""
    return tf.reduce_mean(tf.square(y_true - tf.cast(y_pred, y_true.dtype)), axis=[1, 2, 3])


def tutorial_train_step(enc, dec, optimizer):
    """The tutorial's ``train_step``, verbatim but for building the optimizer first.

    Keras 3 refuses ``apply_gradients`` on variables an optimizer was not built with; the
    tutorial (tf.keras 2.4) built it lazily on whatever came first. Building it on both
    variable lists keeps the loop as written: two tapes, two applies, iterations += 2.
    """
    optimizer.build(enc.trainable_variables + dec.trainable_variables)

    @tf.function
    def train_step(images):
        with tf.GradientTape() as encoder, tf.GradientTape() as decoder:
            latent = enc(images, training=True)
            generated_images = dec(latent, training=True)
            loss = ae_loss(images, generated_images)
        gradients_of_enc = encoder.gradient(loss, enc.trainable_variables)
        gradients_of_dec = decoder.gradient(loss, dec.trainable_variables)
        optimizer.apply_gradients(zip(gradients_of_enc, enc.trainable_variables))
        optimizer.apply_gradients(zip(gradients_of_dec, dec.trainable_variables))
        return tf.reduce_mean(loss)

    return train_step


def config_policy(config):
    """The dtype policy `config` is built under (--policy, but float32 for *-f32 configs)."""
    return "float32" if config.endswith("-f32") else policy()


def build_model(model_name, config, seed=0):
    keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config_policy(config))
    try:
        output_impl = "tf" if config == "pyae-native-tfout" else None
        return models.build(model_name, unfused=config == "tutorial", output_impl=output_impl)
    finally:
        keras.config.set_dtype_policy(previous)


def make_step(model_name, config, sample_batch, seed=0, verbose=0):
    """``(step, model, note)``: ``step(batch)`` trains once and returns the loss tensor."""
    model = build_model(model_name, config, seed)
    config = config.removesuffix("-f32").removesuffix("-tfout")
    if config == "tutorial":
        step = tutorial_train_step(model.encoder, model.decoder,
                                   keras.optimizers.Adam(LEARNING_RATE))
        return step, model, "tf.function, Keras stack"
    kind = config.split("-", 1)[1]
    model.compile(jit_compile=train.jit_compile_for(kind), seed=seed)
    if model.chosen_step is None:  # measured, not ruled (a GPU)
        model.chosen_step, model.step_reason, _ = train.measure_step(model, sample_batch)
    model.make_train_function()
    function = model.train_function  # Keras' compiled step; takes a list of batches
    note = model.chosen_step if kind == "auto" else model.step_reason
    if kind == "native" and not ops.native_available():
        note = "native library not loaded: graph step on the composite ops"
    return (lambda batch: function([batch])["loss"]), model, note


def sample_images(model_name, count, seed=0):
    """Random images in [0, 1] shaped like the model's input (speed does not depend on them)."""
    shape = models.PRESETS[model_name]["input_shape"]
    return np.random.default_rng(seed).random((count, *shape), dtype="float32")


def time_configs(model_name, configs, rounds, steps_per_round, warmup=2):
    """Images per second of each config, its steps interleaved with the others'.

    This VM's speed drifts by 10-30% over seconds, so every config runs ``steps_per_round``
    steps in turn, ``rounds`` times, and each config's median round is reported: a slow spell
    hits all configs alike instead of whichever happened to be running. Each round starts
    with an untimed step, so no config is timed in the wake of another (oneDNN's worker
    threads spin on the cores for about a millisecond after its ops return).
    """
    batch = tf.constant(sample_images(model_name, BATCH_SIZES[model_name]))
    steps, notes = {}, {}
    for config in configs:
        steps[config], _, notes[config] = make_step(model_name, config, batch)
        for _ in range(warmup):
            float(steps[config](batch))
    seconds = {config: [] for config in configs}
    for _ in range(rounds):
        for config in configs:
            float(steps[config](batch))
            started = time.perf_counter()
            for _ in range(steps_per_round):
                loss = steps[config](batch)
            float(loss)  # wait for the last step
            seconds[config].append((time.perf_counter() - started) / steps_per_round)
    results = {}
    for config in configs:
        per_step = statistics.median(seconds[config])
        results[config] = {"images_per_s": BATCH_SIZES[model_name] / per_step,
                           "ms_per_step": 1e3 * per_step, "note": notes[config]}
    return results


# ----------------------------------------------------------------------------- memory


def _rss_mib():
    """Peak RSS of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field):
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def _reset_peak_rss():
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so that VmHWM after training
    measures training alone: importing TensorFlow peaks higher than a small model trains."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def rss_child(model_name, config, steps):
    """Run in a fresh process: RSS before the model, the training peak and ru_maxrss."""
    batch = tf.constant(sample_images(model_name, BATCH_SIZES[model_name]))
    reset = _reset_peak_rss()
    before = _status_mib("VmRSS") if reset else _rss_mib()
    step, _, _ = make_step(model_name, config, batch)
    for _ in range(steps):
        float(step(batch))
    training_peak = _status_mib("VmHWM") if reset else _rss_mib()
    print("RSS " + json.dumps({"before_mib": before, "training_peak_mib": training_peak,
                               "peak_mib": _rss_mib()}))


def measure_rss(model_name, config, steps):
    command = [sys.executable, os.path.abspath(__file__), "--rss-child", model_name, config,
               str(steps)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RSS ")]
    if not lines:
        raise RuntimeError(f"RSS subprocess for {model_name}/{config} failed:\n"
                           f"{completed.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


# ----------------------------------------------------------------------------- quality


def quality_data(model_name, count, seed=0):
    """(train, test) images: the bundled digits (28x28) or synthetic cartoon faces."""
    from pyae import data  # pylint: disable=import-outside-toplevel

    if model_name == "fashion_mnist":
        (x_train, _), (x_test, _) = data.load_digits_28(seed=seed)
        return x_train[:count], x_test
    faces, _ = data.synthetic_faces(count + count // 4, image_size=64, seed=seed)
    faces = tf.image.resize(faces, (256, 256), method="bilinear").numpy().clip(0.0, 1.0)
    return faces[:count], faces[count:]


def test_mse(model, images):
    reconstruction = model.reconstruct(images, batch_size=64)
    return float(np.mean((reconstruction - images) ** 2))


def quality(model_name, count, epochs, seed=0):
    """Test MSE of pyae (auto step) and of the tutorial loop after the same training."""
    x_train, x_test = quality_data(model_name, count, seed)
    batch_size = BATCH_SIZES[model_name]
    tutorial_model = build_model(model_name, "tutorial", seed)
    pyae_model = build_model(model_name, "pyae-auto", seed + 1)
    models.copy_weights(tutorial_model, pyae_model)  # one starting point for both
    pyae_model.compile(seed=seed)
    tutorial_step = tutorial_train_step(tutorial_model.encoder, tutorial_model.decoder,
                                        keras.optimizers.Adam(LEARNING_RATE))
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        shuffled = x_train[order.permutation(len(x_train))]
        pyae_model.fit(shuffled, epochs=1, batch_size=batch_size, shuffle=False, verbose=0)
        for start in range(0, len(shuffled), batch_size):  # the very batches fit saw
            tutorial_step(tf.constant(shuffled[start:start + batch_size]))
    pyae_mse, tutorial_mse = test_mse(pyae_model, x_test), test_mse(tutorial_model, x_test)
    return {"pyae": pyae_mse, "tutorial": tutorial_mse, "step": pyae_model.chosen_step,
            "gap": pyae_mse / tutorial_mse - 1.0, "train_images": len(x_train),
            "test_images": len(x_test), "epochs": epochs}


# ----------------------------------------------------------------------------- report


def _verdict(ok):
    return "yes" if ok else "**no**"


def speed_table(model_name, speeds, memory):
    reference = speeds["tutorial"]["images_per_s"] if "tutorial" in speeds else None
    rows = [f"### {model_name} (batch {BATCH_SIZES[model_name]})", "",
            "| config | images/s | ms/step | vs tutorial | peak RSS MiB | training RSS MiB "
            "| memory vs tutorial | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    reference_memory = memory.get("tutorial")
    for config, speed in speeds.items():
        rss = memory.get(config)
        peak = f"{rss['peak_mib']:.0f}" if rss else "-"
        training = f"{_training_mib(rss):.0f}" if rss else "-"
        memory_ratio = "-"
        if rss and reference_memory:
            memory_ratio = f"{_training_mib(rss) / _training_mib(reference_memory):.2f}"
        rows.append(f"| {config} | {speed['images_per_s']:.1f} | {speed['ms_per_step']:.1f} | "
                    f"{_ratio(speed['images_per_s'], reference)} | {peak} | {training} | "
                    f"{memory_ratio} | {speed['note']} |")
    return "\n".join(rows)


def _ratio(images_per_s, reference):
    return "-" if reference is None else f"{images_per_s / reference:.2f}x"


def _training_mib(rss):
    return max(rss["training_peak_mib"] - rss["before_mib"], 1.0)


def mixed_target_lines(model_name, speeds):
    """Under a mixed policy: pyae's native step vs the tutorial loop under the same policy
    and vs pyae's float32 native step."""
    if "pyae-native" not in speeds or "tutorial" not in speeds:
        return []
    native = speeds["pyae-native"]["images_per_s"]
    speedup = native / speeds["tutorial"]["images_per_s"]
    policy_name = policy()
    lines = [f"- {model_name} {policy_name} pyae-native {speedup:.2f}x the tutorial loop under "
             f"{policy_name} vs target {TARGET_MIXED_SPEEDUP}x: "
             f"{_verdict(speedup >= TARGET_MIXED_SPEEDUP)}"]
    if "pyae-native-f32" in speeds:
        ratio = native / speeds["pyae-native-f32"]["images_per_s"]
        lines.append(f"- {model_name} {policy_name} pyae-native {ratio:.2f}x pyae's float32 native "
                     f"step vs target {TARGET_MIXED_VS_FLOAT32}x: "
                     f"{_verdict(ratio >= TARGET_MIXED_VS_FLOAT32)}")
    return lines


def target_lines(model_name, speeds, memory, quality_result):
    lines = []
    if policy() != "float32":
        lines += mixed_target_lines(model_name, speeds)
    if "tutorial" not in speeds:  # --configs left the loop out: nothing to judge against
        return lines
    best = max((c for c in speeds if c != "tutorial"), key=lambda c: speeds[c]["images_per_s"])
    judged = "pyae-auto" if "pyae-auto" in speeds else best  # --configs may leave auto out
    speedup = speeds[judged]["images_per_s"] / speeds["tutorial"]["images_per_s"]
    lines.append(f"- {model_name} speed ({judged}) {speedup:.2f}x vs target {TARGET_SPEEDUP}x: "
                 f"{_verdict(speedup >= TARGET_SPEEDUP)} (fastest pyae config: {best})")
    if model_name == "cartoon" and "tutorial" in memory and "pyae-auto" in memory:
        ratio = _training_mib(memory["pyae-auto"]) / _training_mib(memory["tutorial"])
        lines.append(f"- cartoon training memory (auto) {ratio:.2f} of the loop's vs target "
                     f"<= {TARGET_MEMORY_RATIO}: {_verdict(ratio <= TARGET_MEMORY_RATIO)}")
    if quality_result:
        gap = quality_result["gap"]
        lines.append(
            f"- {model_name} test MSE pyae {quality_result['pyae']:.5f} vs tutorial "
            f"{quality_result['tutorial']:.5f} ({gap:+.1%}; {quality_result['epochs']} epochs on "
            f"{quality_result['train_images']} images, {quality_result['test_images']} test, "
            f"pyae step {quality_result['step']}) vs target within {TARGET_MSE_GAP:.0%}: "
            f"{_verdict(abs(gap) <= TARGET_MSE_GAP)}")
    return lines


def run_report(arguments):
    quick = arguments.quick
    steps = {"fashion_mnist": 3 if quick else 20, "cartoon": 2 if quick else 10}
    rounds = {"fashion_mnist": (1, 3) if quick else (7, 4), "cartoon": (1, 2) if quick else (5, 2)}
    quality_sizes = {"fashion_mnist": (512, 1) if quick else (2048, 2),
                     "cartoon": (64, 1) if quick else (512, 2)}
    print(f"# pyae training report ({datetime.date.today()}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__})\n")
    print(f"command: `python bench/training_report.py {' '.join(sys.argv[1:])}`  ")
    print(f"native op library: {'loaded' if ops.native_available() else 'not loaded'} "
          f"({ops.build_info()['tf_ops']['reason'] or 'ok'})  ")
    print(run_options.isa_line(ops.build_info()) + "  ")
    print(f"dtype policy: {policy()} (pyae-native-f32: float32); bf16 kernels: "
          f"{ops.build_info()['bf16']['path']}\n")
    summary = []
    for model_name in arguments.models:
        speeds = time_configs(model_name, arguments.configs, *rounds[model_name])
        memory = {}
        if not arguments.no_rss:
            memory = {config: measure_rss(model_name, config, max(steps[model_name] // 2, 2))
                      for config in arguments.configs}
        quality_result = None
        if not arguments.no_quality:
            count, epochs = quality_sizes[model_name]
            quality_result = quality(model_name, count, epochs)
        print(speed_table(model_name, speeds, memory) + "\n")
        summary.extend(target_lines(model_name, speeds, memory, quality_result))
    print("### Targets\n")
    print("\n".join(summary))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small quality check")
    parser.add_argument("--models", nargs="+", default=list(BATCH_SIZES),
                        choices=list(BATCH_SIZES))
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--no-quality", action="store_true", help="skip the MSE comparison")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        help="only these configs (default: all but pyae-native-tfout; "
                             "pyae-native-f32 only under a mixed policy)")
    run_options.add_options(parser, "the Keras dtype policy of every model")
    parser.add_argument("--rss-child", nargs=3, metavar=("MODEL", "CONFIG", "STEPS"),
                        help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    run_options.apply(arguments, child=bool(arguments.rss_child))
    if arguments.rss_child:
        model_name, config, count = arguments.rss_child
        rss_child(model_name, config, int(count))
        return
    if arguments.configs is None:
        arguments.configs = [config for config in CONFIGS if config != "pyae-native-tfout" and
                             (arguments.policy != "float32" or not config.endswith("-f32"))]
    run_report(arguments)


if __name__ == "__main__":
    main()
