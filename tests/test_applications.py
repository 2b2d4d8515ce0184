"""pyae.applications: corruption is seeded and shaped right; PSNR before/after is reported."""
import numpy as np
import pytest

from pyae import applications


class IdentityModel:
    """Stands in for an autoencoder that reconstructs perfectly."""

    def reconstruct(self, images, batch_size=128):
        return np.asarray(images)


class MeanModel:
    """Stands in for a model that outputs the clean mean image whatever it is given."""

    def __init__(self, clean):
        self.mean_image = clean.mean(axis=0, keepdims=True)

    def reconstruct(self, images, batch_size=128):
        return np.repeat(self.mean_image, len(images), axis=0)


def smooth_images(count=6, size=16, channels=1):
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    base = 0.5 + 0.4 * np.sin(3 * grid[:, None] + grid[None, :])
    images = np.stack([np.roll(base, shift, axis=1) for shift in range(count)])
    return np.repeat(images[..., None], channels, axis=-1)


def test_psnr_matches_definition():
    clean = np.zeros((2, 4, 4, 1))
    noisy = clean + np.array([0.1, 0.01])[:, None, None, None]
    np.testing.assert_allclose(applications.per_image_psnr(clean, noisy), [20.0, 40.0])
    assert applications.per_image_psnr(clean, clean)[0] == 100.0


def test_denoise_is_seeded_and_clipped():
    images = smooth_images()
    first = applications.denoise(IdentityModel(), images, noise_std=0.3, seed=1)
    again = applications.denoise(IdentityModel(), images, noise_std=0.3, seed=1)
    other = applications.denoise(IdentityModel(), images, noise_std=0.3, seed=2)
    np.testing.assert_array_equal(first.corrupted, again.corrupted)
    assert not np.array_equal(first.corrupted, other.corrupted)
    assert first.corrupted.min() >= 0.0 and first.corrupted.max() <= 1.0
    assert first.psnr_before.shape == (6,)
    # The identity model keeps the noise: no gain.
    np.testing.assert_allclose(first.psnr_after, first.psnr_before)


def test_denoise_with_a_model_that_ignores_noise_gains_psnr():
    images = smooth_images(channels=3)
    result = applications.denoise(MeanModel(images), images, noise_std=0.5)
    summary = result.summary()
    assert summary["psnr_gain"] > 0
    assert set(summary) == {"images", "psnr_before", "psnr_after", "psnr_gain"}


def test_inpaint_masks_one_square_of_the_requested_area():
    images = smooth_images(count=5, size=20)
    result = applications.inpaint(IdentityModel(), images, mask_fraction=0.25, seed=0)
    assert result.masks.shape == (5, 20, 20, 1)
    assert (result.masks.sum(axis=(1, 2, 3)) == 100).all()  # 10 x 10 of 20 x 20
    assert (result.corrupted[result.masks[..., 0]] == 0).all()
    # Pixels outside the hole are kept from the input.
    outside = ~np.broadcast_to(result.masks, images.shape)
    np.testing.assert_array_equal(result.restored[outside], images[outside])


def test_inpaint_fills_the_hole_from_the_model():
    images = smooth_images(count=4, size=16, channels=3)
    result = applications.inpaint(MeanModel(images), images, mask_fraction=0.3, seed=3)
    assert (result.psnr_after > result.psnr_before).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"mask_fraction": 0.0}, "mask_fraction must be between 0 and 1, got 0.0"),
    ({"mask_fraction": 1.5}, "got 1.5"),
])
def test_inpaint_rejects_bad_fraction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        applications.inpaint(IdentityModel(), smooth_images(), **kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="noise_std must be >= 0, got -1"):
        applications.denoise(IdentityModel(), smooth_images(), noise_std=-1)
    with pytest.raises(ValueError, match=r"NHWC \(4-D\), got shape \(16, 16\)"):
        applications.denoise(IdentityModel(), np.zeros((16, 16)))
