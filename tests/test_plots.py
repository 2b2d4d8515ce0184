"""pyae.plots: figure layout (axes counts), PNG output, grayscale and RGB, bad shapes."""
import importlib
import os

import matplotlib
import numpy as np
import pytest

from pyae import plots

RNG = np.random.default_rng(0)


def gray_images(count, size=8):
    return RNG.random((count, size, size, 1), dtype=np.float32)


def rgb_images(count, size=8):
    return RNG.random((count, size, size, 3), dtype=np.float32)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def assert_png_written(fig, path):
    saved = plots.save_figure(fig, path)
    assert saved == path
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_leaves_backend_and_pyplot_alone():
    backend_before = matplotlib.get_backend()
    importlib.reload(plots)
    plots.save_figure(plots.loss_curves([{"epoch": 1, "loss": 1.0}]), os.devnull)
    assert matplotlib.get_backend() == backend_before
    assert not hasattr(plots, "plt")


@pytest.mark.parametrize("make_images", [gray_images, rgb_images])
def test_reconstruction_grid_pairs_each_image(tmp_path, make_images):
    originals, reconstructions = make_images(25), make_images(25)
    labels = np.arange(25) % 10
    names = [f"class{i}" for i in range(10)]
    fig = plots.reconstruction_grid(originals, reconstructions, labels, names, n=25)
    assert len(image_axes(fig)) == 50
    captions = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert captions.count("class3") == 3
    assert_png_written(fig, tmp_path / "grid.png")


def test_reconstruction_grid_accepts_nhw_and_small_n(tmp_path):
    images = RNG.random((7, 8, 8), dtype=np.float32)
    fig = plots.reconstruction_grid(images, images, n=25)
    assert len(image_axes(fig)) == 14
    assert_png_written(fig, tmp_path / "small.png")


def test_reconstruction_grid_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="5 vs 4"):
        plots.reconstruction_grid(gray_images(5), gray_images(4))


def test_latent_scatter_has_legend_per_label(tmp_path):
    points = RNG.normal(size=(60, 2))
    labels = np.arange(60) % 3
    fig = plots.latent_scatter(points, labels, ["a", "b", "c"], title="latents")
    assert len(fig.axes) == 1
    legend = fig.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["a", "b", "c"]
    assert_png_written(fig, tmp_path / "scatter.png")


def test_latent_scatter_without_labels_and_bad_shape(tmp_path):
    fig = plots.latent_scatter(RNG.normal(size=(20, 2)))
    assert fig.axes[0].get_legend() is None
    assert_png_written(fig, tmp_path / "plain.png")
    with pytest.raises(ValueError, match=r"\(20, 3\)"):
        plots.latent_scatter(RNG.normal(size=(20, 3)))


def test_projection_scatter_names_the_method(tmp_path):
    fig = plots.projection_scatter(RNG.normal(size=(30, 2)), np.arange(30) % 2, method="tsne")
    assert fig.axes[0].get_xlabel() == "t-SNE-1"
    assert "t-SNE" in fig.axes[0].get_title()
    assert_png_written(fig, tmp_path / "tsne.png")


def test_projection_scatter_projects_wide_latents():
    fig = plots.projection_scatter(RNG.normal(size=(40, 6)), np.arange(40) % 4, method="pca")
    assert fig.axes[0].get_xlabel() == "PCA-1"
    assert len(fig.axes[0].collections) == 4  # one scatter per label
    with pytest.raises(ValueError, match=r"\(40, 1\)"):
        plots.projection_scatter(RNG.normal(size=(40, 1)))


def test_sample_grid_with_captions(tmp_path):
    fig = plots.sample_grid(rgb_images(10), "uniform", captions=[f"z{i}" for i in range(10)])
    assert len(image_axes(fig)) == 10
    assert fig._suptitle.get_text() == "uniform"
    assert_png_written(fig, tmp_path / "samples.png")
    with pytest.raises(ValueError, match="3 captions for 10 images"):
        plots.sample_grid(rgb_images(10), "x", captions=["a", "b", "c"])


def test_interpolation_strip_one_and_several_paths(tmp_path):
    fig = plots.interpolation_strip(gray_images(8), "lerp")
    assert len(image_axes(fig)) == 8
    assert_png_written(fig, tmp_path / "one.png")
    fig = plots.interpolation_strip(RNG.random((3, 6, 8, 8, 3)), "slerp")
    assert len(image_axes(fig)) == 18
    assert_png_written(fig, tmp_path / "three.png")


def test_loss_curves_from_records_and_columns(tmp_path):
    records = [{"epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e} for e in range(1, 5)]
    fig = plots.loss_curves(records)
    assert len(fig.axes) == 1
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["loss", "val_loss"]
    assert_png_written(fig, tmp_path / "loss.png")
    fig = plots.loss_curves({"loss": [3.0, 2.0, 1.0]})
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="no loss column"):
        plots.loss_curves([{"epoch": 1, "psnr": 3.0}])


def test_before_after_three_rows_with_psnr(tmp_path):
    clean, corrupted, restored = gray_images(6), gray_images(6), gray_images(6)
    fig = plots.before_after(clean, corrupted, restored, (np.full(6, 12.0), np.full(6, 20.5)))
    assert len(image_axes(fig)) == 18
    captions = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert captions.count("12.0 dB") == 6 and captions.count("20.5 dB") == 6
    assert_png_written(fig, tmp_path / "before_after.png")


def test_bad_image_shape_is_named():
    with pytest.raises(ValueError, match=r"images.*\(4, 8, 8, 2\)"):
        plots.sample_grid(np.zeros((4, 8, 8, 2)), "bad")


def test_save_figure_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "fig.png"
    assert_png_written(plots.sample_grid(gray_images(2), "x"), target)
