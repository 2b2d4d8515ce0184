"""Matplotlib figures for autoencoder runs: the tutorial's grids, scatters and curves.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot), so importing or
using this module never changes matplotlib's global backend or opens a window; PNGs are
rendered with the Agg canvas. Images are NHWC or NHW floats in [0, 1]; one channel is drawn
in gray, three channels as RGB.
"""
import math
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GRID_COLUMNS = 5
CELL_INCHES = 1.6
CAPTION_FONTSIZE = 8

__all__ = [
    "before_after",
    "interpolation_strip",
    "latent_scatter",
    "loss_curves",
    "projection_scatter",
    "reconstruction_grid",
    "sample_grid",
    "save_figure",
]


def save_figure(fig, path, dpi=100):
    """Write ``fig`` as an image at ``path`` (folders created) and release it; returns path."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    _close(fig)
    return path


def _close(fig):
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()


def _new_figure(width, height):
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _as_image_batch(images, name):
    """Float array of shape (N, H, W) or (N, H, W, C) with C in {1, 3, 4}."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3 or (batch.ndim == 4 and batch.shape[-1] in (1, 3, 4)):
        return batch
    raise ValueError(f"{name}: expected images shaped (N, H, W) or (N, H, W, C) with C in "
                     f"1, 3 or 4, got shape {batch.shape}")


def _show_image(ax, image):
    """Draw one image without axis decorations; gray for one channel, RGB otherwise."""
    ax.axis("off")
    image = np.clip(image, 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)


def _caption(ax, text):
    ax.text(0.5, -0.12, text, fontsize=CAPTION_FONTSIZE, ha="center", va="top",
            transform=ax.transAxes)


def _finish_grid(fig, title, hspace, wspace=0.1, title_inches=0.55):
    """Suptitle plus margins that leave ``title_inches`` at the top for the title."""
    fig.suptitle(title)
    height = fig.get_figheight()
    fig.subplots_adjust(top=1.0 - title_inches / height, bottom=0.3 / height, left=0.02, right=0.98,
                        hspace=hspace, wspace=wspace)


def _label_text(label, label_names):
    if label_names is not None:
        try:
            return str(label_names[int(label)])
        except (IndexError, KeyError, TypeError, ValueError):
            pass
    return str(label)


def _grid_shape(count, columns=GRID_COLUMNS):
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def reconstruction_grid(originals, reconstructions, labels=None, label_names=None, n=25,
                        title="Reconstructions"):
    """Paired rows, five images wide: originals above, reconstructions below, label under each.

    ``n`` images (25 gives the tutorial's 5 x 5 grid of reconstructions); 2 * n axes.
    """
    originals = _as_image_batch(originals, "originals")
    reconstructions = _as_image_batch(reconstructions, "reconstructions")
    if originals.shape[0] != reconstructions.shape[0]:
        raise ValueError(f"originals and reconstructions differ in count: {originals.shape[0]} "
                         f"vs {reconstructions.shape[0]}")
    count = min(int(n), originals.shape[0])
    if count < 1:
        raise ValueError(f"reconstruction_grid needs at least one image, got n={n}")
    group_rows, columns = _grid_shape(count)
    fig = _new_figure(columns * CELL_INCHES, 2 * group_rows * CELL_INCHES + 0.9)
    for index in range(count):
        group, column = divmod(index, columns)
        top = fig.add_subplot(2 * group_rows, columns, 2 * group * columns + column + 1)
        _show_image(top, originals[index])
        bottom = fig.add_subplot(2 * group_rows, columns, (2 * group + 1) * columns + column + 1)
        _show_image(bottom, reconstructions[index])
        if labels is not None:
            _caption(bottom, _label_text(labels[index], label_names))
    _finish_grid(fig, f"{title}\n(odd rows: original, even rows: reconstruction)", 0.35,
                 title_inches=0.8)
    return fig


def _scatter_groups(ax, points, labels, label_names):
    """Scatter points, one colour and one legend entry per distinct label."""
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5)
        return
    labels = np.asarray(labels)
    if labels.shape[0] != points.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries for {points.shape[0]} points")
    colours = _label_colours(len(np.unique(labels)))
    for colour, label in zip(colours, np.unique(labels)):
        chosen = labels == label
        ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, color=colour,
                   label=_label_text(label, label_names))
    ax.legend(loc="best", fontsize=CAPTION_FONTSIZE, markerscale=3, framealpha=0.7)


def _label_colours(count):
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _as_points(points, name):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name}: expected points shaped (N, 2), got shape {points.shape}")
    return points


def latent_scatter(latents2d, labels=None, label_names=None,
                   title="Projection of 2D Latent-Space"):
    """The tutorial's scatter of a 2-D latent space, coloured by label with a legend."""
    points = _as_points(latents2d, "latents2d")
    fig = _new_figure(7, 7)
    ax = fig.add_subplot(1, 1, 1)
    _scatter_groups(ax, points, labels, label_names)
    ax.set_xlabel("Dimension-1")
    ax.set_ylabel("Dimension-2")
    ax.set_title(title)
    return fig


PROJECTION_NAMES = {"pca": "PCA", "tsne": "t-SNE"}


def projection_scatter(latents, labels=None, label_names=None, method="pca", title=None,
                       seed=0):
    """Scatter of latents projected to 2-D by ``method`` ("pca" or "tsne").

    ``latents`` already projected (N, 2) are drawn as given; wider ones are projected here
    with ``pyae.latent.project(latents, method, seed)``.
    """
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim == 2 and latents.shape[1] > 2:
        from pyae.latent import project

        latents = project(latents, method=method, seed=seed)
    points = _as_points(latents, "latents")
    method_name = PROJECTION_NAMES.get(method, str(method))
    fig = _new_figure(7, 7)
    ax = fig.add_subplot(1, 1, 1)
    _scatter_groups(ax, points, labels, label_names)
    ax.set_xlabel(f"{method_name}-1")
    ax.set_ylabel(f"{method_name}-2")
    ax.set_title(title or f"{method_name} projection of the latent space")
    return fig


def sample_grid(images, title, captions=None, columns=GRID_COLUMNS):
    """Decoded samples in a grid five wide, an optional caption (e.g. the latent) under each."""
    images = _as_image_batch(images, "images")
    count = images.shape[0]
    if count < 1:
        raise ValueError("sample_grid needs at least one image")
    if captions is not None and len(captions) != count:
        raise ValueError(f"{len(captions)} captions for {count} images")
    rows, columns = _grid_shape(count, columns)
    fig = _new_figure(columns * CELL_INCHES, rows * (CELL_INCHES + 0.2) + 0.6)
    for index in range(count):
        ax = fig.add_subplot(rows, columns, index + 1)
        _show_image(ax, images[index])
        if captions is not None:
            _caption(ax, str(captions[index]))
    _finish_grid(fig, title, 0.4)
    return fig


def interpolation_strip(images, title="Latent interpolation"):
    """One row per interpolation path: images (steps, H, W[, C]) or (paths, steps, H, W, C)."""
    strips = np.asarray(images, dtype=np.float32)
    if strips.ndim == 5 or (strips.ndim == 4 and strips.shape[-1] not in (1, 3, 4)):
        paths = [_as_image_batch(strip, "images") for strip in strips]
    else:
        paths = [_as_image_batch(strips, "images")]
    steps = paths[0].shape[0]
    if steps < 1:
        raise ValueError("interpolation_strip needs at least one step")
    fig = _new_figure(steps * CELL_INCHES * 0.8, len(paths) * CELL_INCHES * 0.8 + 0.6)
    for row, path in enumerate(paths):
        for step in range(steps):
            ax = fig.add_subplot(len(paths), steps, row * steps + step + 1)
            _show_image(ax, path[step])
    _finish_grid(fig, title, 0.05, 0.05)
    return fig


def _history_columns(history):
    """{metric: [value per epoch]} from a list of per-epoch dicts or a dict of lists."""
    if isinstance(history, dict):
        return {key: list(values) for key, values in history.items()}
    columns = {}
    for record in history:
        for key, value in record.items():
            columns.setdefault(key, []).append(value)
    return columns


def _numeric(values):
    if values is None:
        return None
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def loss_curves(history, title="Training loss"):
    """Train and validation loss per epoch from ``Trainer.fit``'s history (or loss.csv rows)."""
    columns = _history_columns(history)
    loss_keys = [key for key in columns if "loss" in key]
    if not loss_keys:
        raise ValueError(f"history has no loss column; columns: {sorted(columns)}")
    epochs = _numeric(columns.get("epoch"))
    fig = _new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for key in loss_keys:
        values = _numeric(columns[key])
        if values is None:
            continue
        x = epochs if epochs is not None and len(epochs) == len(values) else \
            np.arange(1, len(values) + 1)
        style = "--" if key.startswith("val") else "-"
        ax.plot(x, values, style, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return fig


def _psnr_pair(psnr_values, count):
    """(before, after) per-image PSNR arrays, or (None, None)."""
    if psnr_values is None:
        return None, None
    if isinstance(psnr_values, dict):
        before, after = psnr_values.get("before"), psnr_values.get("after")
    else:
        before, after = psnr_values
    before = None if before is None else np.broadcast_to(np.asarray(before, float), (count,))
    after = None if after is None else np.broadcast_to(np.asarray(after, float), (count,))
    return before, after


def before_after(clean, corrupted, restored, psnr_values=None, n=8, title="Restoration"):
    """Three rows (clean, corrupted, restored) of ``n`` columns, PSNR under the lower rows.

    ``psnr_values`` is (psnr_before, psnr_after) per image (or a dict with those keys).
    """
    batches = [_as_image_batch(images, name) for images, name in
               ((clean, "clean"), (corrupted, "corrupted"), (restored, "restored"))]
    count = min(int(n), *(batch.shape[0] for batch in batches))
    if count < 1:
        raise ValueError("before_after needs at least one image")
    before, after = _psnr_pair(psnr_values, min(batch.shape[0] for batch in batches))
    row_titles = ("clean", "corrupted", "restored")
    fig = _new_figure(count * CELL_INCHES, 3 * (CELL_INCHES + 0.2) + 0.6)
    for row, batch in enumerate(batches):
        for column in range(count):
            ax = fig.add_subplot(3, count, row * count + column + 1)
            _show_image(ax, batch[column])
            if column == 0:
                ax.set_title(row_titles[row], fontsize=CAPTION_FONTSIZE, loc="left")
            psnr_row = {1: before, 2: after}.get(row)
            if psnr_row is not None:
                _caption(ax, f"{psnr_row[column]:.1f} dB")
    _finish_grid(fig, title, 0.4)
    return fig
