"""Keras' fit across two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1).

Both tests run ``examples/multi_worker.py``, the documented way to train across processes:
two workers against one process at the same global batch, and a worker killed mid-epoch.
Tiny data (64 images, global batch 32, 2 steps an epoch) keeps them short.
"""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from _python import same_pyae_env
from pyae import models, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import multi_worker  # noqa: E402  pylint: disable=wrong-import-position

# Worker 1 kills itself (SIGKILL, no clean-up) after optimizer step PYAE_TEST_KILL_AT.
WORKER = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {str(EXAMPLES)!r})
    import keras, numpy as np
    import multi_worker

    kill_at = int(os.environ.get("PYAE_TEST_KILL_AT", "0"))

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    model, history = multi_worker.main(sys.argv[2:], callbacks=[Kill()] if kill_at else [])
    np.savez(sys.argv[1], *[np.asarray(weight) for weight in model.trainable_weights])
    print("HISTORY " + repr(history.history["loss"]), flush=True)
""")
ARGUMENTS = ["--limit", "64", "--batch-size", "32", "--optimizer", "sgd", "--seed", "0"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_workers(tmp_path, run_dir, epochs, kill_at=0):
    cluster = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    workers = []
    for index in range(2):
        environment = same_pyae_env(TF_CPP_MIN_LOG_LEVEL="3",
                                    PYAE_TEST_KILL_AT=str(kill_at if index == 1 else 0))
        log = open(tmp_path / f"worker-{index}-{time.monotonic_ns()}.log", "w+",  # noqa: SIM115
                   encoding="utf-8")
        command = [sys.executable, "-c", WORKER, str(tmp_path / f"weights-{index}.npz"),
                   "--cluster", cluster, "--index", str(index), "--run-dir", str(run_dir),
                   "--epochs", str(epochs), *ARGUMENTS]
        workers.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         env=environment, cwd=tmp_path), log))
    return workers


def output_of(worker):
    _, log = worker
    log.flush()
    log.seek(0)
    return log.read()


def wait_for(workers, timeout=300):
    for process, _ in workers:
        process.wait(timeout=timeout)
    return [output_of(worker) for worker in workers]


def history_of(output):
    line = next(line for line in output.splitlines() if line.startswith("HISTORY "))
    return eval(line[len("HISTORY "):])  # a list of floats, printed by repr


def one_process(epochs):
    """The same training in this process, on one device, at the same global batch."""
    arguments = multi_worker.parse_arguments(["--run-dir", "unused", *ARGUMENTS])
    from pyae import data  # pylint: disable=import-outside-toplevel

    images = data.load_dataset("digits", seed=0).x_train[:arguments.limit]
    keras.utils.set_random_seed(0)
    model = models.build("fashion_mnist")
    initial = [np.array(weight) for weight in model.trainable_weights]
    model.compile(keras.optimizers.SGD(0.5), seed=0)
    history = train.fit(model, multi_worker.sharded_dataset(images, 32, 0), epochs=epochs,
                        verbose=0)
    return initial, [np.array(w) for w in model.trainable_weights], history.history["loss"]


def test_two_workers_train_as_one_process_at_the_same_global_batch(tmp_path):
    run_dir = tmp_path / "run"
    outputs = wait_for(start_workers(tmp_path, run_dir, epochs=2))
    for output in outputs:
        assert "HISTORY" in output, output[-4000:]
    initial, single, single_losses = one_process(epochs=2)
    # Every replica normalises over its own 16 images, so losses agree closely, not exactly.
    np.testing.assert_allclose(history_of(outputs[0]), single_losses, rtol=2e-2)
    assert history_of(outputs[0]) == history_of(outputs[1])
    chief = np.load(tmp_path / "weights-0.npz")
    worker = np.load(tmp_path / "weights-1.npz")
    distributed = [chief[f"arr_{i}"] for i in range(len(chief.files))]
    for mine, theirs in zip(distributed, (worker[f"arr_{i}"] for i in range(len(worker.files)))):
        # All-reduced gradients keep the replicas' weights in sync (batch-norm moving
        # statistics are each worker's own, as with Keras' BatchNormalization).
        np.testing.assert_array_equal(mine, theirs)
    # The all-reduced update is the one-process update (an unscaled sum would make it 2).
    updates = [(a - b, c - b) for a, b, c in zip(distributed, initial, single)]
    ratio = sum(np.sum(u * u) for u, _ in updates) / sum(np.sum(u * v) for u, v in updates)
    assert ratio == pytest.approx(1.0, abs=0.1)
    assert train.complete_epochs(run_dir) == [1, 2]
    assert [row["epoch"] for row in train.read_loss_csv(run_dir / train.LOSS_CSV)] == [0, 1]
    # Only the chief logs: one TensorBoard event file, not one per worker.
    assert len(os.listdir(run_dir / train.LOG_DIR / "train")) == 1


def test_killed_worker_job_resumes_from_last_complete_epoch(tmp_path):
    run_dir = tmp_path / "run"
    workers = start_workers(tmp_path, run_dir, epochs=3, kill_at=3)  # 1st step of epoch 2
    killed, _ = workers[1]
    killed.wait(timeout=300)
    assert killed.returncode == -signal.SIGKILL, output_of(workers[1])[-4000:]
    survivor, _ = workers[0]
    try:  # the chief waits in a collective for its dead peer: the job is restarted
        survivor.wait(timeout=5)
    except subprocess.TimeoutExpired:
        survivor.send_signal(signal.SIGKILL)
        survivor.wait()
    assert train.complete_epochs(run_dir) == [1]

    outputs = wait_for(start_workers(tmp_path, run_dir, epochs=3))
    for output in outputs:
        assert "HISTORY" in output, output[-4000:]
        assert "resuming from" in output and "(epoch 1 complete)" in output
    assert len(history_of(outputs[0])) == 2  # epochs 2 and 3, none lost, none repeated
    assert train.complete_epochs(run_dir) == [2, 3]
    rows = train.read_loss_csv(run_dir / train.LOSS_CSV)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert not [name for name in os.listdir(run_dir) if name.startswith(".")]
