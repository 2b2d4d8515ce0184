"""pyae.evaluate: reconstruction, representation and generativeness metrics."""
import json

import numpy as np
import pytest

from pyae import evaluate, latent

SEED = 11


@pytest.fixture
def images(rng):
    return rng.uniform(0.2, 0.8, (4, 28, 28, 3)).astype(np.float32)


@pytest.fixture
def labelled_blobs(rng):
    """Four well-separated 5-D clusters: train and test codes with their labels."""
    centres = rng.uniform(-20, 20, (4, 5))
    y = rng.permutation(np.repeat(np.arange(4), 60))
    codes = centres[y] + 0.5 * rng.standard_normal((240, 5))
    return codes[:160], y[:160], codes[160:], y[160:]


# --------------------------------------------------------------------------- reconstruction

def test_identical_images_are_perfect(images):
    assert evaluate.mse(images, images) == 0.0
    assert evaluate.psnr(images, images) == np.inf
    assert evaluate.ssim(images, images) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("offset, expected_psnr", [(0.1, 20.0), (0.01, 40.0)])
def test_psnr_of_a_constant_offset(images, offset, expected_psnr):
    assert evaluate.mse(images, images + offset) == pytest.approx(offset**2, rel=1e-4)
    assert evaluate.psnr(images, images + offset) == pytest.approx(expected_psnr, rel=1e-4)


def test_ssim_drops_with_noise(images, rng):
    noisy = np.clip(images + 0.2 * rng.standard_normal(images.shape), 0, 1).astype(np.float32)
    assert evaluate.ssim(images, noisy) < 0.9


def test_metrics_reject_mismatched_shapes(images):
    with pytest.raises(ValueError, match="shape"):
        evaluate.mse(images, images[:2])


@pytest.mark.parametrize(
    "model",
    [lambda x: 0.9 * x,
     (lambda x: x.reshape(len(x), -1), lambda z: 0.9 * z.reshape(-1, 28, 28, 3))],
    ids=["autoencoder", "encoder-decoder"],
)
def test_reconstruction_report(images, model):
    report = evaluate.reconstruction_report(model, images, batch_size=3)
    assert set(report) == {"mse", "psnr", "ssim"}
    assert report["mse"] == pytest.approx(evaluate.mse(images, 0.9 * images), rel=1e-5)
    json.dumps(report)


# --------------------------------------------------------------------------- representation

def test_probes_are_perfect_on_separated_blobs(labelled_blobs):
    assert evaluate.linear_probe_accuracy(*labelled_blobs) == 1.0
    assert evaluate.knn_accuracy(*labelled_blobs) == 1.0


def test_kmeans_accuracy_ignores_label_permutation(labelled_blobs):
    _, _, codes, labels = labelled_blobs
    permuted = np.array([2, 0, 3, 1])[labels]
    assert evaluate.kmeans_accuracy(codes, permuted, seed=SEED) == 1.0


@pytest.mark.parametrize(
    "labels, clusters, expected",
    [([0, 0, 1, 1], [1, 1, 0, 0], 1.0), ([0, 0, 1, 1], [0, 1, 0, 1], 0.5),
     ([0, 0, 0, 1, 1, 2], [5, 5, 7, 7, 7, 9], 5 / 6)],
)
def test_clustering_accuracy_uses_best_matching(labels, clusters, expected):
    assert evaluate.clustering_accuracy(labels, clusters) == pytest.approx(expected)


@pytest.mark.parametrize("score", [evaluate.nmi, evaluate.ari])
def test_nmi_ari_perfect_for_relabelled_clusters(score):
    assert score([0, 0, 1, 1, 2, 2], [4, 4, 3, 3, 1, 1]) == pytest.approx(1.0)


def test_representation_report(labelled_blobs):
    report = evaluate.representation_report(*labelled_blobs, seed=SEED)
    assert report == {"linear_probe_accuracy": 1.0, "knn_accuracy": 1.0, "kmeans_accuracy": 1.0,
                      "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    json.dumps(report)


# --------------------------------------------------------------------------- generativeness

@pytest.fixture
def cloud(rng):
    return rng.standard_normal((500, 4))


def test_hole_rate_zero_for_the_data_itself(cloud):
    assert evaluate.hole_rate(cloud, cloud[::3]) == 0.0


@pytest.mark.parametrize("shift", [10.0, -25.0])
def test_hole_rate_one_far_away(cloud, shift):
    assert evaluate.hole_rate(cloud, cloud[:100] + shift) == 1.0


def test_hole_rate_low_for_fresh_samples_of_the_same_distribution(cloud, rng):
    samples = rng.standard_normal((300, 2))
    assert evaluate.hole_rate(cloud[:, :2], samples) < 0.1


@pytest.mark.parametrize("dim", [2, 4])
def test_prdc_same_distribution_near_one(rng, dim):
    real, fake = rng.standard_normal((800, dim)), rng.standard_normal((800, dim))
    scores = evaluate.precision_recall_density_coverage(real, fake, k=5)
    assert min(scores["precision"], scores["recall"], scores["coverage"]) > 0.9
    assert scores["density"] == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("dim", [2, 4])
def test_prdc_disjoint_distributions_zero(rng, dim):
    real, fake = rng.standard_normal((300, dim)), rng.standard_normal((300, dim)) + 30.0
    scores = evaluate.precision_recall_density_coverage(real, fake, k=5)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_recall_sees_mode_collapse(rng):
    # Fakes that cover only half of the real cloud: precise, but half the real data is missed.
    real = rng.standard_normal((800, 2))
    fake = real[real[:, 0] > 0] + 0.01 * rng.standard_normal((int((real[:, 0] > 0).sum()), 2))
    scores = evaluate.precision_recall_density_coverage(real, fake, k=5)
    assert scores["precision"] > 0.9 and scores["coverage"] < 0.6


@pytest.mark.parametrize(
    "call",
    [lambda c: evaluate.hole_rate(c[:3], c, k=5),
     lambda c: evaluate.precision_recall_density_coverage(c, c[:5], k=5)],
)
def test_too_few_points_for_k(cloud, call):
    with pytest.raises(ValueError, match="n > k"):
        call(cloud)


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_decoder_consistency(rng, shift):
    z = rng.standard_normal((50, 4)).astype(np.float32)
    # The encoder inverts the decoder up to a bias of `shift` in each of the 4 dimensions.
    consistency = evaluate.decoder_consistency(lambda x: x / 2.0 + shift, lambda v: 2.0 * v, z)
    assert consistency == pytest.approx(shift * 2.0, abs=1e-5)


@pytest.fixture
def clustered_codes(rng):
    centres = np.array([[-6.0, 0.0, 1.0], [6.0, 1.0, -1.0], [0.0, 7.0, 0.0]])
    return centres[rng.integers(0, 3, 900)] + 0.4 * rng.standard_normal((900, 3))


def test_sampler_report_ranks_the_mixture_first(clustered_codes):
    samplers = {"uniform": "uniform", "standard_normal": "standard_normal",
                "gmm": latent.GaussianMixtureSampler(n_components=3, seed=SEED)}
    report = evaluate.sampler_report(clustered_codes, samplers, n=400, seed=SEED)
    assert set(report) == set(samplers)
    assert set(report["gmm"]) == {"hole_rate", "precision", "recall", "density", "coverage"}
    assert report["gmm"]["hole_rate"] < 0.1 < report["uniform"]["hole_rate"]
    assert report["gmm"]["precision"] > 0.9 > report["standard_normal"]["precision"]
    json.dumps(report)


def test_sampler_report_with_decoder_consistency(clustered_codes):
    report = evaluate.sampler_report(
        clustered_codes, {"gaussian": "gaussian"}, n=200, encoder=lambda x: x, decoder=lambda z: z
    )
    assert report["gaussian"]["decoder_consistency"] == pytest.approx(0.0, abs=1e-6)
