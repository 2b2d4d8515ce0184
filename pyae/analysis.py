"""The analyses of a trained run: figures into its folder, numbers into its metrics.json.

Each ``*_step(run_dir, model, dataset, ...)`` makes one figure and one metrics section and
returns the section; :func:`analyse_run` runs all of them after training. They take plain
values (no argparse), so a notebook calls them as the ``pyae`` command does::

    run_dir, model, dataset = pyae.runs.load_run("runs/demo")
    pyae.analysis.latent_step(run_dir, model, dataset, projection="tsne")
"""
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pyae import evaluate, latent, plots, runs

SAMPLER_NAMES = ("uniform", "normal", "gaussian", "gmm")
MAX_ANALYSIS_IMAGES = 10_000


def _subsample(count, limit, seed):
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def reconstruction_step(run_dir, model, dataset, n=25):
    """reconstructions.png (the tutorial's 5x5 grid) and reconstruction metrics on test."""
    reconstructions = model.reconstruct(dataset.x_test)
    labels = None if dataset.y_test is None else dataset.y_test[:n]
    fig = plots.reconstruction_grid(dataset.x_test[:n], reconstructions[:n], labels,
                                    dataset.label_names, n=n,
                                    title=f"Reconstructions ({dataset.name} test set)")
    plots.save_figure(fig, run_dir / "reconstructions.png")
    report = reconstruction_metrics(dataset.x_test, reconstructions)
    runs.update_metrics(run_dir, "reconstruction", report)
    return report


def reconstruction_metrics(images, reconstructions):
    """MSE, PSNR and SSIM of the reconstructions (as ``evaluate.reconstruction_report``)."""
    return {"mse": evaluate.mse(images, reconstructions),
            "psnr": evaluate.psnr(images, reconstructions),
            "ssim": evaluate.ssim(images, reconstructions)}


def latent_step(run_dir, model, dataset, projection=None, max_points=2000, seed=0):
    """latent_scatter.png (2-D latents directly, else projected by ``projection``, default
    "pca") and representation metrics. A projection asked for a 2-D latent is not used,
    with a warning."""
    chosen = _subsample(len(dataset.x_test), max_points, seed)
    codes = model.encode(dataset.x_test[chosen])
    labels = None if dataset.y_test is None else dataset.y_test[chosen]
    if codes.shape[1] == 2:
        if projection is not None:
            warnings.warn(f"projection {projection!r} not used: the latent space is 2-D and "
                          "is plotted as it is", stacklevel=2)
        fig = plots.latent_scatter(codes, labels, dataset.label_names,
                                   title=f"Projection of 2D Latent-Space ({dataset.name})")
    else:
        projection = projection or "pca"
        fig = plots.projection_scatter(codes, labels, dataset.label_names, method=projection,
                                       seed=seed, title=f"{projection} of the {codes.shape[1]}"
                                                        f"-D latent space ({dataset.name})")
    plots.save_figure(fig, run_dir / "latent_scatter.png")
    report = representation_metrics(model, dataset, seed)
    runs.update_metrics(run_dir, "representation", report)
    return report


def analysis_train_set(dataset, seed):
    """At most MAX_ANALYSIS_IMAGES training images (and labels): what the samplers and
    probes are fitted on, so that 60k or 100k images do not make k-NN searches crawl."""
    chosen = _subsample(len(dataset.x_train), MAX_ANALYSIS_IMAGES, seed)
    labels = None if dataset.y_train is None else dataset.y_train[chosen]
    return dataset.x_train[chosen], labels


def representation_metrics(model, dataset, seed):
    """Linear probe, k-NN and k-means quality of the codes (needs labels)."""
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
    return {name: latent.get_sampler(name, seed=seed).fit(train_codes) for name in names}


def sampling_step(run_dir, model, dataset, sampler_names=SAMPLER_NAMES, n=10, seed=0,
                  report_size=500):
    """samples_<sampler>.png per sampler and the sampler report (holes, precision/recall)."""
    train_codes = model.encode(analysis_train_set(dataset, seed)[0])
    samplers = fitted_samplers(train_codes, sampler_names, seed)
    for name, sampler in samplers.items():
        codes = sampler.sample(n, seed=seed)
        fig = plots.sample_grid(model.decode(codes), f"Decoded samples: {name} sampler",
                                captions=_latent_captions(codes))
        plots.save_figure(fig, run_dir / f"samples_{name}.png")
    report = sampler_metrics(model, train_codes, samplers, report_size, seed)
    runs.update_metrics(run_dir, "samplers", report)
    return report


def sampler_metrics(model, train_codes, samplers, report_size, seed):
    """Hole rate, precision/recall/density/coverage and decoder consistency per sampler."""
    return evaluate.sampler_report(train_codes, samplers, n=report_size, seed=seed,
                                   encoder=model.encode, decoder=model.decode)


def _interpolation_pairs(dataset, pairs, seed):
    """Indices of ``pairs`` test images and their partners, of different labels if known."""
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
    path = Path(run_dir) / runs.LOSS_FILE
    if not path.is_file():
        raise runs.RunFolderError(f"{path}: no loss.csv in the run folder")
    rows = runs.read_loss_csv(path)
    if not rows:
        raise runs.RunFolderError(f"{path}: loss.csv is empty")
    plots.save_figure(plots.loss_curves(rows), Path(run_dir) / "loss_curves.png")


def consistency_step(run_dir, model, dataset):
    """Mean ||E(D(z)) - z|| over the test codes (per sampler it is in the sampler report)."""
    test_codes = model.encode(dataset.x_test[:MAX_ANALYSIS_IMAGES])
    report = {"test_codes": evaluate.decoder_consistency(model.encode, model.decode,
                                                         test_codes)}
    runs.update_metrics(run_dir, "decoder_consistency", report)
    return report


# --------------------------------------------------------------------------- whole runs

def analyse_run(run_dir, model, dataset, projection=None, seed=0, verbose=True):
    """Every figure and metric of a freshly trained run, with a progress bar."""
    stages = [
        ("reconstructions", lambda: reconstruction_step(run_dir, model, dataset)),
        ("latent space", lambda: latent_step(run_dir, model, dataset, projection, seed=seed)),
        ("samplers", lambda: sampling_step(run_dir, model, dataset, seed=seed)),
        ("interpolation", lambda: interpolation_step(run_dir, model, dataset, seed=seed)),
        ("loss curves", lambda: loss_curves_step(run_dir)),
    ]
    with progress_bar(len(stages), "analysis", verbose) as bar:
        for name, stage in stages:
            bar.set_postfix_str(name)
            try:
                stage()
            except (ValueError, KeyError) as err:
                raise runs.RunFolderError(
                    f"{name} failed after training ({err}); the model is saved in {run_dir}: "
                    f"rerun that step with `pyae ... --run {run_dir}`") from err
            bar.update()


def sample_and_interpolate(run_dir, model, dataset, sampler_names=SAMPLER_NAMES, n=10,
                           interpolation="lerp", seed=0, verbose=True):
    """The sampler figures and report, then the interpolation figure; the sampler report."""
    with progress_bar(2, "sampling", verbose) as bar:
        report = sampling_step(run_dir, model, dataset, sampler_names, n, seed)
        bar.update()
        interpolation_step(run_dir, model, dataset, interpolation, seed=seed)
        bar.update()
    return report


def evaluate_run(run_dir, model, dataset, sampler_names=SAMPLER_NAMES, report_size=500,
                 seed=0, verbose=True):
    """Every metric of the run (no figures): reconstruction, representation, samplers,
    decoder consistency; the whole metrics.json afterwards."""
    with progress_bar(4, "evaluate", verbose) as bar:
        runs.update_metrics(run_dir, "reconstruction", reconstruction_metrics(
            dataset.x_test, model.reconstruct(dataset.x_test)))
        bar.update()
        runs.update_metrics(run_dir, "representation",
                            representation_metrics(model, dataset, seed))
        bar.update()
        train_codes = model.encode(analysis_train_set(dataset, seed)[0])
        samplers = fitted_samplers(train_codes, sampler_names, seed)
        runs.update_metrics(run_dir, "samplers",
                            sampler_metrics(model, train_codes, samplers, report_size, seed))
        bar.update()
        consistency_step(run_dir, model, dataset)
        bar.update()
    return runs.read_metrics(run_dir)


def restoration_step(run_dir, model, dataset, section, restore, images=256, n=8):
    """``<section>.png`` (clean, corrupted, restored) and PSNR before/after of
    ``restore(model, images)`` (an :mod:`pyae.applications` function) on test images."""
    result = restore(model, dataset.x_test[:images])
    fig = plots.before_after(result.clean, result.corrupted, result.restored,
                             (result.psnr_before, result.psnr_after), n=n,
                             title=f"{section}: PSNR before -> after (dB)")
    plots.save_figure(fig, run_dir / f"{section}.png")
    summary = result.summary()
    runs.update_metrics(run_dir, section, summary)
    return summary


def progress_bar(total, description, verbose=True):
    """A transient bar on a terminal; nothing when quiet or when the output is redirected
    (a log file would keep every redraw)."""
    return tqdm(total=total, desc=description, unit="step", leave=False,
                disable=None if verbose else True)
