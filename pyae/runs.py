"""The run folder: what ``pyae train`` writes and every other command reads.

One folder per run::

    config.json        {"data": ..., "model": ..., "train": ...}: enough to rebuild both
    model.weights.h5   the final weights (written when training ends)
    epoch-NNNNNN/      per-epoch checkpoints (pyae.train); the last complete one resumes a run
    loss.csv           one row per epoch (pyae.train)
    metrics.json       {section: values}, one section per analysis
    *.png              the figures of pyae.analysis

Every file here is written to a temporary name and renamed into place, so a killed process
leaves the old file or the new one, never half of one. A damaged file is named in the error
(:class:`RunFolderError`); damaged final weights fall back to the last complete epoch
checkpoint when there is one. The functions take plain values, not argparse namespaces:
the CLI, the training code and a notebook share them.
"""
import csv
import datetime
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOSS_FILE = "loss.csv"
PRESET_BATCH_SIZE = {"fashion_mnist": 128, "cartoon": 32}
MIN_STEPS_PER_EPOCH = 40


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message names the folder or file."""


# --------------------------------------------------------------------------- atomic files

def _temporary_name(path):
    """A sibling of ``path`` that keeps its suffixes (Keras checks ``.weights.h5``)."""
    path = Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    temporary = _temporary_name(path)
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def jsonable(value):
    """numpy scalars/arrays and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity (PSNR of identical images is inf)
    return value


def write_json(path, payload):
    write_text_atomically(path, json.dumps(jsonable(payload), indent=2, sort_keys=True) + "\n")


def read_json(path):
    """The JSON object in ``path``; RunFolderError naming the file if it is damaged."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: damaged file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict):
        raise RunFolderError(f"{path}: damaged file (expected a JSON object, got "
                             f"{type(payload).__name__})")
    return payload


def save_weights(model, run_dir):
    """The model's weights as the run's model.weights.h5, renamed into place when complete."""
    path = Path(run_dir) / WEIGHTS_FILE
    temporary = _temporary_name(path)
    try:
        model.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_loss_csv(path):
    """loss.csv (one row per epoch) as a list of dicts, numbers parsed."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [{key: _parse_number(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def _parse_number(text):
    for parse in (int, float):
        try:
            return parse(text)
        except (TypeError, ValueError):
            pass
    return text


# --------------------------------------------------------------------------- metrics

def update_metrics(run_dir, section, values):
    """Merge ``{section: values}`` into the run's metrics.json (keys of a section too).

    A damaged metrics.json is kept beside it as ``metrics.json.damaged`` with a warning,
    and a fresh one started: every section is rewritten by the command that makes it.
    """
    path = Path(run_dir) / METRICS_FILE
    metrics = _readable_metrics(path)
    previous = metrics.get(section)
    values = jsonable(values)
    if isinstance(previous, dict) and isinstance(values, dict):
        values = {**previous, **values}
    metrics[section] = values
    write_json(path, metrics)
    return metrics


def _readable_metrics(path):
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except RunFolderError as err:
        kept = path.with_name(path.name + ".damaged")
        shutil.copyfile(path, kept)
        warnings.warn(f"{err}; kept it as {kept.name} and started a fresh {path.name}",
                      stacklevel=3)
        return {}


def read_metrics(run_dir):
    path = Path(run_dir) / METRICS_FILE
    return read_json(path) if path.is_file() else {}


# --------------------------------------------------------------------------- config

def default_run_dir(dataset_spec):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_spec.replace("folder:", "folder-"))
    name = name.strip("-")[:60] or "run"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def default_preset(dataset_spec):
    """The tutorial's model for a dataset: 28x28 Fashion-MNIST or the Cartoon Set one."""
    return "fashion_mnist" if dataset_spec in ("digits", "fashion_mnist") else "cartoon"


def default_batch_size(preset, train_images):
    """The tutorial's batch size (128 Fashion-MNIST, 32 Cartoon), halved down to 16 until an
    epoch has MIN_STEPS_PER_EPOCH steps: BatchNorm's moving statistics (momentum 0.99) need
    a few hundred steps to settle, and a small dataset gives few steps per epoch."""
    batch_size = PRESET_BATCH_SIZE[preset]
    while batch_size > 16 and train_images / batch_size < MIN_STEPS_PER_EPOCH:
        batch_size //= 2
    return batch_size


CONFIG_SECTIONS = ("data", "model", "train")


def read_config(run_dir):
    """The run's config.json; RunFolderError naming it if it is damaged or incomplete."""
    path = Path(run_dir) / CONFIG_FILE
    config = read_json(path)
    missing = [section for section in CONFIG_SECTIONS if not isinstance(config.get(section),
                                                                           dict)]
    if missing:
        raise RunFolderError(f"{path}: damaged file (no {', '.join(missing)} section)")
    return config


def check_resumable(run_dir, config):
    """The config of the run already in ``run_dir`` (None if there is none), refusing a
    folder that holds another run: the same data and model resume it, anything else would
    mix two runs in one folder. The batch size is part of the run too (it sets every step
    and the shuffle order): ``config["train"]["batch_size"]`` None takes the run's own, and
    another one is refused. More epochs, or another train step, continue the run."""
    config_path = Path(run_dir) / CONFIG_FILE
    if not config_path.is_file():
        return None
    previous = read_json(config_path)
    if previous.get("data") != jsonable(config["data"]) or \
            previous.get("model") != jsonable(config["model"]):
        raise RunFolderError(f"{run_dir}: the folder holds a run with another dataset or "
                             "model; choose another folder (the same options resume that run)")
    train, trained_with = config["train"], previous.get("train", {}).get("batch_size")
    if train.get("batch_size") is None:
        train["batch_size"] = trained_with
    elif trained_with is not None and train["batch_size"] != trained_with:
        raise RunFolderError(
            f"{run_dir}: its run was trained with batch size {trained_with}, not "
            f"{train['batch_size']}; resume it with batch size {trained_with} (or none "
            "given), or train into another folder")
    return previous


def has_epoch_checkpoint(run_dir):
    return any(path.is_dir() for path in Path(run_dir).glob("epoch-*"))


def check_run_dir(run_dir):
    """The run folder as a Path if it holds a config and a checkpoint, else RunFolderError."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no such run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"{run_dir}: not a pyae run folder (no {CONFIG_FILE})")
    if not (run_dir / WEIGHTS_FILE).is_file() and not has_epoch_checkpoint(run_dir):
        raise RunFolderError(f"{run_dir}: run folder has no checkpoint ({WEIGHTS_FILE} or "
                             "epoch-*/); train one with `pyae train --out DIR`")
    return run_dir


# --------------------------------------------------------------------------- data and model

def load_run_dataset(data_config):
    """The dataset a run was trained on, limited as it was at training time."""
    from pyae import data as data_lib

    options = {"seed": data_config["seed"]}
    if data_config.get("fashion_mnist_path"):
        options["fashion_mnist_path"] = data_config["fashion_mnist_path"]
    if data_config.get("image_size"):
        options["image_size"] = data_config["image_size"]
    if data_config.get("limit") and data_config["dataset"].startswith("folder:"):
        options["limit"] = data_config["limit"]  # read only that many files
    try:
        dataset = data_lib.load_dataset(data_config["dataset"], **options)
    except data_lib.DatasetUnavailableError as err:
        raise RunFolderError(str(err)) from None
    return limit_dataset(dataset, data_config.get("limit"))


# The smallest dataset every analysis of a run can take: the sampler report measures k-NN
# radii (k=5) among the training codes, and the latent scatter projects the test codes to 2-D.
MIN_TRAIN_IMAGES = 6
MIN_TEST_IMAGES = 2


def check_dataset_size(dataset):
    """RunFolderError, before anything is trained or written, if the dataset is too small
    for the analyses of a run."""
    train, test = len(dataset.x_train), len(dataset.x_test)
    if train < MIN_TRAIN_IMAGES or test < MIN_TEST_IMAGES:
        raise RunFolderError(
            f"{dataset.name}: {train} training and {test} test image(s) are too few; a run's "
            f"analyses need at least {MIN_TRAIN_IMAGES} and {MIN_TEST_IMAGES} (a folder "
            "keeps a tenth of its images for testing)")


def limit_dataset(dataset, limit):
    if not limit:
        return dataset
    dataset.x_train, dataset.x_test = dataset.x_train[:limit], dataset.x_test[:limit]
    if dataset.y_train is not None:
        dataset.y_train, dataset.y_test = dataset.y_train[:limit], dataset.y_test[:limit]
    return dataset


def build_model(model_config, seed=None):
    """The run's (untrained) model from the "model" section of its config; with ``seed``,
    Keras' seeds are set first, so the initial weights follow from it."""
    import keras

    from pyae import models

    if seed is not None:
        keras.utils.set_random_seed(seed)
    options = dict(model_config)
    preset = options.pop("preset")
    options["input_shape"] = tuple(options["input_shape"])
    try:
        return models.build(preset, **options)
    except (ValueError, KeyError) as err:
        raise RunFolderError(f"cannot build the {preset} model for input shape "
                             f"{options['input_shape']}: {err}") from None


def load_weights(model, run_dir):
    """The run's final weights into ``model``, or its last complete epoch when the final
    weights are missing (training stopped early) or damaged (with a warning naming them)."""
    run_dir = Path(run_dir)
    path = run_dir / WEIGHTS_FILE
    if path.is_file():
        try:
            _load_weights_file(model, path)
            return path
        except Exception as err:  # h5py and Keras raise several unrelated types
            damage = f"{path}: damaged file ({type(err).__name__}: {_first_line(err)})"
            if not has_epoch_checkpoint(run_dir):
                raise RunFolderError(damage + "; no epoch-*/ checkpoint to fall back on") \
                    from None
            warnings.warn(damage + "; using the last complete epoch checkpoint instead",
                          stacklevel=2)
    return restore_last_epoch(model, run_dir)


# A run trained before the decoder's output layer became a FusedConv2DTranspose holds that
# layer as Keras' Conv2DTranspose, and a .weights.h5 file names each layer of a model by its
# class (Keras' saving_lib: the snake-cased class name), so the group must be renamed for the
# new class to find its kernel and bias (the epoch checkpoints name layers by position and
# load as they are). The fused decoder has no other Conv2DTranspose.
_STOCK_OUTPUT_GROUP = "decoder/layers/conv2d_transpose"
_FUSED_OUTPUT_GROUP = "decoder/layers/fused_conv2d_transpose"


def _load_weights_file(model, path):
    """Keras' ``load_weights``; a file with the decoder's output layer stored as a
    Conv2DTranspose that the model's fused one refuses is read with the group renamed (and
    Keras' warnings about the refused file are dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            legacy = None
        except ValueError:
            legacy = _with_fused_output_group(path)
            if legacy is None:
                raise
    if legacy is None:
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
        return
    try:
        model.load_weights(legacy)
    finally:
        legacy.unlink(missing_ok=True)


def _with_fused_output_group(path):
    """A temporary copy of the weights file ``path`` with its stock output-layer group
    renamed to the FusedConv2DTranspose's, or None when it has no such group."""
    import h5py  # pylint: disable=import-outside-toplevel

    with h5py.File(path, "r") as weights:
        if _STOCK_OUTPUT_GROUP not in weights or _FUSED_OUTPUT_GROUP in weights:
            return None
    copy = path.with_name(f".{path.stem}-{os.getpid()}.fused-output.weights.h5")
    shutil.copyfile(path, copy)
    with h5py.File(copy, "r+") as weights:
        weights.move(_STOCK_OUTPUT_GROUP, _FUSED_OUTPUT_GROUP)
    return copy


def restore_last_epoch(model, run_dir):
    """The newest epoch checkpoint of ``run_dir`` that loads, into ``model``; its folder.
    A damaged one is named in a warning and the one before it is tried."""
    from pyae import callbacks

    damaged = []
    for epoch in reversed(callbacks.complete_epochs(run_dir)):
        folder = Path(callbacks.epoch_dir(run_dir, epoch))
        try:
            callbacks.restore_checkpoint(model, folder, with_optimizer=False)
        except Exception as err:  # TF's checkpoint reader raises several unrelated types
            damaged.append(f"{folder}: damaged checkpoint ({type(err).__name__}: "
                           f"{_first_line(err)})")
            continue
        for message in damaged:
            warnings.warn(f"{message}; using {folder.name} instead", stacklevel=3)
        return folder
    if damaged:
        raise RunFolderError("; ".join(damaged))
    raise RunFolderError(f"{run_dir}: no complete epoch checkpoint")


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else "no detail"


def load_run(run_dir):
    """(run folder Path, model with the run's weights, dataset) of a trained run."""
    run_dir = check_run_dir(run_dir)
    config = read_config(run_dir)
    model = build_model(config["model"])
    load_weights(model, run_dir)
    return run_dir, model, load_run_dataset(config["data"])


def train_run(run_dir, model, dataset, config, verbose=True):
    """Fit ``model`` on the dataset as ``config["train"]`` says (a checkpoint and loss.csv
    per epoch, resuming from the folder's last complete epoch), save the final weights and
    the step that ran into the folder; return the trained model."""
    from pyae import train as train_lib

    train_config = config["train"]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config)
    train_lib.fit(model, dataset.x_train, epochs=train_config["epochs"],
                  batch_size=train_config["batch_size"], run_dir=run_dir,
                  seed=train_config["seed"], step=train_config["step"],
                  validation_data=dataset.x_test, verbose="auto" if verbose else 0)
    save_weights(model, run_dir)
    train_config["chosen_step"] = model.chosen_step
    train_config["step_reason"] = model.step_reason
    write_json(run_dir / CONFIG_FILE, config)
    return model
