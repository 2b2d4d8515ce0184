"""pyae.latent: encoding, samplers, projections, interpolation, neighbours."""
import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf

from pyae import latent

SEED = 7


@pytest.fixture
def correlated_codes(rng):
    """A 3-D Gaussian cloud with unequal scales, an offset and correlations."""
    mixing = np.array([[2.0, 0.0, 0.0], [1.2, 0.5, 0.0], [-0.7, 0.3, 1.5]])
    return rng.standard_normal((4000, 3)) @ mixing.T + np.array([3.0, -1.0, 0.5])


@pytest.fixture
def blobs(rng):
    """Three tight, far-apart 2-D clusters and their centres."""
    centres = np.array([[-6.0, 1.0], [6.0, 2.0], [0.5, 9.0]])
    labels = rng.integers(0, 3, 600)
    return centres[labels] + 0.3 * rng.standard_normal((600, 2)), centres


# --------------------------------------------------------------------------- encode / bounds

@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_encode_callable_in_batches(rng, batch_size):
    images = rng.uniform(0.1, 1.0, (20, 4, 4, 1)).astype(np.float32)
    codes = latent.encode(lambda x: tf.reshape(x, (len(x), -1))[:, :3] * 2.0, images, batch_size)
    np.testing.assert_allclose(codes, images.reshape(20, -1)[:, :3] * 2.0, rtol=1e-6)


def test_encode_keras_model_runs_in_inference_mode(rng):
    inputs = keras.Input((4, 4, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(2)(hidden)
    model = keras.Model(inputs, outputs)
    images = rng.uniform(0.1, 1.0, (9, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(
        latent.encode(model, images, batch_size=4), model(images, training=False).numpy(), rtol=1e-5
    )


def test_encode_tf_dataset_of_pairs(rng):
    images = rng.uniform(0.1, 1.0, (10, 2, 2, 1)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(1, 11))).batch(3)
    codes = latent.encode(lambda x: tf.reduce_sum(x, axis=(1, 2)), ds)
    np.testing.assert_allclose(codes, images.sum(axis=(1, 2)), rtol=1e-6)


def test_bounds(correlated_codes):
    low, high = latent.bounds(correlated_codes)
    np.testing.assert_array_equal(low, correlated_codes.min(axis=0))
    np.testing.assert_array_equal(high, correlated_codes.max(axis=0))


# --------------------------------------------------------------------------- samplers

def test_uniform_sampler_stays_within_bounds_and_fills_them(correlated_codes):
    samples = latent.UniformBoundsSampler(seed=SEED).fit(correlated_codes).sample(5000)
    low, high = latent.bounds(correlated_codes)
    assert samples.shape == (5000, 3) and samples.dtype == np.float32
    assert np.all(samples >= low.astype(np.float32)) and np.all(samples <= high.astype(np.float32))
    centre, width = (low + high) / 2, (high - low).max()
    np.testing.assert_allclose(samples.mean(axis=0), centre, atol=0.05 * width)


def test_standard_normal_sampler_ignores_data_statistics(correlated_codes):
    samples = latent.StandardNormalSampler(seed=SEED).fit(correlated_codes).sample(20000)
    np.testing.assert_allclose(samples.mean(axis=0), np.zeros(3), atol=0.05)
    np.testing.assert_allclose(np.cov(samples, rowvar=False), np.eye(3), atol=0.05)


def test_standard_normal_sampler_needs_no_fit_given_dim():
    assert latent.StandardNormalSampler(dim=5, seed=SEED).sample(4).shape == (4, 5)


def test_gaussian_sampler_matches_mean_and_covariance(correlated_codes):
    samples = latent.GaussianSampler(seed=SEED).fit(correlated_codes).sample(40000)
    np.testing.assert_allclose(samples.mean(axis=0), correlated_codes.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(
        np.cov(samples, rowvar=False), np.cov(correlated_codes, rowvar=False), atol=0.15
    )


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_sampler_lands_on_the_clusters(blobs, covariance_type):
    codes, centres = blobs
    sampler = latent.GaussianMixtureSampler(3, covariance_type=covariance_type, seed=SEED)
    samples = sampler.fit(codes).sample(3000)
    distance_to_centre = np.linalg.norm(samples[:, None] - centres[None], axis=-1).min(axis=1)
    assert np.quantile(distance_to_centre, 0.99) < 1.5
    # Unlike GaussianMixture.sample, draws are not grouped by component.
    nearest = np.linalg.norm(samples[:30, None] - centres[None], axis=-1).argmin(axis=1)
    assert len(np.unique(nearest)) == 3


@pytest.mark.parametrize("name", ["uniform", "standard_normal", "gaussian", "gmm"])
def test_samplers_are_reproducible(blobs, name):
    codes, _ = blobs
    first = latent.get_sampler(name, seed=SEED).fit(codes)
    second = latent.get_sampler(name, seed=SEED).fit(codes)
    np.testing.assert_array_equal(first.sample(50), second.sample(50))
    np.testing.assert_array_equal(first.sample(50, seed=3), first.sample(50, seed=3))
    assert not np.array_equal(first.sample(50), first.sample(50))  # the stream moves on


@pytest.mark.parametrize(
    "call, error",
    [(lambda: latent.get_sampler("vae"), ValueError),
     (lambda: latent.GaussianSampler().sample(3), RuntimeError),
     (lambda: latent.GaussianSampler().fit(np.ones(5)), ValueError)],
)
def test_sampler_misuse_is_reported(call, error):
    with pytest.raises(error):
        call()


# --------------------------------------------------------------------------- projections

@pytest.fixture
def wide_codes(rng):
    """~100 codes of 64 dims in two groups: t-SNE takes its PCA-to-50 path."""
    groups = rng.integers(0, 2, 100)
    return rng.standard_normal((100, 64)) + 8.0 * groups[:, None], groups


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_project_to_2d_keeps_groups_apart(wide_codes, method):
    codes, groups = wide_codes
    points = latent.project(codes, method, seed=SEED)
    assert points.shape == (100, 2) and points.dtype == np.float32
    # The two groups' centroids should be far apart relative to the spread inside a group.
    gap = np.linalg.norm(points[groups == 0].mean(axis=0) - points[groups == 1].mean(axis=0))
    assert gap > 2 * points[groups == 0].std(axis=0).max()


def test_project_is_deterministic(wide_codes):
    codes, _ = wide_codes
    first = latent.project(codes, "tsne", seed=1)
    np.testing.assert_array_equal(latent.project(codes, "tsne", seed=1), first)


@pytest.mark.parametrize("method, module", [("umap", "umap"), ("opentsne", "openTSNE")])
def test_optional_projections_explain_missing_package(wide_codes, method, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    with pytest.raises(ImportError, match="pip install"):
        latent.project(wide_codes[0], method)


def test_project_rejects_unknown_method(wide_codes):
    with pytest.raises(ValueError, match="unknown projection"):
        latent.project(wide_codes[0], "lle")


# --------------------------------------------------------------------------- interpolation

@pytest.fixture
def endpoints(rng):
    z0 = rng.standard_normal(16)
    z1 = rng.standard_normal(16)
    return z0, z1 * np.linalg.norm(z0) / np.linalg.norm(z1)  # equal norms


@pytest.mark.parametrize("interpolate", [latent.lerp, latent.slerp])
def test_interpolation_endpoints(endpoints, interpolate):
    z0, z1 = endpoints
    path = interpolate(z0, z1, 9)
    assert path.shape == (9, 16)
    np.testing.assert_allclose(path[0], z0, rtol=1e-6)
    np.testing.assert_allclose(path[-1], z1, rtol=1e-6)


def test_slerp_keeps_the_norm_lerp_shrinks_it(endpoints):
    z0, z1 = endpoints
    radius = np.linalg.norm(z0)
    np.testing.assert_allclose(np.linalg.norm(latent.slerp(z0, z1, 11), axis=1), radius, rtol=1e-5)
    assert np.linalg.norm(latent.lerp(z0, z1, 11)[5]) < radius


def test_slerp_orthogonal_midpoint():
    z0, z1 = np.array([2.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    np.testing.assert_allclose(latent.slerp(z0, z1, 3)[1], [np.sqrt(2), np.sqrt(2), 0.0], rtol=1e-6)


def test_slerp_of_parallel_codes_falls_back_to_lerp():
    z0 = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(latent.slerp(z0, 3 * z0, 5), latent.lerp(z0, 3 * z0, 5), rtol=1e-6)


# --------------------------------------------------------------------------- neighbours

def test_nearest_neighbors_finds_the_codes_themselves(blobs):
    codes, _ = blobs
    distances, indices = latent.nearest_neighbors(codes, codes[10:15], k=3)
    assert distances.shape == indices.shape == (5, 3)
    np.testing.assert_array_equal(indices[:, 0], np.arange(10, 15))
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_tsne_projects_fewer_points_than_pca_dimensions(rng):
    wide_latents = rng.normal(size=(30, 200)).astype(np.float32)
    projected = latent.project(wide_latents, method="tsne", seed=0)
    assert projected.shape == (30, 2)
    assert np.all(np.isfinite(projected))
