"""Training an Autoencoder: compiled train steps, the Trainer, checkpoints, tf.distribute.

Two compiled forms of one train step exist because a TF custom op cannot enter an XLA
cluster (see DESIGN.md, "XLA and the native op"):

* ``"xla"``: ``tf.function(jit_compile=True)``; the fused layers resolve to the composite TF
  ops there and XLA fuses them itself.
* ``"native"``: a graph-mode ``tf.function``; the fused layers run the native op.

``"auto"`` picks XLA outright when the native library is not loaded (the graph step would
run the same composite ops without XLA's fusion). Otherwise, with ``auto_policy="measure"``
(the default on a GPU) it times a few steps of each on the running device and keeps the
faster; with ``auto_policy="rule"`` on a CPU it takes the native step, which
``bench/training_report.py`` measured faster there at both tutorial models. ``Trainer.chosen_step`` and
``Trainer.step_reason`` say which step ran and why.
"""
import csv
import json
import logging
import math
import os
import random
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm.auto import tqdm

from pyae import ops

STEPS = ("auto", "xla", "native")
AUTO_POLICIES = ("rule", "measure")
DEFAULT_LEARNING_RATE = 5e-4  # the tutorial's Adam(lr=0.0005)
LOSS_CSV = "loss.csv"
HISTORY_JSON = "history.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")

logger = logging.getLogger("pyae.train")


class NonFiniteLossError(FloatingPointError):
    """A train step produced a NaN or Inf loss (or fed one to the native op, which refuses
    non-finite input); training stopped there. ``epoch`` and ``step`` count from 1."""

    def __init__(self, epoch, step, terms=None, detail=None):
        self.epoch, self.step, self.terms = epoch, step, dict(terms or {})
        shown = detail or ", ".join(f"{name}={value:.6g}" for name, value in self.terms.items())
        super().__init__(
            f"non-finite loss at epoch {epoch}, step {step} ({shown}); the last complete "
            "epoch's checkpoint, if any, is intact")


def _is_non_finite_error(error):
    """The native op reports NaN/Inf input as InvalidArgumentError: a diverged run."""
    return "NaN or Inf" in str(error) or "not finite" in str(error)


# ----------------------------------------------------------------------------- data


def _images_of(data):
    """Images from an array or an (images, labels) pair; labels are ignored."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[0]) == 4:
        data = data[0]
    images = np.asarray(data, dtype="float32")
    if images.ndim != 4:
        raise ValueError(f"images must be an array of shape (N, H, W, C), got {images.shape}")
    return images


def _dataset_images(dataset):
    """A dataset of images from one of images or of (images, labels, ...) tuples."""
    if isinstance(dataset.element_spec, (tuple, list)):
        return dataset.map(lambda *element: element[0])
    if isinstance(dataset.element_spec, dict):
        raise ValueError("a dataset of dicts is not supported: give images or (images, labels)")
    return dataset


class _Batches:
    """One epoch's batches of host images, reshuffled per (seed, epoch) so a resumed run
    sees exactly the order the uninterrupted one would have."""

    def __init__(self, data, batch_size, shuffle, base_seed):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size, self.shuffle, self.base_seed = int(batch_size), shuffle, base_seed
        if isinstance(data, tf.data.Dataset):
            self.array, self.dataset = None, _dataset_images(data)
            rank = self.dataset.element_spec.shape.rank
            if rank not in (3, 4):
                raise ValueError(f"dataset elements must be images (rank 3) or batches of "
                                 f"images (rank 4), got {self.dataset.element_spec}")
            self.prebatched = rank == 4
        else:
            self.array, self.dataset = _images_of(data), None
            if len(self.array) == 0:
                raise ValueError("no training images: the array is empty")

    def __len__(self):
        """Steps per epoch, or 0 when a dataset's cardinality is unknown."""
        if self.array is not None:
            return math.ceil(len(self.array) / self.batch_size)
        batches = self._epoch_dataset(0).cardinality().numpy()
        return int(batches) if batches >= 0 else 0

    def _epoch_dataset(self, epoch):
        dataset = self.dataset
        if not self.prebatched:
            if self.shuffle:
                # A pre-batched dataset is used as given: reshuffling batches is the caller's.
                dataset = dataset.shuffle(10_000, seed=self.base_seed + epoch,
                                          reshuffle_each_iteration=False)
            dataset = dataset.batch(self.batch_size)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def epoch(self, epoch):
        if self.array is None:
            for batch in self._epoch_dataset(epoch):
                yield tf.cast(batch, tf.float32)
            return
        count = len(self.array)
        order = (np.random.default_rng([self.base_seed, epoch]).permutation(count)
                 if self.shuffle else np.arange(count))
        for start in range(0, count, self.batch_size):
            # Sorted indices read the array in memory order; the batch's order is irrelevant.
            yield self.array[np.sort(order[start:start + self.batch_size])]


# ----------------------------------------------------------------------------- checkpoints


def _complete_epochs(checkpoint_dir):
    """Epoch numbers with a complete checkpoint: only finished ones were renamed into place."""
    if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
        return []
    found = (_EPOCH_DIR.match(name) for name in os.listdir(checkpoint_dir))
    return sorted(int(match.group(1)) for match in found if match)


def _write_atomically(path, text):
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _history_csv(history):
    columns = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join(_csv_cell(row.get(column, "")) for column in columns))
    return "\n".join(lines) + "\n"


def _csv_cell(value):
    return repr(value) if isinstance(value, float) else str(value)


def read_loss_csv(path):
    """loss.csv as a list of dicts with numbers parsed."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [{key: _parse_number(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def _parse_number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains an :class:`pyae.models.Autoencoder` on its objective.

    ``Trainer(model, optimizer=None, step="auto", seed=None, strategy=None,
    checkpoint_dir=None, log_dir=None)``; ``optimizer`` defaults to the tutorial's
    ``Adam(5e-4)``. With a ``strategy`` whose scope the model was not built in, the model
    (and optimizer) are rebuilt inside it from their configs, weights copied: use
    ``trainer.model`` afterwards. ``seed`` makes a run repeatable: Keras' global seeds, the
    shuffle order and every random draw of the objective follow from it. ``probe_steps`` and
    ``auto_policy`` tune ``step="auto"``; ``keep_checkpoints`` epochs are kept on disk.
    """

    def __init__(self, model, optimizer=None, step="auto", seed=None, strategy=None,
                 checkpoint_dir=None, log_dir=None, probe_steps=3, keep_checkpoints=2,
                 auto_policy="rule"):
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        if auto_policy not in AUTO_POLICIES:
            raise ValueError(f"auto_policy must be one of {AUTO_POLICIES}, got {auto_policy!r}")
        self.auto_policy = auto_policy
        if not hasattr(model, "objective_terms"):
            raise TypeError("model must be a pyae.models.Autoencoder (it has no objective)")
        if seed is not None:
            keras.utils.set_random_seed(seed)
        self.seed = seed
        self._base_seed = int(seed) if seed is not None else random.randrange(2**31 - 1)
        self.strategy = strategy or tf.distribute.get_strategy()
        self._distributed = strategy is not None
        with self.strategy.scope():
            self.model = self._model_in_scope(model)
            self.optimizer = self._optimizer_in_scope(optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.requested_step = step
        self.chosen_step = None if step == "auto" else step
        self.step_reason = None if step == "auto" else "requested"
        self.step_timings = {}
        self.probe_steps = int(probe_steps)
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoints = int(keep_checkpoints)
        self.log_dir = log_dir
        self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self._checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                               epoch=self.epoch)
        self._step_functions = {}
        self._evaluate_function = None
        self.history = []

    # -- construction helpers

    def _model_in_scope(self, model):
        extended = self.strategy.extended
        if all(extended.variable_created_in_scope(_tf_variable(v)) for v in model.variables):
            return model
        clone = model.__class__.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        return clone

    def _optimizer_in_scope(self, optimizer):
        if optimizer is None:
            return keras.optimizers.Adam(DEFAULT_LEARNING_RATE)
        if self._distributed and getattr(optimizer, "_distribution_strategy",
                                         self.strategy) is not self.strategy:
            # Keras binds an optimizer to the strategy current when it was constructed.
            return optimizer.__class__.from_config(optimizer.get_config())
        return optimizer

    # -- the train step

    def _step_seed(self):
        """The stateless seed of this step (and replica): a function of seed and iteration."""
        iteration = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.stack([tf.constant(self._base_seed, tf.int32), iteration])
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group)
        return seed

    def _loss_and_gradients(self, images):
        replicas = self.strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.model.objective_terms(images, training=True, seed=self._step_seed())
            # The optimizer sums gradients over replicas: scale so the sum is the global mean.
            scaled_loss = terms["loss"] / replicas
        return terms, tape.gradient(scaled_loss, self.model.trainable_variables)

    def _replica_step(self, images):
        terms, gradients = self._loss_and_gradients(images)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return terms

    def step_function(self, kind):
        """The compiled train step ``"xla"`` or ``"native"``: host batch -> dict of terms."""
        if kind not in ("xla", "native"):
            raise ValueError(f"kind must be 'xla' or 'native', got {kind!r}")
        if kind not in self._step_functions:
            if not self._distributed:
                self._step_functions[kind] = tf.function(
                    self._replica_step, jit_compile=kind == "xla", reduce_retracing=True)
            else:
                self._step_functions[kind] = self._distributed_step(kind == "xla")
        return self._step_functions[kind]

    def _distributed_step(self, jit_compile):
        strategy = self.strategy
        # The optimizer's cross-replica update cannot sit inside an XLA cluster on replicas
        # that are logical devices of one CPU; compile the loss and gradients, apply outside.
        loss_and_gradients = tf.function(self._loss_and_gradients, jit_compile=jit_compile,
                                         reduce_retracing=True)

        def replica_step(images):
            terms, gradients = loss_and_gradients(images)
            self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
            return terms

        @tf.function(reduce_retracing=True)
        def distributed_step(per_replica_images):
            terms = strategy.run(replica_step, args=(per_replica_images,))
            return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                    for name, value in terms.items()}

        return distributed_step

    def _device_batch(self, batch):
        if not self._distributed:
            return tf.convert_to_tensor(batch, tf.float32)
        parts = np.array_split(np.asarray(batch, "float32"), self.strategy.num_replicas_in_sync)
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group]))

    def train_step(self, batch):
        """One step of the chosen train step on a host batch; returns floats."""
        function = self.step_function(self.chosen_step or "xla")
        terms = function(self._device_batch(batch))
        return {name: float(value) for name, value in terms.items()}

    # -- choosing the step

    def _choose_step(self, sample_batch, verbose):
        if self.chosen_step is None:
            self.chosen_step, self.step_reason = self._auto_choice(sample_batch)
        elif self.chosen_step == "native" and not ops.native_available():
            self.step_reason = ("requested, but the native op library is not loaded "
                                f"({_native_reason()}): the graph step runs the composite "
                                "TF ops")
        message = f"pyae: train step {self.chosen_step!r} ({self.step_reason})"
        logger.info(message)
        if verbose:
            print(message)

    def _auto_choice(self, sample_batch):
        if not ops.native_available():
            return "xla", (f"the native op library is not loaded ({_native_reason()}), so XLA "
                           "on the composite ops is the faster form")
        if self.auto_policy == "rule" and _device_name() == "CPU":
            # Measured by bench/training_report.py on CPU at both tutorial models: the native
            # graph step beats XLA (which compiles the convolutions itself, without oneDNN),
            # and probing would hold both compiled steps' memory at once.
            return "native", ("rule for CPU: the native step beats XLA there at the "
                              "tutorial's shapes (bench/training_report.py); "
                              "auto_policy='measure' times both")
        self.step_timings = self._time_steps(sample_batch)
        fastest = min(self.step_timings, key=self.step_timings.get)
        for slower in set(self._step_functions) - {fastest}:
            del self._step_functions[slower]  # free the compiled step that lost
        shown = ", ".join(f"{kind} {seconds * 1e3:.1f} ms/step"
                          for kind, seconds in self.step_timings.items())
        return fastest, f"measured on {_device_name()}: {shown}"

    def _time_steps(self, sample_batch):
        """Median seconds per step of each form, after one compiling call; state restored."""
        saved = [v.numpy() for v in self._state_variables()]
        device_batch = self._device_batch(sample_batch)
        timings = {}
        try:
            for kind in ("xla", "native"):
                function = self.step_function(kind)
                _block(function(device_batch))
                seconds = []
                for _ in range(max(self.probe_steps, 1)):
                    started = time.perf_counter()
                    _block(function(device_batch))
                    seconds.append(time.perf_counter() - started)
                timings[kind] = float(np.median(seconds))
        finally:
            # Probing trained the model; put every weight and optimizer slot back.
            for variable, value in zip(self._state_variables(), saved):
                variable.assign(value)
        return timings

    def _state_variables(self):
        return list(self.model.variables) + list(self.optimizer.variables)

    # -- fitting

    def fit(self, data, epochs, batch_size=128, validation_data=None, verbose=1, shuffle=True):
        """Train until ``epochs`` epochs are complete; return the history (one dict/epoch).

        A Trainer whose ``checkpoint_dir`` holds a checkpoint resumes from its last complete
        epoch, so ``epochs`` counts from the start of the run, not from the resume.
        """
        batches = _Batches(data, batch_size, shuffle, self._base_seed)
        if int(self.epoch.numpy()) == 0:
            self.restore()
        first_epoch = int(self.epoch.numpy()) + 1
        if first_epoch > epochs:
            return self.history
        self._choose_step(next(iter(batches.epoch(first_epoch))), verbose)
        validation = (_Batches(validation_data, 256, False, 0)
                      if validation_data is not None else None)
        for epoch in range(first_epoch, int(epochs) + 1):
            row = self._run_epoch(batches, epoch, epochs, verbose)
            if validation is not None:
                row.update({f"val_{name}": value
                            for name, value in self._evaluate_batches(validation).items()})
            self.history.append(row)
            self.epoch.assign(epoch)
            self._save(epoch)
            self._log_epoch(row, epoch, batches if validation is None else validation)
        return self.history

    def _run_epoch(self, batches, epoch, epochs, verbose):
        function = self.step_function(self.chosen_step)
        totals, images_seen = {}, 0
        started = time.perf_counter()
        progress = tqdm(total=len(batches) or None, desc=f"epoch {epoch}/{epochs}",
                        unit="batch", disable=not verbose, leave=True)
        with progress:
            for step, batch in enumerate(batches.epoch(epoch), start=1):
                count = len(batch)
                if count < self.strategy.num_replicas_in_sync:
                    continue  # too few images to give every replica one
                try:
                    terms = {name: float(value)
                             for name, value in function(self._device_batch(batch)).items()}
                except tf.errors.InvalidArgumentError as error:
                    if not _is_non_finite_error(error):
                        raise
                    raise NonFiniteLossError(epoch, step, detail=error.message.splitlines()[0]
                                             ) from error
                if not all(math.isfinite(value) for value in terms.values()):
                    raise NonFiniteLossError(epoch, step, terms)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value * count
                images_seen += count
                self._log_step(terms["loss"])
                progress.update(1)
                progress.set_postfix(loss=f"{terms['loss']:.4g}")
        seconds = time.perf_counter() - started
        row = {"epoch": epoch}
        row.update({name: total / max(images_seen, 1) for name, total in totals.items()})
        row.update({"seconds": seconds, "images_per_s": images_seen / max(seconds, 1e-9),
                    "step": self.chosen_step})
        return row

    def evaluate(self, data, batch_size=256):
        """Mean objective terms over ``data`` in inference mode (fixed noise seed)."""
        return self._evaluate_batches(_Batches(data, batch_size, False, 0))

    def _evaluate_batches(self, batches):
        if self._evaluate_function is None:
            seed = tf.constant([self._base_seed, -1], tf.int32)
            self._evaluate_function = tf.function(
                lambda images: self.model.objective_terms(images, training=False, seed=seed),
                reduce_retracing=True)
        totals, count = {}, 0
        for batch in batches.epoch(0):
            terms = self._evaluate_function(tf.convert_to_tensor(batch, tf.float32))
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(batch)
            count += len(batch)
        return {name: total / max(count, 1) for name, total in totals.items()}

    # -- checkpoints

    def restore(self):
        """Restore the last complete epoch from ``checkpoint_dir``; return its number (or 0)."""
        complete = _complete_epochs(self.checkpoint_dir)
        if not complete:
            return 0
        epoch_dir = os.path.join(self.checkpoint_dir, f"epoch-{complete[-1]:06d}")
        self._checkpoint.read(os.path.join(epoch_dir, "ckpt")).assert_existing_objects_matched()
        history_path = os.path.join(epoch_dir, HISTORY_JSON)
        if os.path.exists(history_path):
            with open(history_path, encoding="utf-8") as handle:
                self.history = json.load(handle)
        logger.info("pyae: resumed from %s (epoch %d)", epoch_dir, complete[-1])
        return int(self.epoch.numpy())

    def _save(self, epoch):
        """Write the epoch's checkpoint to a temporary folder, then rename it into place."""
        if not self.checkpoint_dir:
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        final = os.path.join(self.checkpoint_dir, f"epoch-{epoch:06d}")
        temporary = os.path.join(self.checkpoint_dir, f".epoch-{epoch:06d}.tmp-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        self._checkpoint.write(os.path.join(temporary, "ckpt"))
        with open(os.path.join(temporary, HISTORY_JSON), "w", encoding="utf-8") as handle:
            json.dump(self.history, handle)
        if os.path.exists(final):  # left by a run killed after this epoch was renamed
            shutil.rmtree(final)
        os.replace(temporary, final)  # the commit point: a complete epoch appears at once
        _write_atomically(os.path.join(self.checkpoint_dir, LOSS_CSV), _history_csv(self.history))
        for old_epoch in _complete_epochs(self.checkpoint_dir)[:-self.keep_checkpoints]:
            shutil.rmtree(os.path.join(self.checkpoint_dir, f"epoch-{old_epoch:06d}"),
                          ignore_errors=True)

    # -- TensorBoard

    def _log_step(self, loss):
        if self._writer is None:
            return
        with self._writer.as_default():
            write_scalar("step/loss", loss, int(self.optimizer.iterations.numpy()))

    def _log_epoch(self, row, epoch, image_source):
        if self._writer is None:
            return
        with self._writer.as_default():
            for name, value in row.items():
                if isinstance(value, float):
                    write_scalar(f"epoch/{name}", value, epoch)
            originals = np.asarray(next(iter(image_source.epoch(0)))[:4])
            reconstructions = self.model.reconstruct(originals)
            # Original and reconstruction side by side, one pair per image.
            write_images("reconstructions", np.concatenate([originals, reconstructions], 2),
                         epoch)
        self._writer.flush()


# TensorBoard's summary ops live in the tensorboard package, which pyae does not require;
# these write the same events (plugin name, data class, tensor layout) with TF core alone.

def _metadata(plugin_name, data_class):
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    metadata.data_class = data_class
    return metadata


def write_scalar(tag, value, step):
    """A TensorBoard scalar, with or without the tensorboard package installed."""
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR))


def write_images(tag, images, step):
    """TensorBoard images from floats in [0, 1], shape (N, H, W, 1 or 3)."""
    pixels = tf.image.convert_image_dtype(np.clip(images, 0.0, 1.0), tf.uint8, saturate=True)
    encoded = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
    height, width = images.shape[1], images.shape[2]
    # The image plugin's layout: [width, height, png, png, ...] as strings.
    tensor = tf.concat([tf.constant([str(width), str(height)]), encoded], axis=0)
    tf.summary.write(tag, tensor, step=step,
                     metadata=_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE))


def _tf_variable(variable):
    return getattr(variable, "value", variable)


def _block(terms):
    """Wait for a step's results (the runtime is asynchronous) so it can be timed."""
    for value in terms.values():
        np.asarray(value)


def _native_reason():
    return ops.build_info()["tf_ops"]["reason"] or "unknown reason"


def _device_name():
    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU ({gpus[0].name})" if gpus else "CPU"


def fit(model, data, epochs, batch_size=128, **trainer_options):
    """``Trainer(model, **trainer_options).fit(data, epochs, batch_size)`` in one call."""
    fit_options = {key: trainer_options.pop(key)
                   for key in ("validation_data", "verbose", "shuffle") if key in trainer_options}
    return Trainer(model, **trainer_options).fit(data, epochs, batch_size, **fit_options)
