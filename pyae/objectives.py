"""Training objectives for an encoder/decoder pair, selected by name.

Every objective is called as ``objective(encoder, decoder, images, training, seed)`` and
returns a dict of scalar loss terms whose ``"loss"`` entry is the total to minimise; every
dict also carries ``"mse"`` (per-image mean squared error, averaged over the batch) so that
runs with different objectives can be compared on one number.

``seed`` is an int32 tensor of shape ``(2,)`` or None. With a seed every random draw
(input noise, reparameterisation, projection probes) is a stateless function of it, which
keeps a train step repeatable, XLA-compilable and identical across replicas' programs.
"""
import tensorflow as tf

OBJECTIVES = ("vanilla", "denoising", "sparse", "contractive", "variational")


@tf.custom_gradient
def per_image_mse(images, reconstruction):
    """The tutorial's ``ae_loss``: mean over H, W, C of the squared error, one per image.

    Its gradient is one broadcast multiply of the difference the forward keeps anyway.
    TensorFlow's own gradient tiles each image's upstream value to the images' shape, then
    multiplies twice: three passes over image-sized tensors, ~15 ms of a ~480 ms train step
    at the Cartoon model's 32 x 256 x 256 x 3 batch (the tile alone took half of it).
    """
    difference = reconstruction - images
    loss = tf.reduce_mean(tf.square(difference), axis=[1, 2, 3])

    def gradient(upstream):
        pixels = tf.cast(tf.reduce_prod(tf.shape(difference)[1:]), difference.dtype)
        per_image = tf.reshape(upstream * (2.0 / pixels), [-1, 1, 1, 1])
        grad_reconstruction = per_image * difference
        return -grad_reconstruction, grad_reconstruction

    return loss, gradient


def random_normal(shape, seed, stream):
    """A standard normal draw; ``stream`` separates the draws made from one step seed."""
    if seed is None:
        return tf.random.normal(shape)
    stream_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), stream)
    return tf.random.stateless_normal(shape, seed=stream_seed)


class Objective:
    """Plain reconstruction: per-image MSE averaged over the batch (the tutorial's loss)."""

    name = "vanilla"
    # How many numbers the encoder emits per latent dimension (the VAE emits mean and log-var).
    code_multiplier = 1
    # The terms __call__ returns, in the order a model reports them as metrics.
    term_names = ("loss", "mse")

    def code(self, encoder_output):
        """The latent code ``encode`` returns and ``call`` decodes, from the encoder's output."""
        return encoder_output

    def __call__(self, encoder, decoder, images, training=True, seed=None):
        code = encoder(images, training=training)
        reconstruction = decoder(code, training=training)
        mse = tf.reduce_mean(per_image_mse(images, reconstruction))
        return {"loss": mse, "mse": mse}

    def get_config(self):
        return {}

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"


class Vanilla(Objective):
    """The tutorial's objective, by name: ``objectives.get("vanilla")``."""


class Denoising(Objective):
    """Reconstruct the clean image from a copy corrupted with Gaussian noise of ``noise_std``."""

    name = "denoising"

    def __init__(self, noise_std=0.1, clip=True):
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        self.clip = bool(clip)

    def corrupt(self, images, seed=None):
        noisy = images + self.noise_std * random_normal(tf.shape(images), seed, stream=1)
        # Images live in [0, 1] (the decoder ends in a sigmoid); keep the input there too.
        return tf.clip_by_value(noisy, 0.0, 1.0) if self.clip else noisy

    def __call__(self, encoder, decoder, images, training=True, seed=None):
        code = encoder(self.corrupt(images, seed), training=training)
        reconstruction = decoder(code, training=training)
        mse = tf.reduce_mean(per_image_mse(images, reconstruction))
        return {"loss": mse, "mse": mse}

    def get_config(self):
        return {"noise_std": self.noise_std, "clip": self.clip}


class Sparse(Objective):
    """Reconstruction plus ``sparsity_weight`` times the mean L1 norm of the code."""

    name = "sparse"
    term_names = ("loss", "mse", "l1")

    def __init__(self, sparsity_weight=1e-3):
        if not sparsity_weight >= 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight!r}")
        self.sparsity_weight = float(sparsity_weight)

    def __call__(self, encoder, decoder, images, training=True, seed=None):
        code = encoder(images, training=training)
        reconstruction = decoder(code, training=training)
        mse = tf.reduce_mean(per_image_mse(images, reconstruction))
        l1 = tf.reduce_mean(tf.reduce_sum(tf.abs(code), axis=-1))
        return {"loss": mse + self.sparsity_weight * l1, "mse": mse, "l1": l1}

    def get_config(self):
        return {"sparsity_weight": self.sparsity_weight}


class Contractive(Objective):
    """Reconstruction plus ``contractive_weight`` times ``||d code / d x||_F^2``.

    The squared Frobenius norm is estimated with random projections (Hutchinson):
    ``E_u ||J u||^2 = ||J||_F^2`` for ``u ~ N(0, I)`` in input space. Each ``J u`` is a
    directional derivative taken by a forward finite difference, ``(f(x + h u) - f(x)) / h``,
    and the perturbed copies ride in the same encoder call as the clean batch. That needs
    first-order gradients only, so it trains through the native op (whose gradient has no
    gradient of its own), and because clean and perturbed images share one batch they share
    the batch-norm statistics: the difference is the per-image Jacobian, and the moving
    statistics are updated once per step, not once per pass.
    """

    name = "contractive"
    term_names = ("loss", "mse", "jacobian_frobenius_sq")

    def __init__(self, contractive_weight=1e-2, num_probes=1, step_size=1e-2):
        if not contractive_weight >= 0:
            raise ValueError(f"contractive_weight must be >= 0, got {contractive_weight!r}")
        if int(num_probes) < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes!r}")
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        self.contractive_weight = float(contractive_weight)
        self.num_probes = int(num_probes)
        self.step_size = float(step_size)

    def jacobian_penalty(self, encoder, images, training=True, seed=None):
        """Return ``(clean code, mean over images of the ||J||_F^2 estimate)``."""
        batch = tf.shape(images)[0]
        probe_shape = tf.concat([[self.num_probes * batch], tf.shape(images)[1:]], axis=0)
        probes = random_normal(probe_shape, seed, stream=3)
        repeated = tf.tile(images, [self.num_probes, 1, 1, 1])
        stacked = tf.concat([images, repeated + self.step_size * probes], axis=0)
        codes = encoder(stacked, training=training)
        clean_code, perturbed = codes[:batch], codes[batch:]
        tiled_clean = tf.tile(clean_code, [self.num_probes, 1])
        directional = (perturbed - tiled_clean) / self.step_size
        squared_norms = tf.reduce_sum(tf.square(directional), axis=-1)
        return clean_code, tf.reduce_mean(squared_norms)

    def __call__(self, encoder, decoder, images, training=True, seed=None):
        code, jacobian_norm = self.jacobian_penalty(encoder, images, training, seed)
        reconstruction = decoder(code, training=training)
        mse = tf.reduce_mean(per_image_mse(images, reconstruction))
        loss = mse + self.contractive_weight * jacobian_norm
        return {"loss": loss, "mse": mse, "jacobian_frobenius_sq": jacobian_norm}

    def get_config(self):
        return {"contractive_weight": self.contractive_weight, "num_probes": self.num_probes,
                "step_size": self.step_size}


class Variational(Objective):
    """A beta-VAE: the encoder emits ``[mean, log_variance]``; ``encode`` returns the mean.

    Loss per image: summed squared error over pixels (the Gaussian log-likelihood up to a
    constant, so the KL is weighed against the whole image rather than one pixel's worth)
    plus ``beta`` times ``KL(N(mean, var) || N(0, I))``; both averaged over the batch.
    """

    name = "variational"
    code_multiplier = 2
    term_names = ("loss", "reconstruction", "kl", "mse")

    def __init__(self, beta=1.0):
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta = float(beta)

    @staticmethod
    def split(encoder_output):
        mean, log_variance = tf.split(encoder_output, 2, axis=-1)
        return mean, log_variance

    def code(self, encoder_output):
        return self.split(encoder_output)[0]

    def __call__(self, encoder, decoder, images, training=True, seed=None):
        mean, log_variance = self.split(encoder(images, training=training))
        noise = random_normal(tf.shape(mean), seed, stream=2)
        sample = mean + tf.exp(0.5 * log_variance) * noise
        reconstruction = decoder(sample, training=training)
        squared_error = tf.reduce_sum(tf.square(images - reconstruction), axis=[1, 2, 3])
        kl = -0.5 * tf.reduce_sum(
            1.0 + log_variance - tf.square(mean) - tf.exp(log_variance), axis=-1)
        reconstruction_term = tf.reduce_mean(squared_error)
        kl_term = tf.reduce_mean(kl)
        mse = tf.reduce_mean(per_image_mse(images, reconstruction))
        return {"loss": reconstruction_term + self.beta * kl_term,
                "reconstruction": reconstruction_term, "kl": kl_term, "mse": mse}

    def get_config(self):
        return {"beta": self.beta}


_CLASSES = {cls.name: cls for cls in (Vanilla, Denoising, Sparse, Contractive, Variational)}


def get(objective="vanilla", **options):
    """An Objective from its name and options, or ``objective`` itself if it is one."""
    if isinstance(objective, Objective):
        if options:
            raise ValueError(f"options {sorted(options)} given with an Objective instance")
        return objective
    if objective not in _CLASSES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return _CLASSES[objective](**options)


def serialize(objective):
    return {"name": objective.name, "config": objective.get_config()}


def deserialize(config):
    return get(config["name"], **config.get("config", {}))


__all__ = ["OBJECTIVES", "Objective", "Vanilla", "Denoising", "Sparse", "Contractive",
           "Variational", "get", "serialize", "deserialize", "per_image_mse"]
