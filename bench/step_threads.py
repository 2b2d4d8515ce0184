"""Who runs, and who waits for a core, during `fit` steps: per thread pool, per step.

    python bench/step_threads.py [--model fashion_mnist] [--which fused stock]
                                 [--inter-op 1 2] [--rounds 3] [--steps 10]

Trains ``bench/fit_report.py``'s stock tutorial model or its ``fuse_model`` twin with
``fit`` (fed by ``pyae.data.array_dataset``), one process per model and inter-op thread
count (``tf.config.threading.set_inter_op_parallelism_threads``; TF's default is the core
count), the processes interleaved over ``--rounds``. Each prints the median step time (a
callback's, batch begin to end) and, from ``/proc/self/task/*/schedstat`` over its timed
epochs, each thread group's time on a core and time runnable but waiting for one, per step.
On a machine with as many cores as threads want them, waiting is ~0; a thread spinning while
others wait shows as run time where no work is due. Run only through ``/work/tools/quiet``.
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def thread_times():
    """{thread group: [ns on a core, ns waiting for one]} over this process's threads.

    TensorFlow names its inter-op threads ``tf_Compute``; the CPU device's intra-op pool
    keeps the process's name and is the run of such threads made right after
    ``tf_graph_runner`` (the order TF starts them in)."""
    totals = collections.defaultdict(lambda: [0, 0])
    group = "main and libraries"
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm, \
                    open(f"/proc/self/task/{tid}/schedstat") as stat:
                name = comm.read().strip()
                run, wait = (int(value) for value in stat.read().split()[:2])
        except OSError:  # the thread ended meanwhile
            continue
        if name == "tf_graph_runner":
            group = "intra-op"
        elif name.startswith("tf_Compute"):
            group = "inter-op"
        elif group == "inter-op" or not name.startswith(("python", "tf_graph")):
            group = "other"
        if tid == str(os.getpid()):
            totals["main"][0] += run
            totals["main"][1] += wait
            continue
        totals[group][0] += run
        totals[group][1] += wait
    return totals


def child(which, setting, steps, model_name):
    """One process: time `steps`-step fit epochs of one model; print one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    inter_op, *options = setting.split(":")
    inter_op, no_spin = int(inter_op), "nospin" in options
    for option in options:  # NAME=VALUE: an environment variable for this process
        if "=" in option:
            os.environ[option.split("=")[0]] = option.split("=", 1)[1]
    sys.path.insert(0, HERE)
    sys.path.append(os.path.dirname(HERE))
    import numpy as np
    import tensorflow as tf
    if no_spin:
        from tensorflow.python.eager import context
        config = tf.compat.v1.ConfigProto()
        config.experimental.disable_thread_spinning = True
        context.context()._config = config
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    import fit_report
    from pyae.layers import fuse_model

    batch_size = fit_report.BATCH_SIZES[model_name]
    from pyae import models
    shape = models.PRESETS[model_name]["input_shape"]
    images = np.random.default_rng(0).random((batch_size * steps, *shape), dtype="float32")
    model = fit_report.stock_model(model_name)
    if which == "fused":
        model, _ = fuse_model(model)
    model = fit_report.compiled(model)
    fit_report.fit_epoch(model, images, batch_size, "array_dataset")  # compiles
    step_times = fit_report.StepTimes()
    before, started = thread_times(), time.perf_counter()
    for _ in range(3):
        fit_report.fit_epoch(model, images, batch_size, "array_dataset", [step_times])
    wall = time.perf_counter() - started
    after = thread_times()
    count = len(step_times.seconds)
    groups = {name: [(after[name][i] - before.get(name, [0, 0])[i]) / 1e6 / count
                     for i in (0, 1)] for name in after}
    print(json.dumps({"step_ms": 1e3 * statistics.median(step_times.seconds),
                      "wall_ms": 1e3 * wall / count, "groups": groups}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="fashion_mnist")
    parser.add_argument("--which", nargs="+", default=["fused", "stock"])
    parser.add_argument("--inter-op", nargs="+", default=["1", "2"],
                        help="inter-op thread counts; N:nospin also turns TF's pools' "
                             "spinning off (ConfigProto.experimental.disable_thread_spinning), "
                             "N:NAME=VALUE sets an environment variable in that process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child[0], arguments.child[1], arguments.steps, arguments.model)
        return
    results = collections.defaultdict(list)
    for _ in range(arguments.rounds):
        for which in arguments.which:
            for inter_op in arguments.inter_op:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", which, str(inter_op),
                     "--steps", str(arguments.steps), "--model", arguments.model],
                    check=True, capture_output=True, text=True).stdout
                results[(which, inter_op)].append(json.loads(out.strip().splitlines()[-1]))
    print(f"command: `python bench/step_threads.py {' '.join(sys.argv[1:])}`\n")
    print("| model | inter-op threads | ms per step (median of rounds) | thread group: "
          "ms on a core / ms waiting for one, per step |")
    print("|---|---:|---:|---|")
    for (which, inter_op), runs in results.items():
        step = statistics.median(run["step_ms"] for run in runs)
        names = sorted({name for run in runs for name in run["groups"]})
        cells = []
        for name in names:
            run_ms = statistics.median(run["groups"].get(name, [0, 0])[0] for run in runs)
            wait_ms = statistics.median(run["groups"].get(name, [0, 0])[1] for run in runs)
            if run_ms + wait_ms >= 0.5:
                cells.append(f"{name} {run_ms:.1f} / {wait_ms:.1f}")
        steps = ", ".join(f"{run['step_ms']:.1f}" for run in runs)
        print(f"| {which} | {inter_op} | {step:.1f} ({steps}) | {'; '.join(cells)} |")


if __name__ == "__main__":
    main()
