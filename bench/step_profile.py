"""Where one whole train step's time goes: TensorFlow's profiler on the step, time per op.

    python bench/step_profile.py [--model fashion_mnist|cartoon] [--config pyae-native]
                                 [--steps 10] [--top 25] [--isa ...] [--policy ...]

Runs the step that ``training_report.py`` times (``--config`` as there: ``tutorial``,
``pyae-native``, ``pyae-auto``...) on random images, then ``--steps`` more steps under
``tf.profiler``, and prints the ops' time per step from the trace: the fused ops' total, every
other op's total, the step's wall time, and the ``--top`` slowest ops. Op times are each op's
own span on the thread that ran it; ops that ran side by side on the two cores can add up to
more than the wall time. Profile only on an idle machine (``/work/tools/quiet``).
"""
import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import run_options  # noqa: E402
import training_report  # noqa: E402

# Host events that wrap a whole step or many ops, not one op.
_WRAPPERS = ("ExecutorState", "EagerLocalExecute", "KernelAndDeviceFunc", "Iterator")


def op_milliseconds(logdir):
    """{"name:Type": milliseconds summed over the trace} for every op event on the host."""
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as trace:
        space.ParseFromString(trace.read())
    totals = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(_WRAPPERS):
                    totals[name] += event.duration_ps / 1e9
    return totals


def profile(model_name, config, steps):
    """(milliseconds per op per step, wall milliseconds per step, the config's note)."""
    batch = tf.constant(training_report.sample_images(
        model_name, training_report.BATCH_SIZES[model_name]))
    step, _, note = training_report.make_step(model_name, config, batch)
    for _ in range(3):
        float(step(batch))
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        for _ in range(steps):
            loss = step(batch)
        float(loss)
        wall = (time.perf_counter() - started) / steps
        tf.profiler.experimental.stop()
        totals = op_milliseconds(logdir)
    return {name: ms / steps for name, ms in totals.items()}, 1e3 * wall, note


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", choices=tuple(training_report.BATCH_SIZES),
                        default="fashion_mnist")
    parser.add_argument("--config", choices=training_report.CONFIGS, default="pyae-native")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    run_options.add_options(parser, "the Keras dtype policy the step runs under "
                                    "(pyae-native-f32 is float32 whatever it says)")
    arguments = parser.parse_args()
    run_options.apply(arguments, child=False)
    per_op, wall, note = profile(arguments.model, arguments.config, arguments.steps)
    fused = sum(ms for name, ms in per_op.items() if "PyaeFused" in name)
    print(f"{arguments.model} {arguments.config} ({note}): {wall:.1f} ms/step under the "
          f"profiler; fused ops {fused:.1f} ms, other ops {sum(per_op.values()) - fused:.1f} ms")
    for name, ms in sorted(per_op.items(), key=lambda item: -item[1])[:arguments.top]:
        print(f"{ms:8.2f} ms  {name}")


if __name__ == "__main__":
    main()
