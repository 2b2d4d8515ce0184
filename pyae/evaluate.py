"""How good is an autoencoder: reconstruction, representation, and how generative it is.

Every function returns plain Python floats (reports: dicts of them) so results can go
straight into JSON. Images are float32 in [0, 1], NHWC.
"""
from __future__ import annotations

import numpy as np

from pyae.latent import encode, get_sampler

__all__ = [
    "ari",
    "clustering_accuracy",
    "decoder_consistency",
    "hole_rate",
    "kmeans_accuracy",
    "kmeans_clusters",
    "knn_accuracy",
    "linear_probe_accuracy",
    "mse",
    "nmi",
    "precision_recall_density_coverage",
    "psnr",
    "reconstruction_report",
    "representation_report",
    "sampler_report",
    "ssim",
]


# --------------------------------------------------------------------------- reconstruction

def _image_pair(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two NHWC image batches of one shape, got {x.shape}, {y.shape}")
    return x, y


def _per_image_mse(x, y) -> np.ndarray:
    x, y = _image_pair(x, y)
    return np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2, 3))


def mse(x, y) -> float:
    """Mean squared error over all pixels (the tutorial's training loss)."""
    return float(np.mean(_per_image_mse(x, y)))


def psnr(x, y) -> float:
    """Mean per-image PSNR in dB for data range 1; ``inf`` when the images are identical."""
    per_image = _per_image_mse(x, y)
    with np.errstate(divide="ignore"):  # identical images: 10 log10(1/0) = inf, on purpose
        return float(np.mean(-10.0 * np.log10(per_image)))


def ssim(x, y) -> float:
    """Mean per-image SSIM (``tf.image.ssim``, data range 1, 11x11 Gaussian window)."""
    import tensorflow as tf

    x, y = _image_pair(x, y)
    return float(tf.reduce_mean(tf.image.ssim(x, y, max_val=1.0)).numpy())


def _reconstruct(model_or_fns, x, batch_size: int) -> np.ndarray:
    """Reconstructions from an autoencoder callable or an ``(encoder, decoder)`` pair."""
    if isinstance(model_or_fns, (tuple, list)):
        encoder, decoder = model_or_fns
        codes = encode(encoder, x, batch_size)
        return encode(decoder, codes, batch_size)
    return encode(model_or_fns, x, batch_size)  # encode() is just a batched call


def reconstruction_report(model_or_fns, x, batch_size: int = 256) -> dict:
    """``{"mse", "psnr", "ssim"}`` of the reconstructions of ``x``."""
    x_hat = _reconstruct(model_or_fns, x, batch_size)
    return {"mse": mse(x, x_hat), "psnr": psnr(x, x_hat), "ssim": ssim(x, x_hat)}


# --------------------------------------------------------------------------- representation

def linear_probe_accuracy(train_latents, y_train, test_latents, y_test, seed: int = 0) -> float:
    """Test accuracy of a logistic regression trained on standardised train codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Raw codes can have wildly different scales per dimension; standardising lets the
    # solver converge and keeps the probe about the representation, not its units.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_latents, y_train)
    return float(probe.score(test_latents, y_test))


def knn_accuracy(train_latents, y_train, test_latents, y_test, k: int = 5) -> float:
    """Test accuracy of a k-nearest-neighbour classifier in latent space (Euclidean)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_latents)))
    return float(knn.fit(train_latents, y_train).score(test_latents, y_test))


def kmeans_clusters(latents, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-means cluster index of each code."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(latents)


def clustering_accuracy(labels, clusters) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    counts = contingency_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def kmeans_accuracy(latents, labels, n_clusters=None, seed: int = 0) -> float:
    """Clustering accuracy of k-means with one cluster per class unless told otherwise."""
    n_clusters = n_clusters or len(np.unique(labels))
    return clustering_accuracy(labels, kmeans_clusters(latents, n_clusters, seed))


def nmi(labels, clusters) -> float:
    """Normalised mutual information between labels and cluster indices."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters))


def ari(labels, clusters) -> float:
    """Adjusted Rand index between labels and cluster indices."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels, clusters))


def representation_report(
    train_latents, y_train, test_latents, y_test, n_clusters=None, k: int = 5, seed: int = 0
) -> dict:
    """Linear-probe and k-NN accuracy (train -> test), and k-means quality on the test codes."""
    n_clusters = n_clusters or len(np.unique(y_test))
    clusters = kmeans_clusters(test_latents, n_clusters, seed)
    split = (train_latents, y_train, test_latents, y_test)
    return {
        "linear_probe_accuracy": linear_probe_accuracy(*split, seed=seed),
        "knn_accuracy": knn_accuracy(*split, k=k),
        "kmeans_accuracy": clustering_accuracy(y_test, clusters),
        "nmi": nmi(y_test, clusters),
        "ari": ari(y_test, clusters),
    }


# --------------------------------------------------------------------------- generativeness

def _knn_radii(points, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point."""
    from sklearn.neighbors import NearestNeighbors

    # Ask for k + 1 because each point is its own nearest neighbour at distance 0.
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return distances[:, -1]


def _nearest(points, queries) -> tuple:
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=1).fit(points).kneighbors(queries)
    return distances[:, 0], indices[:, 0]


def _check_k(points, k: int):
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or len(points) <= k:
        raise ValueError(f"need (n, dim) points with n > k={k}, got shape {points.shape}")
    return points


def hole_rate(data_latents, samples, k: int = 5) -> float:
    """Share of samples that fall in a hole of the data's latent cloud.

    A sample is in a hole when it is farther from its nearest data code than that code's
    own k-NN radius (distance to its k-th nearest data neighbour): decoding it asks the
    decoder for a code unlike any it was trained on.
    """
    data = _check_k(data_latents, k)
    distance, nearest = _nearest(data, np.asarray(samples, np.float64))
    return float(np.mean(distance > _knn_radii(data, k)[nearest]))


def _ball_counts(centres, radii, queries) -> np.ndarray:
    """For each query, how many of the balls (centres, radii) contain it."""
    from sklearn.metrics import pairwise_distances_chunked

    # Balls have different radii, so no single radius query answers this; go through the
    # distance matrix a block of rows (64 MiB) at a time to bound memory.
    blocks = pairwise_distances_chunked(queries, centres, working_memory=64)
    return np.concatenate([(block <= radii[None, :]).sum(axis=1) for block in blocks])


def precision_recall_density_coverage(real, fake, k: int = 5) -> dict:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (Naeem et al. 2020).

    With ``B(x, r)`` the ball around each point out to its k-th neighbour in its own set:
    precision = share of fake inside some real ball; recall = share of real inside some fake
    ball; density = mean number of real balls holding a fake point, divided by k (about 1
    when the two match); coverage = share of real balls holding at least one fake point.
    """
    real, fake = _check_k(real, k), _check_k(fake, k)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    fake_in_real_balls = _ball_counts(real, real_radii, fake)
    real_in_fake_balls = _ball_counts(fake, fake_radii, real)
    nearest_fake, _ = _nearest(fake, real)
    return {
        "precision": float(np.mean(fake_in_real_balls > 0)),
        "recall": float(np.mean(real_in_fake_balls > 0)),
        "density": float(np.mean(fake_in_real_balls) / k),
        "coverage": float(np.mean(nearest_fake <= real_radii)),
    }


def decoder_consistency(encoder, decoder, z, batch_size: int = 256) -> float:
    """Mean ``||E(D(z)) - z||``: how far a code drifts when decoded and encoded again.

    Small for codes like the training codes; large for codes the decoder maps to images
    the encoder never saw, a sign those codes lie in a hole.
    """
    z = np.asarray(z, np.float32)
    images = encode(decoder, z, batch_size)
    return float(np.mean(np.linalg.norm(encode(encoder, images, batch_size) - z, axis=1)))


def _subsample(points, n: int, rng) -> np.ndarray:
    return points if len(points) <= n else points[rng.choice(len(points), n, replace=False)]


def sampler_report(
    data_latents, samplers: dict, n: int = 1000, seed: int = 0, k: int = 5,
    encoder=None, decoder=None,
) -> dict:
    """``name -> {hole_rate, precision, recall, density, coverage}`` for each sampler.

    ``samplers`` maps a name to a :mod:`pyae.latent` sampler or a sampler name; each is
    fitted to ``data_latents`` and draws ``n`` codes with ``seed``. PRDC compares them with
    ``n`` data codes (PRDC wants equal set sizes). Given ``encoder`` and ``decoder``, each
    entry also has ``decoder_consistency``.
    """
    data = np.asarray(data_latents, np.float64)
    real = _subsample(data, n, np.random.default_rng(seed))
    report = {}
    for name, sampler in samplers.items():
        sampler = get_sampler(sampler) if isinstance(sampler, str) else sampler
        samples = sampler.fit(data).sample(n, seed=seed)
        entry = {"hole_rate": hole_rate(data, samples, k)}
        entry.update(precision_recall_density_coverage(real, samples, k))
        if encoder is not None and decoder is not None:
            entry["decoder_consistency"] = decoder_consistency(encoder, decoder, samples)
        report[name] = entry
    return report
