"""What Keras' ``fit`` lacks for pyae: the train step's choice, a run's callbacks, resume.

Training itself is Keras': ``Autoencoder.compile()`` / ``fit()`` / ``evaluate()``. This
module chooses the compiled form of the train step, assembles the callbacks a run folder
gets, and offers :func:`fit`, one call that does both.

Two compiled forms of one train step exist because a TF custom op cannot enter an XLA
cluster (see docs/DESIGN.md, "XLA and the native op"):

* ``"xla"`` (``jit_compile=True``): the fused layers resolve to the composite TF ops and XLA
  fuses them itself.
* ``"native"`` (``jit_compile=False``): a graph-mode ``tf.function``; the fused layers run
  the native op.

``jit_compile="auto"`` picks XLA when the native library is not loaded (the graph step
would run the same composite ops without XLA's fusion). Otherwise, with
``auto_policy="rule"`` (the default) it takes the native step on a CPU, which
``bench/training_report.py`` measured faster there at both tutorial models; on a GPU, or with
``auto_policy="measure"``, it times a few steps of each on the first batch of ``fit`` and
keeps the faster. ``model.chosen_step`` and ``model.step_reason`` say which runs and why;
``fit`` prints it once.
"""
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from pyae import callbacks as callbacks_lib
from pyae import ops
from pyae.runs import read_loss_csv  # noqa: F401  (re-exported: loss.csv is the run folder's)

STEPS = ("auto", "xla", "native")
AUTO_POLICIES = ("rule", "measure")
DEFAULT_LEARNING_RATE = 5e-4  # the tutorial's Adam(lr=0.0005)
DEFAULT_BATCH_SIZE = 128  # the tutorial's
LOSS_CSV = "loss.csv"
LOG_DIR = "logs"

# Re-exported: what a run folder's readers need.
NonFiniteLossError = callbacks_lib.NonFiniteLossError
last_checkpoint = callbacks_lib.last_checkpoint
complete_epochs = callbacks_lib.complete_epochs


def default_optimizer():
    """The tutorial's optimizer, ``Adam(5e-4)``."""
    return keras.optimizers.Adam(DEFAULT_LEARNING_RATE)


def console_verbose(verbose):
    """Keras' ``verbose="auto"`` made console-aware: the live progress bar (1) on a
    terminal, one line per epoch (2) when the output is redirected, where a bar would
    write a new line every 50 ms."""
    if verbose != "auto":
        return verbose
    return 1 if getattr(sys.stdout, "isatty", lambda: False)() else 2


# ----------------------------------------------------------------------------- the step


def jit_compile_for(step):
    """``step`` ("auto", "xla", "native") as ``compile``'s ``jit_compile``."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, received: step={step!r}")
    return {"auto": "auto", "xla": True, "native": False}[step]


def choose_step(jit_compile="auto", auto_policy="rule", run_eagerly=False,
                compute_dtype="float32"):
    """``(jit_compile, step name or None, reason)``; a None step is measured in ``fit``.

    ``compute_dtype`` is the model's (its dtype policy's): under "mixed_float16", or
    "mixed_bfloat16" on a CPU without the bf16 kernels, the fused layers run the composite
    ops, so the rule takes the XLA step as it does wherever the layers do."""
    if auto_policy not in AUTO_POLICIES:
        raise ValueError(f"auto_policy must be one of {AUTO_POLICIES}, received: "
                         f"auto_policy={auto_policy!r}")
    if run_eagerly:
        return False, "eager", "run_eagerly=True: no compiled step"
    if jit_compile != "auto":
        jit_compile = bool(jit_compile)
        step = "xla" if jit_compile else "native"
        if step == "native" and not ops.native_available():
            return False, step, ("requested, but the native op library is not loaded "
                                 f"({_native_reason()}): the graph step runs the composite "
                                 "TF ops")
        return jit_compile, step, "requested"
    no_xla = _xla_unusable_reason()
    if not ops.native_available():
        if no_xla:
            return False, "native", (f"the native op library is not loaded ({_native_reason()}) "
                                     f"and {no_xla}: the graph step runs the composite TF ops")
        return True, "xla", (f"the native op library is not loaded ({_native_reason()}), so "
                             "XLA on the composite ops is the faster form")
    layer_impl, why = ops.explain_impl("auto", compute_dtype)
    if layer_impl != "native" and not no_xla:  # e.g. a CPU kernel path slower than TF's ops
        return True, "xla", (f"the fused layers run the composite ops here ({why}), and XLA "
                             "fuses those")
    if auto_policy == "rule" and _device_name() == "CPU":
        # Measured by bench/training_report.py on CPU at both tutorial models: the native
        # graph step beats XLA (which compiles the convolutions itself, without oneDNN), and
        # probing would hold both compiled steps' memory at once.
        return False, "native", ("rule for CPU: the native step beats XLA there at the "
                                 "tutorial's shapes (bench/training_report.py); "
                                 "auto_policy='measure' times both")
    return False, None, None


def measure_step(model, sample_batch, probe_steps=3):
    """Time ``probe_steps`` steps of each compiled form on ``sample_batch``, keep the faster
    (``model.jit_compile``); every weight and optimizer slot is put back afterwards."""
    state = list(model.variables) + list(model.optimizer.variables)
    saved = [np.array(variable) for variable in state]
    batch = tf.data.Dataset.from_tensors(tf.convert_to_tensor(sample_batch, tf.float32))
    timings = {}
    try:
        for step, jit_compile in (("xla", True), ("native", False)):
            model.jit_compile = jit_compile
            model.make_train_function(force=True)
            iterator = iter(batch.repeat())
            _block(model.train_function(iterator))  # compiles
            seconds = []
            for _ in range(max(int(probe_steps), 1)):
                started = time.perf_counter()
                _block(model.train_function(iterator))
                seconds.append(time.perf_counter() - started)
            timings[step] = float(np.median(seconds))
    finally:
        for variable, value in zip(state, saved):
            variable.assign(value)
        model.reset_metrics()
    fastest = min(timings, key=timings.get)
    model.jit_compile = fastest == "xla"
    model.make_train_function(force=True)
    shown = ", ".join(f"{step} {seconds * 1e3:.1f} ms/step" for step, seconds in timings.items())
    return fastest, f"measured on {_device_name()}: {shown}", timings


def _block(logs):
    for value in logs.values():
        np.asarray(value)


def _native_reason():
    return ops.build_info()["tf_ops"]["reason"] or "unknown reason"


def _xla_unusable_reason():
    """Why XLA cannot compile the step under the current strategy, or None."""
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1 and _device_name() == "CPU":
        # TF 2.21: "Collectives are not yet implemented for CPU devices when compiling with
        # XLA", and MirroredStrategy's per-device variables cannot be read from one cluster.
        return (f"XLA cannot compile the cross-replica step of {type(strategy).__name__} "
                f"({strategy.num_replicas_in_sync} replicas) on the CPU")
    return None


def _device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU ({gpus[0].name})" if gpus else "CPU"


# ----------------------------------------------------------------------------- a run


def run_callbacks(run_dir, *, keep_checkpoints=2, tensorboard=True, images=None,
                  strategy=None):
    """The callbacks of a run folder, in the order they must run.

    ``EpochCheckpoint(run_dir)`` (atomic per-epoch checkpoints, resume), ``LossCSV``
    (``run_dir/loss.csv``), ``StopOnNonFinite``, and with ``tensorboard`` Keras'
    ``TensorBoard(run_dir/logs)`` plus ``ReconstructionImages`` of ``images``. Under a
    multi-worker ``strategy`` (the model's) only the chief logs.
    """
    run_dir = os.fspath(run_dir)
    chief = callbacks_lib._is_chief(  # pylint: disable=protected-access
        strategy or tf.distribute.get_strategy())
    found = [callbacks_lib.EpochCheckpoint(run_dir, keep=keep_checkpoints),
             callbacks_lib.StopOnNonFinite()]
    if chief:
        found.append(callbacks_lib.LossCSV(os.path.join(run_dir, LOSS_CSV)))
    if chief and tensorboard:
        log_dir = os.path.join(run_dir, LOG_DIR)
        found.append(keras.callbacks.TensorBoard(log_dir, update_freq="epoch"))
        if images is not None:
            found.append(callbacks_lib.ReconstructionImages(log_dir, images))
    return found


def fit(model, data, epochs, batch_size=DEFAULT_BATCH_SIZE, run_dir=None, *, seed=None,
        step="auto", validation_data=None, callbacks=(), verbose="auto", tensorboard=True,
        keep_checkpoints=2, **fit_options):
    """Train ``model`` (an Autoencoder) with Keras' ``fit``; return Keras' ``History``.

    Compiles it first if it is not (``Adam(5e-4)``, the ``step``'s ``jit_compile``,
    ``seed``). With ``run_dir`` the run's callbacks (:func:`run_callbacks`) come first, so
    a folder that holds checkpoints resumes from its last complete epoch: ``epochs`` counts
    from the start of the run. ``data`` is an array of images, ``(images, labels)`` or a
    ``tf.data.Dataset``; ``batch_size`` applies to arrays. Other options go to ``fit``.
    """
    if not model.compiled:
        model.compile(jit_compile=jit_compile_for(step), seed=seed)
    run = []
    if run_dir is not None:
        run = run_callbacks(run_dir, keep_checkpoints=keep_checkpoints, tensorboard=tensorboard,
                            images=_sample_images(validation_data if validation_data
                                                  is not None else data),
                            strategy=model.distribute_strategy)
    if isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[0]) == 4:
        data = data[0]  # (images, labels): the labels play no part
    if isinstance(data, tf.data.Dataset):
        batch_size = None  # a dataset comes batched, and shuffled if it is to be
        fit_options.setdefault("shuffle", False)
    return model.fit(data, epochs=epochs, batch_size=batch_size,
                     validation_data=validation_data, callbacks=run + list(callbacks),
                     verbose=verbose, **fit_options)


def _sample_images(data, count=4):
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        element = next(iter(data.take(1)))
        element = element[0] if isinstance(element, (tuple, list)) else element
        images = np.asarray(element)
        return images[:count] if images.ndim == 4 else images[None]
    if isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[0]) == 4:
        data = data[0]
    return np.asarray(data, dtype="float32")[:count]


def restore(model, run_dir, with_optimizer=False):
    """Load the last complete epoch's checkpoint of ``run_dir`` into ``model``; return that
    epoch (0 when there is none)."""
    epoch, folder = last_checkpoint(run_dir)
    if folder:
        callbacks_lib.restore_checkpoint(model, folder, with_optimizer=with_optimizer)
    return epoch


