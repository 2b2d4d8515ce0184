"""``pyae ...`` / ``python -m pyae ...``: train an autoencoder and reproduce the tutorial's
figures and experiments in one run folder.

``pyae train`` with no options trains the tutorial's Fashion-MNIST model (2-D latent) on
the bundled offline "digits" dataset and writes runs/<dataset>-<timestamp>/ holding the
weights, loss.csv, metrics.json, config.json and every figure. The other commands take
``--run DIR`` and add their figures and metrics to that folder. Bad input (a missing path,
an unknown dataset or preset, a run without weights...) exits with status 2 and one line
on stderr; set PYAE_DEBUG=1 to see the traceback instead.
"""
import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_DATASET = "digits"
DATASET_NAMES = ("digits", "fashion_mnist", "synthetic_faces")
PRESET_NAMES = ("fashion_mnist", "cartoon")
OBJECTIVE_NAMES = ("vanilla", "denoising", "sparse", "contractive", "variational")
SAMPLER_NAMES = ("uniform", "normal", "gaussian", "gmm")
PROJECTION_NAMES = ("pca", "tsne")
PRESET_BATCH_SIZE = {"fashion_mnist": 128, "cartoon": 32}
MIN_STEPS_PER_EPOCH = 40
MAX_ANALYSIS_IMAGES = 10_000
WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOSS_FILE = "loss.csv"


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2), without the usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- argument checks

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _sampler_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SAMPLER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown sampler {','.join(unknown) or text!r}; choose from {','.join(SAMPLER_NAMES)}")
    return names


def check_dataset_spec(spec):
    """The dataset spec if it names a known dataset or an existing folder, else CliError."""
    if spec in DATASET_NAMES:
        return spec
    if spec.startswith("folder:"):
        folder_text = spec[len("folder:"):]
        if not folder_text:
            raise CliError(f"--dataset {spec!r}: give the image folder as folder:PATH")
        folder = Path(folder_text).expanduser()
        if not folder.is_dir():
            raise CliError(f"--dataset {spec}: folder {str(folder)!r} does not exist")
        return f"folder:{folder}"
    raise CliError(f"--dataset {spec!r}: unknown dataset; use one of {', '.join(DATASET_NAMES)} "
                   "or folder:PATH")


def _check_existing_dir(path, option):
    if path is not None and not Path(path).expanduser().is_dir():
        raise CliError(f"{option} {path}: no such folder")


# --------------------------------------------------------------------------- run folder

def _jsonable(value):
    """numpy scalars/arrays and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity (PSNR of identical images is inf)
    return value


def write_json(path, payload):
    Path(path).write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def update_metrics(run_dir, section, values):
    """Merge ``{section: values}`` into the run's metrics.json (keys of a section too)."""
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json(path) if path.is_file() else {}
    previous = metrics.get(section)
    values = _jsonable(values)
    if isinstance(previous, dict) and isinstance(values, dict):
        values = {**previous, **values}
    metrics[section] = values
    write_json(path, metrics)
    return metrics


def default_run_dir(dataset_spec):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_spec.replace("folder:", "folder-"))
    name = name.strip("-")[:60] or "run"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _has_epoch_checkpoint(run_dir):
    return any(path.is_dir() for path in Path(run_dir).glob("epoch-*"))


def check_run_dir(run_dir):
    """The run folder as a Path if it holds a config and a checkpoint, else CliError."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CliError(f"--run {run_dir}: no such run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CliError(f"--run {run_dir}: not a pyae run folder (no {CONFIG_FILE})")
    if not (run_dir / WEIGHTS_FILE).is_file() and not _has_epoch_checkpoint(run_dir):
        raise CliError(f"--run {run_dir}: run folder has no checkpoint ({WEIGHTS_FILE} or "
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
        raise CliError(str(err)) from None
    return _limit(dataset, data_config.get("limit"))


def _limit(dataset, limit):
    if not limit:
        return dataset
    dataset.x_train, dataset.x_test = dataset.x_train[:limit], dataset.x_test[:limit]
    if dataset.y_train is not None:
        dataset.y_train, dataset.y_test = dataset.y_train[:limit], dataset.y_test[:limit]
    return dataset


def build_model(model_config):
    from pyae import models

    options = dict(model_config)
    preset = options.pop("preset")
    options["input_shape"] = tuple(options["input_shape"])
    return models.build(preset, **options)


def load_run(run_dir):
    """(run folder Path, model with the run's weights, dataset) of a trained run."""
    run_dir = check_run_dir(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    model = _checked_model(config["model"])
    if (run_dir / WEIGHTS_FILE).is_file():
        model.load_weights(run_dir / WEIGHTS_FILE)
    else:  # training stopped before the end: take the last complete epoch
        from pyae import train as train_lib

        train_lib.Trainer(model, checkpoint_dir=str(run_dir)).restore()
    return run_dir, model, load_run_dataset(config["data"])


# --------------------------------------------------------------------------- analyses

def _subsample(count, limit, seed):
    import numpy as np

    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def reconstruction_step(run_dir, model, dataset, n=25):
    """reconstructions.png (the tutorial's 5x5 grid) and reconstruction metrics on test."""
    from pyae import plots

    reconstructions = model.reconstruct(dataset.x_test)
    labels = None if dataset.y_test is None else dataset.y_test[:n]
    fig = plots.reconstruction_grid(dataset.x_test[:n], reconstructions[:n], labels,
                                    dataset.label_names, n=n,
                                    title=f"Reconstructions ({dataset.name} test set)")
    plots.save_figure(fig, run_dir / "reconstructions.png")
    report = reconstruction_metrics(dataset.x_test, reconstructions)
    update_metrics(run_dir, "reconstruction", report)
    return report


def reconstruction_metrics(images, reconstructions):
    """MSE, PSNR and SSIM of the reconstructions (as ``evaluate.reconstruction_report``)."""
    from pyae import evaluate

    return {"mse": evaluate.mse(images, reconstructions),
            "psnr": evaluate.psnr(images, reconstructions),
            "ssim": evaluate.ssim(images, reconstructions)}


def latent_step(run_dir, model, dataset, projection="pca", max_points=2000, seed=0):
    """latent_scatter.png (2-D latents directly, else projected) and representation metrics."""
    from pyae import plots

    chosen = _subsample(len(dataset.x_test), max_points, seed)
    codes = model.encode(dataset.x_test[chosen])
    labels = None if dataset.y_test is None else dataset.y_test[chosen]
    if codes.shape[1] == 2:
        fig = plots.latent_scatter(codes, labels, dataset.label_names,
                                   title=f"Projection of 2D Latent-Space ({dataset.name})")
    else:
        fig = plots.projection_scatter(codes, labels, dataset.label_names, method=projection,
                                       seed=seed, title=f"{projection} of the {codes.shape[1]}"
                                                        f"-D latent space ({dataset.name})")
    plots.save_figure(fig, run_dir / "latent_scatter.png")
    report = representation_metrics(model, dataset, seed)
    update_metrics(run_dir, "representation", report)
    return report


def analysis_train_set(dataset, seed):
    """At most MAX_ANALYSIS_IMAGES training images (and labels): what the samplers and
    probes are fitted on, so that 60k or 100k images do not make k-NN searches crawl."""
    chosen = _subsample(len(dataset.x_train), MAX_ANALYSIS_IMAGES, seed)
    labels = None if dataset.y_train is None else dataset.y_train[chosen]
    return dataset.x_train[chosen], labels


def representation_metrics(model, dataset, seed):
    """Linear probe, k-NN and k-means quality of the codes (needs labels)."""
    from pyae import evaluate

    if dataset.y_train is None:
        return {"skipped": "dataset has no labels"}
    train_images, train_labels = analysis_train_set(dataset, seed)
    chosen = _subsample(len(dataset.x_test), MAX_ANALYSIS_IMAGES, seed)
    return evaluate.representation_report(
        model.encode(train_images), train_labels, model.encode(dataset.x_test[chosen]),
        dataset.y_test[chosen], seed=seed)


def _latent_captions(codes):
    """The code under each sample, as the tutorial prints it, when it is at most 3-D."""
    if codes.shape[1] > 3:
        return None
    return ["[" + ", ".join(f"{value:.1f}" for value in code) + "]" for code in codes]


def fitted_samplers(train_codes, names, seed):
    from pyae import latent

    return {name: latent.get_sampler(name, seed=seed).fit(train_codes) for name in names}


def sampling_step(run_dir, model, dataset, sampler_names=SAMPLER_NAMES, n=10, seed=0,
                  report_size=500):
    """samples_<sampler>.png per sampler and the sampler report (holes, precision/recall)."""
    from pyae import plots

    train_codes = model.encode(analysis_train_set(dataset, seed)[0])
    samplers = fitted_samplers(train_codes, sampler_names, seed)
    for name, sampler in samplers.items():
        codes = sampler.sample(n, seed=seed)
        fig = plots.sample_grid(model.decode(codes), f"Decoded samples: {name} sampler",
                                captions=_latent_captions(codes))
        plots.save_figure(fig, run_dir / f"samples_{name}.png")
    report = sampler_metrics(model, train_codes, samplers, report_size, seed)
    update_metrics(run_dir, "samplers", report)
    return report


def sampler_metrics(model, train_codes, samplers, report_size, seed):
    """Hole rate, precision/recall/density/coverage and decoder consistency per sampler."""
    from pyae import evaluate

    return evaluate.sampler_report(train_codes, samplers, n=report_size, seed=seed,
                                   encoder=model.encode, decoder=model.decode)


def _interpolation_pairs(dataset, pairs, seed):
    """Indices of ``pairs`` test images and their partners, of different labels if known."""
    import numpy as np

    rng = np.random.default_rng(seed)
    starts = rng.choice(len(dataset.x_test), size=pairs, replace=len(dataset.x_test) < pairs)
    ends = []
    for start in starts:
        candidates = np.arange(len(dataset.x_test))
        if dataset.y_test is not None:
            different = candidates[dataset.y_test != dataset.y_test[start]]
            candidates = different if len(different) else candidates
        ends.append(rng.choice(candidates))
    return starts, np.asarray(ends)


def interpolation_step(run_dir, model, dataset, method="lerp", pairs=4, steps=8, seed=0):
    """interpolation.png: decoded paths between pairs of encoded test images."""
    import numpy as np

    from pyae import latent, plots

    starts, ends = _interpolation_pairs(dataset, pairs, seed)
    start_codes = model.encode(dataset.x_test[starts])
    end_codes = model.encode(dataset.x_test[ends])
    interpolate = latent.slerp if method == "slerp" else latent.lerp
    paths = [interpolate(a, b, steps) for a, b in zip(start_codes, end_codes)]
    images = model.decode(np.concatenate(paths))
    strips = images.reshape((pairs, steps) + images.shape[1:])
    fig = plots.interpolation_strip(strips, f"Latent interpolation ({method}) between test images")
    plots.save_figure(fig, run_dir / "interpolation.png")


def loss_curves_step(run_dir):
    """loss_curves.png from the run's loss.csv."""
    from pyae import plots, train as train_lib

    path = Path(run_dir) / LOSS_FILE
    if not path.is_file():
        raise CliError(f"{path}: no loss.csv in the run folder")
    rows = train_lib.read_loss_csv(path)
    if not rows:
        raise CliError(f"{path}: loss.csv is empty")
    plots.save_figure(plots.loss_curves(rows), Path(run_dir) / "loss_curves.png")


def consistency_step(run_dir, model, dataset):
    """Mean ||E(D(z)) - z|| over the test codes (per sampler it is in the sampler report)."""
    from pyae import evaluate

    test_codes = model.encode(dataset.x_test[:MAX_ANALYSIS_IMAGES])
    report = {"test_codes": evaluate.decoder_consistency(model.encode, model.decode,
                                                         test_codes)}
    update_metrics(run_dir, "decoder_consistency", report)
    return report


# --------------------------------------------------------------------------- commands

def _progress(args, total, description):
    return tqdm(total=total, desc=description, unit="step", disable=args.quiet, leave=False)


def _dataset_config(args, dataset_spec):
    return {"dataset": dataset_spec, "fashion_mnist_path": args.fashion_mnist_path,
            "image_size": args.image_size, "limit": args.limit, "seed": args.seed}


def _preset_for(args, dataset_spec):
    if args.preset is not None:
        return args.preset
    return "fashion_mnist" if dataset_spec in ("digits", "fashion_mnist") else "cartoon"


def _model_config(args, preset, dataset):
    config = {"preset": preset, "input_shape": list(dataset.image_shape),
              "impl": args.impl, "objective": args.objective}
    if args.latent_dim is not None:
        config["latent_dim"] = args.latent_dim
    if args.objective == "denoising":
        config["noise_std"] = args.noise_std
    return config


def default_batch_size(preset, train_images):
    """The tutorial's batch size (128 Fashion-MNIST, 32 Cartoon), halved down to 16 until an
    epoch has MIN_STEPS_PER_EPOCH steps: BatchNorm's moving statistics (momentum 0.99) need
    a few hundred steps to settle, and a small dataset gives few steps per epoch."""
    batch_size = PRESET_BATCH_SIZE[preset]
    while batch_size > 16 and train_images / batch_size < MIN_STEPS_PER_EPOCH:
        batch_size //= 2
    return batch_size


def _checked_model(model_config):
    try:
        return build_model(model_config)
    except (ValueError, KeyError) as err:
        raise CliError(f"cannot build the {model_config['preset']} model for input shape "
                       f"{tuple(model_config['input_shape'])}: {err}") from None


def command_train(args):
    dataset_spec = check_dataset_spec(args.dataset)
    _check_existing_dir(args.fashion_mnist_path, "--fashion-mnist-path")
    data_config = _dataset_config(args, dataset_spec)
    dataset = load_run_dataset(data_config)
    preset = _preset_for(args, dataset_spec)
    model_config = _model_config(args, preset, dataset)
    model = _checked_model(model_config)
    run_dir = Path(args.out).expanduser() if args.out else default_run_dir(dataset_spec)
    _check_resumable(run_dir, data_config, model_config)
    train_config = {"epochs": args.epochs, "seed": args.seed, "step": args.step,
                    "batch_size": args.batch_size or default_batch_size(
                        preset, len(dataset.x_train))}
    run_dir.mkdir(parents=True, exist_ok=True)
    model = train_model(args, run_dir, model, dataset, {
        "data": data_config, "model": model_config, "train": train_config})
    analyse_run(args, run_dir, model, dataset)
    _say(args, f"run folder: {run_dir}")
    return EXIT_OK


def _check_resumable(run_dir, data_config, model_config):
    """A run folder that already holds a run must hold this one (training then resumes)."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return
    previous = read_json(config_path)
    if previous.get("data") != _jsonable(data_config) or \
            previous.get("model") != _jsonable(model_config):
        raise CliError(f"--out {run_dir}: the folder holds a run with another dataset or "
                       "model; choose another --out (the same options resume that run)")


def train_model(args, run_dir, model, dataset, config):
    """Fit with the Trainer (a checkpoint and loss.csv per epoch), save the weights and
    return the trained model."""
    from pyae import train as train_lib

    train_config = config["train"]
    write_json(run_dir / CONFIG_FILE, config)
    trainer = train_lib.Trainer(model, step=args.step, seed=args.seed,
                                checkpoint_dir=str(run_dir))
    _say(args, f"training the {config['model']['preset']} model (latent {model.latent_dim}, "
               f"{args.objective}) on {len(dataset.x_train)} {dataset.name} images, batch "
               f"{train_config['batch_size']} -> {run_dir}")
    trainer.fit(dataset.x_train, epochs=args.epochs, batch_size=train_config["batch_size"],
                validation_data=dataset.x_test, verbose=0 if args.quiet else 1)
    trainer.model.save_weights(run_dir / WEIGHTS_FILE)
    train_config["chosen_step"] = trainer.chosen_step
    train_config["step_reason"] = trainer.step_reason
    write_json(run_dir / CONFIG_FILE, config)
    return trainer.model


def analyse_run(args, run_dir, model, dataset):
    """Every figure and metric of a freshly trained run, with a progress bar."""
    stages = [
        ("reconstructions", lambda: reconstruction_step(run_dir, model, dataset)),
        ("latent space", lambda: latent_step(run_dir, model, dataset, args.projection,
                                             seed=args.seed)),
        ("samplers", lambda: sampling_step(run_dir, model, dataset, seed=args.seed)),
        ("interpolation", lambda: interpolation_step(run_dir, model, dataset, seed=args.seed)),
        ("loss curves", lambda: loss_curves_step(run_dir)),
    ]
    with _progress(args, len(stages), "analysis") as bar:
        for name, stage in stages:
            bar.set_postfix_str(name)
            try:
                stage()
            except (ValueError, KeyError) as err:
                raise CliError(f"{name} failed after training ({err}); the model is saved in "
                               f"{run_dir}: rerun that step with `pyae ... --run {run_dir}`"
                               ) from err
            bar.update()


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr)


def command_reconstruct(args):
    run_dir, model, dataset = load_run(args.run)
    report = reconstruction_step(run_dir, model, dataset, n=args.n)
    _print_report("reconstruction", report)
    return EXIT_OK


def command_latent(args):
    run_dir, model, dataset = load_run(args.run)
    report = latent_step(run_dir, model, dataset, args.projection, args.max_points,
                         args.seed)
    _print_report("representation", report)
    return EXIT_OK


def command_sample(args):
    run_dir, model, dataset = load_run(args.run)
    with _progress(args, 2, "sampling") as bar:
        report = sampling_step(run_dir, model, dataset, args.samplers, args.n, args.seed)
        bar.update()
        interpolation_step(run_dir, model, dataset, args.interpolation, seed=args.seed)
        bar.update()
    _print_report("samplers", report)
    return EXIT_OK


def command_evaluate(args):
    """Every metric of the run (no figures): reconstruction, representation, samplers,
    decoder consistency."""
    run_dir, model, dataset = load_run(args.run)
    with _progress(args, 4, "evaluate") as bar:
        update_metrics(run_dir, "reconstruction", reconstruction_metrics(
            dataset.x_test, model.reconstruct(dataset.x_test)))
        bar.update()
        update_metrics(run_dir, "representation",
                       representation_metrics(model, dataset, args.seed))
        bar.update()
        train_codes = model.encode(analysis_train_set(dataset, args.seed)[0])
        samplers = fitted_samplers(train_codes, args.samplers, args.seed)
        update_metrics(run_dir, "samplers",
                       sampler_metrics(model, train_codes, samplers, args.n, args.seed))
        bar.update()
        consistency_step(run_dir, model, dataset)
        bar.update()
    print(json.dumps(read_json(run_dir / METRICS_FILE), indent=2, sort_keys=True))
    return EXIT_OK


def _restoration_command(args, section, restore):
    from pyae import plots

    run_dir, model, dataset = load_run(args.run)
    images = dataset.x_test[:args.images]
    result = restore(model, images)
    fig = plots.before_after(result.clean, result.corrupted, result.restored,
                             (result.psnr_before, result.psnr_after), n=args.n,
                             title=f"{section}: PSNR before -> after (dB)")
    plots.save_figure(fig, run_dir / f"{section}.png")
    summary = result.summary()
    update_metrics(run_dir, section, summary)
    _print_report(section, summary)
    return EXIT_OK


def command_denoise(args):
    from pyae import applications

    options = {"noise_std": args.noise_std, "seed": args.seed}
    return _restoration_command(
        args, "denoise", lambda model, images: applications.denoise(model, images, **options))


def command_inpaint(args):
    from pyae import applications

    options = {"mask_fraction": args.mask_fraction, "seed": args.seed}
    return _restoration_command(
        args, "inpaint", lambda model, images: applications.inpaint(model, images, **options))


def find_bench_dir(bench_dir):
    candidates = [Path(bench_dir)] if bench_dir else [
        Path.cwd() / "bench", Path(__file__).resolve().parent.parent / "bench"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CliError(f"no bench folder found (looked in {', '.join(map(str, candidates))}); "
                   "run from a pyae checkout or pass --bench-dir")


def command_bench(args):
    """Run bench/report.py when present (or with --pytest the pytest-benchmark suites)."""
    bench_dir = find_bench_dir(args.bench_dir)
    report_script = bench_dir / "report.py"
    if report_script.is_file() and not args.pytest:
        command = [sys.executable, str(report_script), *args.extra]
    else:
        command = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
                   *args.extra]
    _say(args, "running: " + " ".join(command))
    return subprocess.call(command)


def _print_report(section, report):
    print(json.dumps({section: _jsonable(report)}, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- parser

def _add_common(parser):
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _add_run(parser):
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run folder written by `pyae train`")


def _add_train_parser(commands):
    parser = commands.add_parser(
        "train", help="train an autoencoder and write a run folder with every figure",
        description="Train the tutorial's autoencoder and write one run folder: weights, "
                    "loss.csv, metrics.json, config.json and every figure. Defaults: the "
                    "Fashion-MNIST model (2-D latent) on the bundled offline digits dataset.")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help="digits (default, offline), fashion_mnist, synthetic_faces or "
                             "folder:PATH (a Cartoon Set folder)")
    parser.add_argument("--fashion-mnist-path", metavar="DIR",
                        help="folder with the four Fashion-MNIST IDX .gz files (offline)")
    parser.add_argument("--preset", choices=PRESET_NAMES,
                        help="model: fashion_mnist (28x28x1 -> 2) or cartoon (-> 200); default "
                             "fashion_mnist for digits/fashion_mnist, cartoon otherwise")
    parser.add_argument("--image-size", type=_positive_int,
                        help="resize folder/synthetic images to this size (default 64; the "
                             "tutorial uses 256, a multiple of 32 for the cartoon preset)")
    parser.add_argument("--latent-dim", type=_positive_int, help="latent size (preset default)")
    parser.add_argument("--objective", choices=OBJECTIVE_NAMES, default="vanilla",
                        help="training objective (train with denoising for `pyae denoise`)")
    parser.add_argument("--noise-std", type=_non_negative_float, default=0.3,
                        help="input noise of the denoising objective (default 0.3)")
    parser.add_argument("--impl", choices=("auto", "native", "tf"), default="auto",
                        help="fused op implementation (default auto)")
    parser.add_argument("--step", choices=("auto", "xla", "native"), default="auto",
                        help="train step: XLA-compiled, native op graph, or the faster (auto)")
    parser.add_argument("--epochs", type=_positive_int, default=40, help="default 40")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="default 128 (fashion_mnist preset) or 32 (cartoon), halved "
                             "for small datasets to give 40 steps per epoch (32 on digits)")
    parser.add_argument("--projection", choices=PROJECTION_NAMES, default="pca",
                        help="2-D projection of latents wider than 2 (default pca)")
    parser.add_argument("--out", metavar="DIR",
                        help="run folder (default runs/<dataset>-<timestamp>)")
    parser.add_argument("--limit", type=_positive_int, metavar="N",
                        help="use at most N train and N test images (a folder: read N files)")
    _add_common(parser)
    parser.set_defaults(handler=command_train)


def _add_analysis_parsers(commands):
    parser = commands.add_parser("reconstruct", help="5x5 reconstruction grid + MSE/PSNR/SSIM")
    _add_run(parser)
    parser.add_argument("--n", type=_positive_int, default=25, help="images shown (default 25)")
    _add_common(parser)
    parser.set_defaults(handler=command_reconstruct)

    parser = commands.add_parser("latent", help="latent scatter + representation metrics")
    _add_run(parser)
    parser.add_argument("--projection", choices=PROJECTION_NAMES, default="pca",
                        help="for latents wider than 2 (default pca; the tutorial uses tsne)")
    parser.add_argument("--max-points", type=_positive_int, default=2000,
                        help="test images plotted (default 2000)")
    _add_common(parser)
    parser.set_defaults(handler=command_latent)

    parser = commands.add_parser("sample", help="decode latent samples per sampler, interpolate")
    _add_run(parser)
    parser.add_argument("--samplers", type=_sampler_list, default=list(SAMPLER_NAMES),
                        help=f"comma-separated, from {','.join(SAMPLER_NAMES)} (default all)")
    parser.add_argument("--n", type=_positive_int, default=10, help="samples shown (default 10)")
    parser.add_argument("--interpolation", choices=("lerp", "slerp"), default="lerp")
    _add_common(parser)
    parser.set_defaults(handler=command_sample)

    parser = commands.add_parser("evaluate", help="every metric of a run into metrics.json")
    _add_run(parser)
    parser.add_argument("--samplers", type=_sampler_list, default=list(SAMPLER_NAMES))
    parser.add_argument("--n", type=_positive_int, default=500,
                        help="samples per sampler for the sampler report (default 500)")
    _add_common(parser)
    parser.set_defaults(handler=command_evaluate)


def _add_application_parsers(commands):
    parser = commands.add_parser(
        "denoise", help="add Gaussian noise to test images and reconstruct them",
        description="Denoise noisy test images with a trained run; works best with a model "
                    "trained with `pyae train --objective denoising`. Writes denoise.png and "
                    "PSNR before/after into metrics.json.")
    _add_run(parser)
    parser.add_argument("--noise-std", type=_non_negative_float, default=0.3,
                        help="noise standard deviation (default 0.3)")
    _add_restoration_options(parser, command_denoise)

    parser = commands.add_parser(
        "inpaint", help="blank a random square of test images and fill it in",
        description="Inpaint test images with a random square hole. Writes inpaint.png and "
                    "PSNR before/after into metrics.json.")
    _add_run(parser)
    parser.add_argument("--mask-fraction", type=_fraction, default=0.25,
                        help="fraction of each image masked (default 0.25)")
    _add_restoration_options(parser, command_inpaint)


def _add_restoration_options(parser, handler):
    parser.add_argument("--images", type=_positive_int, default=256,
                        help="test images corrupted for the PSNR (default 256)")
    parser.add_argument("--n", type=_positive_int, default=8, help="images shown (default 8)")
    _add_common(parser)
    parser.set_defaults(handler=handler)


def _add_bench_parser(commands):
    parser = commands.add_parser(
        "bench", help="run the benchmark report (bench/report.py) or suites",
        description="Run bench/report.py if present, else pytest bench/ --benchmark-only. "
                    "Arguments after -- go to that command.")
    parser.add_argument("--bench-dir", metavar="DIR", help="bench folder (default ./bench)")
    parser.add_argument("--pytest", action="store_true",
                        help="run the pytest-benchmark suites even if report.py exists")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(handler=command_bench)


DESCRIPTION = ("Train the tutorial's convolutional autoencoders and reproduce its figures\n"
               "and experiments in one run folder.")
EXAMPLES = """examples:
  pyae train                                  # Fashion-MNIST model on the offline digits
  pyae train --dataset fashion_mnist --fashion-mnist-path DIR --epochs 20
  pyae train --dataset folder:cartoonset10k --preset cartoon --image-size 64 --limit 5000
  pyae train --objective denoising --out runs/denoise
  pyae latent --run runs/denoise --projection tsne
  pyae sample --run runs/denoise --samplers uniform,normal
  pyae denoise --run runs/denoise --noise-std 0.3
  pyae inpaint --run runs/denoise --mask-fraction 0.25
  pyae evaluate --run runs/denoise

Bad input exits with status 2 and one error line; PYAE_DEBUG=1 shows the traceback."""


def build_parser():
    parser = _Parser(prog="pyae", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_train_parser(commands)
    _add_analysis_parsers(commands)
    _add_application_parsers(commands)
    _add_bench_parser(commands)
    return parser


USER_ERRORS = (CliError, FileNotFoundError, NotADirectoryError, ValueError, KeyError)


def main(argv=None):
    """Entry point of the ``pyae`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "extra", None) and args.extra[0] == "--":
        args.extra = args.extra[1:]
    try:
        return args.handler(args)
    except USER_ERRORS as err:
        if os.environ.get("PYAE_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"pyae {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
