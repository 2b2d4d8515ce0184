"""The tutorial's first two applications of an autoencoder: denoising and inpainting.

Both corrupt clean images in a seeded, reproducible way, pass the corrupted images through
the autoencoder and report per-image PSNR against the clean images before (corrupted) and
after (restored). Denoising works best with a model trained with ``objective="denoising"``;
a vanilla model still removes some noise because its bottleneck cannot store it.
"""
import dataclasses

import numpy as np

__all__ = ["Restoration", "add_gaussian_noise", "denoise", "inpaint", "per_image_psnr",
           "random_square_masks"]


@dataclasses.dataclass
class Restoration:
    """Clean, corrupted and restored images (NHWC in [0, 1]) and their per-image PSNR (dB).

    ``masks`` (inpainting only) is True where pixels were removed, shaped (N, H, W, 1).
    """

    clean: np.ndarray
    corrupted: np.ndarray
    restored: np.ndarray
    psnr_before: np.ndarray
    psnr_after: np.ndarray
    masks: np.ndarray = None

    def summary(self):
        """Mean PSNR before and after and the gain, as plain floats (for metrics.json)."""
        before, after = float(np.mean(self.psnr_before)), float(np.mean(self.psnr_after))
        return {"images": int(self.clean.shape[0]), "psnr_before": before,
                "psnr_after": after, "psnr_gain": after - before}


def per_image_psnr(reference, estimate, max_value=1.0):
    """PSNR in dB of each image of ``estimate`` against ``reference`` (capped at 100 dB)."""
    reference = np.asarray(reference, np.float64)
    estimate = np.asarray(estimate, np.float64)
    squared_error = np.mean((reference - estimate) ** 2, axis=tuple(range(1, reference.ndim)))
    psnr = 10.0 * np.log10(max_value ** 2 / np.maximum(squared_error, 1e-10))
    return np.minimum(psnr, 100.0)


def _check_images(images):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}")
    if images.shape[0] < 1:
        raise ValueError("images is empty")
    return images


def add_gaussian_noise(images, noise_std=0.3, seed=0):
    """Images plus N(0, noise_std^2) pixel noise, clipped to [0, 1]."""
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, noise_std, size=images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 1.0)


def random_square_masks(shape, mask_fraction=0.25, seed=0):
    """One random square hole per image covering about ``mask_fraction`` of its pixels.

    ``shape`` is the NHWC image shape; returns booleans (N, H, W, 1), True inside the hole.
    """
    count, height, width = shape[0], shape[1], shape[2]
    if not 0.0 < mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be between 0 and 1, got {mask_fraction}")
    side = int(round(np.sqrt(mask_fraction * height * width)))
    side = max(1, min(side, height, width))
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, height - side + 1, size=count)
    lefts = rng.integers(0, width - side + 1, size=count)
    masks = np.zeros((count, height, width, 1), bool)
    for index, (top, left) in enumerate(zip(tops, lefts)):
        masks[index, top:top + side, left:left + side] = True
    return masks


def _reconstruct(model, images, batch_size):
    if hasattr(model, "reconstruct"):
        restored = model.reconstruct(images, batch_size=batch_size)
    else:
        restored = model.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(restored, np.float32)


def _restoration(clean, corrupted, restored, masks=None):
    return Restoration(clean, corrupted, restored, per_image_psnr(clean, corrupted),
                       per_image_psnr(clean, restored), masks)


def denoise(model, images, noise_std=0.3, seed=0, batch_size=128):
    """Add Gaussian noise to ``images`` and reconstruct them with ``model``: a Restoration."""
    clean = _check_images(images)
    noisy = add_gaussian_noise(clean, noise_std, seed)
    return _restoration(clean, noisy, _reconstruct(model, noisy, batch_size))


def inpaint(model, images, mask_fraction=0.25, seed=0, fill_value=0.0, batch_size=128,
            keep_known=True):
    """Blank a random square of each image and fill it from the reconstruction.

    With ``keep_known`` the pixels outside the hole stay as they were and only the hole is
    taken from the model's output; otherwise the whole reconstruction is returned.
    """
    clean = _check_images(images)
    masks = random_square_masks(clean.shape, mask_fraction, seed)
    holed = np.where(masks, np.float32(fill_value), clean)
    reconstruction = _reconstruct(model, holed, batch_size)
    restored = np.where(masks, reconstruction, holed) if keep_known else reconstruction
    return _restoration(clean, holed, restored.astype(np.float32), masks)
