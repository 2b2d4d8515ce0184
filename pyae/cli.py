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
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_DATASET = "digits"
DATASET_NAMES = ("digits", "fashion_mnist", "synthetic_faces")
PRESET_NAMES = ("fashion_mnist", "cartoon")
OBJECTIVE_NAMES = ("vanilla", "denoising", "sparse", "contractive", "variational")
SAMPLER_NAMES = ("uniform", "normal", "gaussian", "gmm")
PROJECTION_NAMES = ("pca", "tsne")


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


# --------------------------------------------------------------------------- TensorFlow

def import_tensorflow_quietly():
    """Import TensorFlow without its C++ start-up lines on the console.

    TF 2.21 writes them (oneDNN notice, CUDA driver probing) before its logging is set up,
    so TF_CPP_MIN_LOG_LEVEL cannot hold them back: stderr is captured while TF imports and
    shown only if the import fails. Later C++ lines follow TF_CPP_MIN_LOG_LEVEL, 3 here
    unless the user set it: a CPU-only machine would otherwise print "failed call to cuInit"
    as an error on the first use of a device, and real failures reach Python as exceptions."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    console = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(console, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(console, 2)
            os.close(console)


# --------------------------------------------------------------------------- commands
# Each command turns its arguments into plain values and calls pyae.runs (the run folder)
# and pyae.analysis (figures and metrics). It checks what it can without TensorFlow first
# (paths, the run folder), then imports it quietly: a bad path answers at once.

def _dataset_config(args, dataset_spec):
    return {"dataset": dataset_spec, "fashion_mnist_path": args.fashion_mnist_path,
            "image_size": args.image_size, "limit": args.limit, "seed": args.seed}


def _model_config(args, preset, dataset):
    config = {"preset": preset, "input_shape": list(dataset.image_shape),
              "impl": args.impl, "objective": args.objective}
    if args.latent_dim is not None:
        config["latent_dim"] = args.latent_dim
    if args.objective == "denoising":
        config["noise_std"] = args.noise_std
    return config


def _check_impl_and_step(impl, step):
    if impl == "native" and step == "xla":
        raise CliError("--impl native --step xla: the native op cannot run inside an "
                       "XLA-compiled step; use --step native (or auto) with --impl native, "
                       "or --impl auto/tf with --step xla")


def command_train(args):
    _check_impl_and_step(args.impl, args.step)
    dataset_spec = check_dataset_spec(args.dataset)
    _check_existing_dir(args.fashion_mnist_path, "--fashion-mnist-path")
    import_tensorflow_quietly()
    from pyae import analysis, runs

    data_config = _dataset_config(args, dataset_spec)
    dataset = runs.load_run_dataset(data_config)
    try:
        runs.check_dataset_size(dataset)
    except runs.RunFolderError as err:
        raise CliError(f"--limit {args.limit}: {err}" if args.limit else err) from None
    preset = args.preset or runs.default_preset(dataset_spec)
    model_config = _model_config(args, preset, dataset)
    model = runs.build_model(model_config, seed=args.seed)
    run_dir = Path(args.out).expanduser() if args.out else runs.default_run_dir(dataset_spec)
    train_config = {"epochs": args.epochs, "seed": args.seed, "step": args.step,
                    "batch_size": args.batch_size}
    config = {"data": data_config, "model": model_config, "train": train_config}
    runs.check_resumable(run_dir, config)  # a resumed run keeps its batch size
    if train_config["batch_size"] is None:
        train_config["batch_size"] = runs.default_batch_size(preset, len(dataset.x_train))
    _say(args, f"training the {preset} model (latent {model.latent_dim}, {args.objective}) "
               f"on {len(dataset.x_train)} {dataset.name} images, batch "
               f"{train_config['batch_size']} -> {run_dir}")
    model = runs.train_run(run_dir, model, dataset, config, verbose=not args.quiet)
    analysis.analyse_run(run_dir, model, dataset, args.projection, args.seed,
                         verbose=not args.quiet)
    _say(args, f"run folder: {run_dir}")
    return EXIT_OK


def command_reconstruct(args):
    run = _load_run(args.run)
    from pyae import analysis

    report = analysis.reconstruction_step(*run, n=args.n)
    _print_report("reconstruction", report)
    return EXIT_OK


def command_latent(args):
    run = _load_run(args.run)
    from pyae import analysis

    report = analysis.latent_step(*run, args.projection, args.max_points,
                                  args.seed)
    _print_report("representation", report)
    return EXIT_OK


def command_sample(args):
    run = _load_run(args.run)
    from pyae import analysis

    report = analysis.sample_and_interpolate(
        *run, args.samplers, args.n, args.interpolation, args.seed,
        verbose=not args.quiet)
    _print_report("samplers", report)
    return EXIT_OK


def command_evaluate(args):
    run = _load_run(args.run)
    from pyae import analysis

    metrics = analysis.evaluate_run(*run, args.samplers, args.n,
                                    args.seed, verbose=not args.quiet)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return EXIT_OK


def command_denoise(args):
    run = _load_run(args.run)
    from pyae import analysis, applications

    def restore(model, images):
        return applications.denoise(model, images, noise_std=args.noise_std, seed=args.seed)

    summary = analysis.restoration_step(*run, "denoise", restore,
                                        args.images, args.n)
    _print_report("denoise", summary)
    return EXIT_OK


def command_inpaint(args):
    run = _load_run(args.run)
    from pyae import analysis, applications

    def restore(model, images):
        return applications.inpaint(model, images, mask_fraction=args.mask_fraction,
                                    seed=args.seed)

    summary = analysis.restoration_step(*run, "inpaint", restore,
                                        args.images, args.n)
    _print_report("inpaint", summary)
    return EXIT_OK


def _load_run(run_dir):
    """(run folder, model, dataset) of ``--run DIR``; the option named in its errors."""
    from pyae import runs

    try:
        runs.check_run_dir(run_dir)
    except runs.RunFolderError as err:
        raise CliError(f"--run {err}") from None
    import_tensorflow_quietly()
    return runs.load_run(run_dir)


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


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr)


def _print_report(section, report):
    from pyae import runs

    print(json.dumps({section: runs.jsonable(report)}, indent=2, sort_keys=True))


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
    parser.add_argument("--projection", choices=PROJECTION_NAMES,
                        help="2-D projection of latents wider than 2 (default pca); a 2-D "
                             "latent is plotted as it is")
    parser.add_argument("--out", metavar="DIR",
                        help="run folder (default runs/<dataset>-<timestamp>)")
    parser.add_argument("--limit", type=_positive_int, metavar="N",
                        help="use at most N train and N test images (a folder: read N files)")
    _add_common(parser)
    parser.set_defaults(handler=command_train)


def _add_run_command(commands, name, help_text, description):
    """A subcommand that reads a run folder (``--run DIR``)."""
    parser = commands.add_parser(name, help=help_text, description=description)
    _add_run(parser)
    return parser


def _finish_command(parser, handler):
    _add_common(parser)
    parser.set_defaults(handler=handler)


def _add_samplers(parser):
    parser.add_argument("--samplers", type=_sampler_list, default=list(SAMPLER_NAMES),
                        help=f"comma-separated, from {','.join(SAMPLER_NAMES)} (default all)")


def _add_analysis_parsers(commands):
    parser = _add_run_command(
        commands, "reconstruct", "5x5 reconstruction grid + MSE/PSNR/SSIM",
        "Reconstruct test images with a trained run: writes reconstructions.png (originals "
        "above reconstructions, as the tutorial shows them) and the test set's MSE, PSNR and "
        "SSIM into metrics.json.")
    parser.add_argument("--n", type=_positive_int, default=25, help="images shown (default 25)")
    _finish_command(parser, command_reconstruct)

    parser = _add_run_command(
        commands, "latent", "latent scatter + representation metrics",
        "Plot the test set's codes (latent_scatter.png: a 2-D latent as it is, a wider one "
        "projected by PCA or t-SNE) and score them with labels: linear probe, k-NN accuracy, "
        "k-means NMI/ARI, into metrics.json.")
    parser.add_argument("--projection", choices=PROJECTION_NAMES,
                        help="for latents wider than 2 (default pca; the tutorial uses tsne); "
                             "a 2-D latent is plotted as it is")
    parser.add_argument("--max-points", type=_positive_int, default=2000,
                        help="test images plotted (default 2000)")
    _finish_command(parser, command_latent)

    parser = _add_run_command(
        commands, "sample", "decode latent samples per sampler, interpolate",
        "Fit each sampler to the training codes and decode its samples "
        "(samples_<sampler>.png), report how often they land in the latent space's holes, and "
        "decode paths between test images (interpolation.png).")
    _add_samplers(parser)
    parser.add_argument("--n", type=_positive_int, default=10, help="samples shown (default 10)")
    parser.add_argument("--interpolation", choices=("lerp", "slerp"), default="lerp",
                        help="straight (lerp, default) or spherical (slerp) paths")
    _finish_command(parser, command_sample)

    parser = _add_run_command(
        commands, "evaluate", "every metric of a run into metrics.json",
        "Compute every metric of a trained run without figures (reconstruction, "
        "representation, samplers, decoder consistency), write them into metrics.json and "
        "print the whole file.")
    _add_samplers(parser)
    parser.add_argument("--n", type=_positive_int, default=500,
                        help="samples per sampler for the sampler report (default 500)")
    _finish_command(parser, command_evaluate)


def _add_application_parsers(commands):
    parser = _add_run_command(
        commands, "denoise", "add Gaussian noise to test images and reconstruct them",
        "Denoise noisy test images with a trained run; works best with a model trained with "
        "`pyae train --objective denoising`. Writes denoise.png and PSNR before/after into "
        "metrics.json.")
    parser.add_argument("--noise-std", type=_non_negative_float, default=0.3,
                        help="noise standard deviation (default 0.3)")
    _add_restoration_options(parser, command_denoise)

    parser = _add_run_command(
        commands, "inpaint", "blank a random square of test images and fill it in",
        "Inpaint test images with a random square hole. Writes inpaint.png and PSNR "
        "before/after into metrics.json.")
    parser.add_argument("--mask-fraction", type=_fraction, default=0.25,
                        help="fraction of each image masked (default 0.25)")
    _add_restoration_options(parser, command_inpaint)


def _add_restoration_options(parser, handler):
    parser.add_argument("--images", type=_positive_int, default=256,
                        help="test images corrupted for the PSNR (default 256)")
    parser.add_argument("--n", type=_positive_int, default=8, help="images shown (default 8)")
    _finish_command(parser, handler)


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


@contextlib.contextmanager
def _warnings_as_lines(command):
    """Warnings (a damaged file set aside, images skipped...) as one line each on stderr, like
    errors, without the source line Python shows by default. The command owns its console:
    the lines are printed whoever else listens for warnings (a test runner records them)."""
    def show(message, *_args, **_kwargs):
        print(f"pyae {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# FloatingPointError: training stopped on a NaN/Inf loss (pyae.train.NonFiniteLossError names
# the epoch, the step and the culprit; the last complete epoch's checkpoint is intact).
USER_ERRORS = (CliError, FileNotFoundError, NotADirectoryError, ValueError, KeyError,
               FloatingPointError)


def main(argv=None):
    """Entry point of the ``pyae`` console script; returns the exit status.

    The arguments are parsed before anything imports TensorFlow (the commands import it),
    so ``--help`` and usage errors answer at once."""
    args = build_parser().parse_args(argv)
    if getattr(args, "extra", None) and args.extra[0] == "--":
        args.extra = args.extra[1:]
    try:
        with _warnings_as_lines(args.command):
            return args.handler(args)
    except USER_ERRORS as err:
        if os.environ.get("PYAE_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"pyae {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
