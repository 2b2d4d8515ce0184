"""Callbacks for Keras' ``fit``: what pyae's runs need beyond Keras' own callbacks.

Each is a Keras callback any ``fit`` can take, and each extends Keras' own where one does
most of the job:

* :class:`EpochCheckpoint` (Keras' ``BackupAndRestore`` semantics): one checkpoint per
  epoch, written to a temporary folder and renamed into place, so a killed run resumes from
  its last complete epoch and loses none. Under a multi-worker strategy every worker
  writes (saving may need every worker) but only the chief's folder is kept.
* :class:`LossCSV` (Keras' ``CSVLogger``): ``loss.csv``, one row per epoch, which on a
  resumed run keeps the completed epochs' rows and drops any row of an epoch the run must
  train again.
* :class:`ReconstructionImages`: originals beside their reconstructions in TensorBoard,
  next to Keras' ``TensorBoard`` callback's scalars.
* :class:`StopOnNonFinite` (Keras' ``TerminateOnNaN``): raises
  :class:`NonFiniteLossError` naming the epoch, the step and the culprit.
"""
import json
import logging
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

CHECKPOINT_PREFIX = "ckpt"
STATE_JSON = "state.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_TEMPORARY_DIR = re.compile(r"^\.epoch-\d+\.tmp-")

logger = logging.getLogger("pyae.train")


def say(message):
    """One line on the console (as Keras prints its own) and in the ``pyae.train`` log."""
    logger.info(message)
    if keras.config.is_interactive_logging_enabled():
        print(message, flush=True)


# ----------------------------------------------------------------------------- checkpoints


def complete_epochs(directory):
    """Epoch numbers (from 1) with a complete checkpoint in ``directory``: only finished
    checkpoints were renamed to ``epoch-NNNNNN``."""
    if not directory or not os.path.isdir(directory):
        return []
    found = (_EPOCH_DIR.match(name) for name in os.listdir(directory))
    return sorted(int(match.group(1)) for match in found if match)


def epoch_dir(directory, epoch):
    return os.path.join(os.fspath(directory), f"epoch-{epoch:06d}")


def last_checkpoint(directory):
    """``(epoch, folder)`` of the last complete checkpoint in ``directory``, or ``(0, None)``."""
    epochs = complete_epochs(directory)
    if not epochs:
        return 0, None
    return epochs[-1], epoch_dir(directory, epochs[-1])


def _checkpoint(model, with_optimizer):
    if with_optimizer and getattr(model, "optimizer", None) is not None:
        if not model.optimizer.built:  # its slots must exist before they can be restored
            model.optimizer.build(model.trainable_variables)
        return tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.Checkpoint(model=model)


def restore_checkpoint(model, folder, with_optimizer=True):
    """Load an ``epoch-NNNNNN`` folder into ``model`` (and its optimizer); return its state
    (``{"epoch": N, "seed": ...}``)."""
    status = _checkpoint(model, with_optimizer).read(os.path.join(folder, CHECKPOINT_PREFIX))
    if with_optimizer:
        status.assert_existing_objects_matched()
    else:
        status.expect_partial()
    with open(os.path.join(folder, STATE_JSON), encoding="utf-8") as handle:
        return json.load(handle)


def _is_chief(strategy):
    """True unless this process is a non-chief worker of a multi-worker strategy."""
    extended = strategy.extended
    if not getattr(extended, "_in_multi_worker_mode", lambda: False)():
        return True
    return bool(extended.should_checkpoint)


class EpochCheckpoint(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` with pyae's storage: atomic per-epoch checkpoints kept.

    At the end of every epoch the model's and optimizer's variables and the model's noise
    seed are written to ``directory/.epoch-N.tmp-PID/`` and renamed to
    ``directory/epoch-N/`` (the commit point: a complete epoch appears at once, a killed
    write leaves only a temporary folder). The last ``keep`` epochs are kept. At the start
    of ``fit`` the last complete epoch is restored and training continues after it, as
    ``BackupAndRestore`` does, and says so; temporary folders of killed runs are removed.
    Give it before callbacks that read ``model._initial_epoch`` (``LossCSV``).
    """

    def __init__(self, directory, keep=2):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got keep={keep!r}")
        super().__init__(os.fspath(directory), delete_checkpoint=False)
        self.directory = os.fspath(directory)
        self.keep = int(keep)
        self.resumed_from = 0

    def on_train_begin(self, logs=None):
        self._remove_temporaries()
        self._load_model()

    def _load_model(self):
        epoch, folder = last_checkpoint(self.directory)
        self.resumed_from = epoch
        if not folder:
            return
        state = restore_checkpoint(self.model, folder)
        if state.get("seed") is not None and getattr(self.model, "seed", None) is not None:
            self.model.seed = int(state["seed"])
            self.model.make_train_function(force=True)  # the seed is a traced constant
        self.model._initial_epoch = epoch  # pylint: disable=protected-access
        message = f"pyae: resuming from {folder} (epoch {epoch} complete)"
        say(message)

    def on_train_end(self, logs=None):
        # BackupAndRestore leaves this set; a later fit of the same model must not inherit it.
        self.model._initial_epoch = None  # pylint: disable=protected-access

    def _save_model(self):
        epoch = self._current_epoch
        chief = _is_chief(self.model.distribute_strategy)
        parent = self.directory if chief else os.path.join(
            self.directory, f".worker-{os.getpid()}")
        os.makedirs(parent, exist_ok=True)
        temporary = os.path.join(parent, f".epoch-{epoch:06d}.tmp-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        _checkpoint(self.model, True).write(os.path.join(temporary, CHECKPOINT_PREFIX))
        with open(os.path.join(temporary, STATE_JSON), "w", encoding="utf-8") as handle:
            json.dump({"epoch": epoch, "seed": getattr(self.model, "seed", None)}, handle)
        if not chief:  # a non-chief worker's copy only had to be written
            shutil.rmtree(parent, ignore_errors=True)
            return
        final = epoch_dir(self.directory, epoch)
        if os.path.exists(final):  # left by a run killed after this epoch was renamed
            shutil.rmtree(final)
        os.replace(temporary, final)  # the commit point
        for old_epoch in complete_epochs(self.directory)[:-self.keep]:
            shutil.rmtree(epoch_dir(self.directory, old_epoch), ignore_errors=True)

    def _remove_temporaries(self):
        if not os.path.isdir(self.directory) or not _is_chief(
                self.model.distribute_strategy):
            return
        for name in os.listdir(self.directory):
            if _TEMPORARY_DIR.match(name) or name.startswith(".worker-"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


# ----------------------------------------------------------------------------- loss.csv


class LossCSV(keras.callbacks.CSVLogger):
    """Keras' ``CSVLogger`` (``epoch`` counts from 0, as Keras' does) that resumes cleanly.

    At the start of ``fit`` the file keeps only the rows of epochs before the one training
    starts from (``model._initial_epoch``, set by :class:`EpochCheckpoint`), so an epoch
    logged but not checkpointed before a kill appears once, as trained again. Rows are
    rewritten atomically.
    """

    def __init__(self, filename, separator=","):
        super().__init__(os.fspath(filename), separator=separator, append=True)

    def on_train_begin(self, logs=None):
        first_epoch = getattr(self.model, "_initial_epoch", None) or 0
        _keep_rows_before(self.filename, first_epoch, self.sep)
        super().on_train_begin(logs)


def _keep_rows_before(path, first_epoch, separator):
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if _row_epoch(line, separator) is not None
                        and _row_epoch(line, separator) < first_epoch
                        and line.endswith("\n")]
    if len(kept) <= 1:
        os.remove(path)
        return
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(kept)
    os.replace(temporary, path)


def _row_epoch(line, separator):
    try:
        return int(line.split(separator, 1)[0])
    except ValueError:
        return None


# ----------------------------------------------------------------------------- TensorBoard


class ReconstructionImages(keras.callbacks.Callback):
    """After every epoch, ``images`` beside their reconstructions as a TensorBoard image
    (``log_dir/reconstructions``, tag ``reconstructions``, one picture per image)."""

    def __init__(self, log_dir, images, max_images=4):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.images = np.asarray(images, dtype="float32")[:max_images]
        if self.images.ndim != 4:
            raise ValueError("images must be an array of shape (N, H, W, C), received: "
                             f"images.shape={self.images.shape}")
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "reconstructions"))
        # A direct call, not predict: under a strategy predict splits (and here repeated)
        # a batch smaller than the replicas' share.
        reconstructions = self.model(self.images, training=False)
        pairs = np.concatenate([self.images, np.asarray(reconstructions)], axis=2)
        with self._writer.as_default():
            tf.summary.image("reconstructions", np.clip(pairs, 0.0, 1.0), step=epoch,
                             max_outputs=len(pairs))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ----------------------------------------------------------------------------- NaN stop


class NonFiniteLossError(FloatingPointError):
    """A train step produced a NaN or Inf loss, or fed one to an op that refuses it;
    training stopped there. ``epoch`` and ``step`` count from 1."""

    def __init__(self, epoch, step, terms=None, detail=None):
        self.epoch, self.step, self.terms = epoch, step, dict(terms or {})
        shown = detail or ", ".join(f"{name}={value:.6g}" for name, value in self.terms.items())
        super().__init__(
            f"non-finite loss at epoch {epoch}, step {step} ({shown}); the last complete "
            "epoch's checkpoint, if any, is intact")


def is_non_finite_error(error):
    """True for the error an op raises on NaN/Inf input (the native op does)."""
    return isinstance(error, tf.errors.InvalidArgumentError) and (
        "NaN or Inf" in str(error) or "not finite" in str(error))


def culprit(error):
    """The line of a TensorFlow error that names what went wrong.

    A graph's error message starts "Graph execution error:", then the Python stack of the
    failing node, then the op's own message, then ``[[{{node ...}}]]``: the op's message
    is the culprit.
    """
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    own = [line for line in lines if line and not line.startswith(("[[", "File ", "Detected "))
           and line != "Graph execution error:" and not line.endswith(":")]
    named = [line for line in own if "NaN" in line or "Inf" in line or "finite" in line]
    best = (named or own or [type(error).__name__])[-1]
    return best.split(" [[", 1)[0].split(" [Op:", 1)[0]


class StopOnNonFinite(keras.callbacks.TerminateOnNaN):
    """Keras' ``TerminateOnNaN(raise_error=True)``, naming what Keras' does not.

    Stops at the first step whose logs hold a NaN or Inf (any term, not only ``loss``) by
    raising :class:`NonFiniteLossError` with the epoch and step (from 1) and the terms. With
    ``steps_per_execution=k`` the step is the last of its group of k. ``Autoencoder.fit``
    also turns an op's refusal of NaN input into this error, naming that op's message.
    """

    def __init__(self):
        super().__init__(raise_error=True)
        self.epoch, self.step = 1, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch + 1, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.step = batch + 1

    def on_batch_end(self, batch, logs=None):
        terms = {name: float(value) for name, value in (logs or {}).items()
                 if np.ndim(value) == 0}
        if not all(np.isfinite(value) for value in terms.values()):
            raise NonFiniteLossError(self.epoch, batch + 1, terms)

    def error_for(self, error):
        """The NonFiniteLossError for an op's error raised during the current step."""
        return NonFiniteLossError(self.epoch, self.step, detail=culprit(error))


def non_finite_stop_in(callbacks):
    """The StopOnNonFinite among ``callbacks`` (a list or a CallbackList), or None."""
    found = getattr(callbacks, "callbacks", callbacks) or []
    return next((callback for callback in found if isinstance(callback, StopOnNonFinite)),
                None)


__all__ = ["EpochCheckpoint", "LossCSV", "ReconstructionImages", "StopOnNonFinite",
           "NonFiniteLossError", "complete_epochs", "last_checkpoint", "restore_checkpoint",
           "culprit", "is_non_finite_error"]
