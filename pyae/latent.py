"""The latent space: encode, bound, sample, project, interpolate, and look up neighbours.

The tutorial samples a vanilla autoencoder's latent space uniformly within its bounds and
from a standard normal, and both decode to noise because the codes fill only small,
irregular regions. The samplers here reproduce those two and add the obvious fixes: a
fitted Gaussian, and a Gaussian mixture that follows the clusters.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "SAMPLERS",
    "GaussianMixtureSampler",
    "GaussianSampler",
    "LatentSampler",
    "StandardNormalSampler",
    "UniformBoundsSampler",
    "bounds",
    "encode",
    "get_sampler",
    "lerp",
    "nearest_neighbors",
    "project",
    "slerp",
]


# --------------------------------------------------------------------------- encoding

def _call(fn, batch):
    import keras

    # A Keras model must run in inference mode so BatchNorm uses its moving statistics.
    out = fn(batch, training=False) if isinstance(fn, keras.Model) else fn(batch)
    return np.asarray(out)


def _batches(images, batch_size: int):
    import tensorflow as tf

    if isinstance(images, tf.data.Dataset):
        for element in images:  # a dataset of (images, labels) pairs gives its images
            yield element[0] if isinstance(element, (tuple, list)) else element
        return
    images = np.asarray(images)
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def encode(encoder_or_fn, images, batch_size: int = 256) -> np.ndarray:
    """Latent codes of ``images`` as one numpy array, computed ``batch_size`` at a time.

    ``encoder_or_fn`` is a Keras model (run with ``training=False``) or any callable from a
    batch of images to a batch of codes; ``images`` is an array or a batched
    ``tf.data.Dataset``.
    """
    codes = [_call(encoder_or_fn, batch) for batch in _batches(images, batch_size)]
    if not codes:
        raise ValueError("encode: no images given")
    return np.concatenate(codes, axis=0)


def bounds(latents) -> tuple:
    """Per-dimension ``(low, high)`` of a set of codes."""
    latents = _as_2d(latents)
    return latents.min(axis=0), latents.max(axis=0)


def _as_2d(latents) -> np.ndarray:
    latents = np.asarray(latents, np.float64)
    if latents.ndim != 2 or len(latents) == 0:
        raise ValueError(f"expected latents of shape (n, dim) with n >= 1, got {latents.shape}")
    return latents


# --------------------------------------------------------------------------- samplers

class LatentSampler:
    """Fit to a set of codes, then draw new ones. ``seed`` fixes the draws."""

    name = "base"

    def __init__(self, seed=None):
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.dim = None

    def fit(self, latents):
        latents = _as_2d(latents)
        self.dim = latents.shape[1]
        self._fit(latents)
        return self

    def sample(self, n: int, seed=None) -> np.ndarray:
        """``n`` codes as float32 (n, dim); ``seed`` gives a fresh, repeatable stream."""
        if self.dim is None:
            raise RuntimeError(f"{type(self).__name__}: call fit(latents) before sample()")
        rng = self._rng if seed is None else np.random.default_rng(seed)
        return np.asarray(self._sample(int(n), rng), np.float32)

    def _fit(self, latents):
        raise NotImplementedError

    def _sample(self, n, rng):
        raise NotImplementedError


class UniformBoundsSampler(LatentSampler):
    """Uniform in the per-dimension bounding box of the codes (the tutorial's first try)."""

    name = "uniform"

    def _fit(self, latents):
        self.low, self.high = bounds(latents)

    def _sample(self, n, rng):
        return rng.uniform(self.low, self.high, size=(n, self.dim))


class StandardNormalSampler(LatentSampler):
    """N(0, I), ignoring the codes except for their dimension (the tutorial's second try)."""

    name = "standard_normal"

    def __init__(self, dim=None, seed=None):
        super().__init__(seed)
        self.dim = dim

    def _fit(self, latents):
        pass

    def _sample(self, n, rng):
        return rng.standard_normal((n, self.dim))


class GaussianSampler(LatentSampler):
    """One Gaussian with the codes' mean and full covariance."""

    name = "gaussian"

    def _fit(self, latents):
        self.mean = latents.mean(axis=0)
        if len(latents) > 1:
            self.cov = np.atleast_2d(np.cov(latents, rowvar=False))  # rows are samples
        else:  # one code: a point mass, not the NaN np.cov would give
            self.cov = np.zeros((self.dim, self.dim))

    def _sample(self, n, rng):
        # eigh copes with the singular covariances of codes that lie on a subspace.
        return rng.multivariate_normal(self.mean, self.cov, size=n, method="eigh")


class GaussianMixtureSampler(LatentSampler):
    """A Gaussian mixture (scikit-learn) that follows the clusters of the codes."""

    name = "gmm"

    def __init__(self, n_components: int = 10, covariance_type: str = "full", seed=None):
        super().__init__(seed)
        self.n_components = n_components
        self.covariance_type = covariance_type

    def _fit(self, latents):
        from sklearn.mixture import GaussianMixture

        self.gmm = GaussianMixture(
            n_components=min(self.n_components, len(latents)),
            covariance_type=self.covariance_type,
            random_state=self.seed,
        ).fit(latents)
        self._chol = np.linalg.cholesky(_full_covariances(self.gmm))

    def _sample(self, n, rng):
        # GaussianMixture.sample reseeds from random_state on every call and returns samples
        # grouped by component, so draw from the fitted parameters directly.
        component = rng.choice(len(self.gmm.weights_), size=n, p=self.gmm.weights_)
        noise = rng.standard_normal((n, self.dim))
        return self.gmm.means_[component] + np.einsum("nij,nj->ni", self._chol[component], noise)


def _full_covariances(gmm) -> np.ndarray:
    """The mixture's covariances as (k, d, d), whatever its covariance_type."""
    k, d = gmm.means_.shape
    cov = gmm.covariances_
    if gmm.covariance_type == "full":
        return cov
    if gmm.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if gmm.covariance_type == "diag":
        return cov[:, :, None] * np.eye(d)
    return cov[:, None, None] * np.eye(d)  # spherical


SAMPLERS = {
    "uniform": UniformBoundsSampler,
    "standard_normal": StandardNormalSampler,
    "normal": StandardNormalSampler,
    "gaussian": GaussianSampler,
    "gmm": GaussianMixtureSampler,
    "gaussian_mixture": GaussianMixtureSampler,
}


def get_sampler(name: str, **kwargs) -> LatentSampler:
    """A new sampler by name: uniform, standard_normal, gaussian or gmm (see ``SAMPLERS``)."""
    try:
        return SAMPLERS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None


# --------------------------------------------------------------------------- projections

PROJECTIONS = ("pca", "tsne", "umap", "opentsne")


def project(latents, method: str = "pca", seed: int = 0, n_components: int = 2, **kwargs):
    """Project codes to ``n_components`` dimensions for plotting, as float32.

    ``pca`` and ``tsne`` use scikit-learn (t-SNE first reduces to 50 dimensions with PCA, as
    its authors advise, and starts from the PCA layout); ``umap`` and ``opentsne`` need the
    umap-learn / openTSNE packages. Extra keyword arguments go to the projector.
    """
    latents = _as_2d(latents)
    if method == "pca":
        from sklearn.decomposition import PCA

        out = PCA(n_components, random_state=seed, **kwargs).fit_transform(latents)
    elif method == "tsne":
        out = _tsne(latents, seed, n_components, **kwargs)
    elif method == "umap":
        umap = _optional_import("umap", "umap-learn")
        projector = umap.UMAP(n_components=n_components, random_state=seed, **kwargs)
        out = projector.fit_transform(latents)
    elif method == "opentsne":
        open_tsne = _optional_import("openTSNE", "openTSNE")
        out = open_tsne.TSNE(n_components=n_components, random_state=seed, **kwargs).fit(latents)
    else:
        raise ValueError(f"unknown projection {method!r}; choose one of {PROJECTIONS}")
    return np.asarray(out, np.float32)


def _tsne(latents, seed, n_components, **kwargs):
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if latents.shape[1] > 50:
        # PCA can keep at most min(n_samples, n_features) components.
        latents = PCA(min(50, len(latents)), random_state=seed).fit_transform(latents)
    # scikit-learn requires perplexity < n_samples; keep its default of 30 where possible.
    kwargs.setdefault("perplexity", min(30.0, max(1.0, (len(latents) - 1) / 3)))
    return TSNE(n_components, init="pca", random_state=seed, **kwargs).fit_transform(latents)


def _optional_import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"projection {module!r} needs the optional package {package}: pip install {package} "
            "(or use method='pca' or 'tsne', which need only scikit-learn)"
        ) from err


# --------------------------------------------------------------------------- interpolation

def _endpoints(z0, z1):
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"expected two codes of one shape (dim,), got {z0.shape} and {z1.shape}")
    return z0, z1


def lerp(z0, z1, steps: int) -> np.ndarray:
    """``steps`` codes on the straight line from ``z0`` to ``z1``, both included: (steps, dim)."""
    z0, z1 = _endpoints(z0, z1)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return ((1.0 - t) * z0 + t * z1).astype(np.float32)


def slerp(z0, z1, steps: int) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces): (steps, dim).

    Follows the great circle between the directions of ``z0`` and ``z1``; when their norms
    are equal every point keeps that norm, which is what a Gaussian prior expects. Parallel
    or opposite codes have no unique great circle, so those fall back to :func:`lerp`.
    """
    z0, z1 = _endpoints(z0, z1)
    norms = np.linalg.norm(z0) * np.linalg.norm(z1)
    cos_omega = np.clip(np.dot(z0, z1) / norms, -1.0, 1.0) if norms > 0 else 1.0
    omega = np.arccos(cos_omega)
    if np.sin(omega) < 1e-6:
        return lerp(z0, z1, steps)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    path = (np.sin((1.0 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)
    return path.astype(np.float32)


# --------------------------------------------------------------------------- neighbours

def nearest_neighbors(latents, queries, k: int = 5) -> tuple:
    """``(distances, indices)`` of the ``k`` codes nearest each query, each (n_queries, k)."""
    from sklearn.neighbors import NearestNeighbors

    latents = _as_2d(latents)
    index = NearestNeighbors(n_neighbors=min(k, len(latents))).fit(latents)
    return index.kneighbors(_as_2d(queries))
