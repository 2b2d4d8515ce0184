"""Models match the tutorial's; fused equals unfused; every objective trains."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from pyae import models, objectives
from pyae.layers import FusedConv2DTranspose, FusedConvBNLeakyReLU, FusedConvTransposeBNLeakyReLU

TINY = {"input_shape": (16, 16, 1), "latent_dim": 3, "filters": (4, 8), "strides": (2, 2)}


def tutorial_encoder(input_shape, latent_dim, filters, strides):
    """The tutorial's encoder code, block for block (Conv2D keeps its default bias)."""
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = inputs
    for i, (block_filters, stride) in enumerate(zip(filters, strides), start=1):
        x = keras.layers.Conv2D(block_filters, kernel_size=3, strides=stride, padding="same",
                                name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.LeakyReLU(name=f"lrelu_{i}")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(latent_dim, name="dense_1")(x))


def tutorial_decoder(latent_dim, grid, filters, strides, channels, last_stride):
    inputs = keras.Input(shape=(latent_dim,), name="input_layer")
    x = keras.layers.Dense(int(np.prod(grid)), name="dense_1")(inputs)
    x = keras.layers.Reshape(grid)(x)  # the tutorial's tf.reshape(x, [-1, *grid])
    for i, (block_filters, stride) in enumerate(zip(filters, strides), start=1):
        x = keras.layers.Conv2DTranspose(block_filters, 3, strides=stride, padding="same",
                                         name=f"conv_transpose_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.LeakyReLU(name=f"lrelu_{i}")(x)
    outputs = keras.layers.Conv2DTranspose(channels, 3, last_stride, padding="same",
                                           activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


# The tutorial's two architectures, transcribed from its listings.
TUTORIAL = {
    "fashion_mnist": (tutorial_encoder((28, 28, 1), 2, (32, 64, 64, 64), (1, 2, 2, 1)),
                      tutorial_decoder(2, (7, 7, 64), (64, 64, 32), (1, 2, 2), 1, 1)),
    "cartoon": (tutorial_encoder((256, 256, 3), 200, (32, 64, 64, 64, 64), (2,) * 5),
                tutorial_decoder(200, (8, 8, 64), (64, 64, 64, 32), (2,) * 4, 3, 2)),
}


def conv_bias_count(model):
    return sum(int(layer.bias.shape[0]) for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))
               and layer.name.startswith("conv") and layer.use_bias
               and layer.activation is keras.activations.linear)


def output_shapes(model):
    return [tuple(layer.output.shape) for layer in model.layers
            if layer.name.startswith(("conv", "dense", "input"))]


@pytest.mark.parametrize("preset", ["fashion_mnist", "cartoon"])
def test_preset_matches_tutorial_shapes_and_params(preset):
    fused = models.build(preset)
    unfused = models.build(preset, unfused=True)
    tutorial_encoder_model, tutorial_decoder_model = TUTORIAL[preset]
    for ours, theirs in ((fused.encoder, tutorial_encoder_model),
                         (fused.decoder, tutorial_decoder_model),
                         (unfused.encoder, tutorial_encoder_model)):
        assert output_shapes(ours) == output_shapes(theirs)
    tutorial_params = tutorial_encoder_model.count_params() + tutorial_decoder_model.count_params()
    # unfused=True is the tutorial's stack exactly; fused drops only the redundant conv biases.
    assert unfused.count_params() == tutorial_params
    biases = conv_bias_count(tutorial_encoder_model) + conv_bias_count(tutorial_decoder_model)
    assert fused.count_params() == tutorial_params - biases
    assert fused.count_params() == models.build(preset, unfused=True,
                                                conv_bias=False).count_params()


def test_fashion_mnist_layer_names_and_types():
    model = models.fashion_mnist_autoencoder()
    encoder_names = [layer.name for layer in model.encoder.layers]
    decoder_names = [layer.name for layer in model.decoder.layers]
    assert encoder_names == ["input_layer", "conv_1", "conv_2", "conv_3", "conv_4", "flatten",
                             "dense_1"]
    assert decoder_names == ["input_layer", "dense_1", "reshape_layer", "conv_transpose_1",
                             "conv_transpose_2", "conv_transpose_3", "conv_transpose_4"]
    assert all(isinstance(model.encoder.get_layer(f"conv_{i}"), FusedConvBNLeakyReLU)
               for i in range(1, 5))
    assert all(isinstance(model.decoder.get_layer(f"conv_transpose_{i}"),
                          FusedConvTransposeBNLeakyReLU) for i in range(1, 4))
    output_layer = model.decoder.get_layer("conv_transpose_4")
    assert type(output_layer) is FusedConv2DTranspose
    assert output_layer.activation is keras.activations.sigmoid
    assert (output_layer.padding, output_layer.strides) == ("same", (1, 1))
    assert model.latent_dim == 2


@pytest.mark.parametrize("impl", ["tf", "auto"])
def test_output_layer_takes_the_models_or_its_own_impl_and_unfused_is_keras_own(impl):
    fused = models.build("fashion_mnist", impl=impl, **TINY)
    assert fused.decoder.get_layer("conv_transpose_2").impl == impl
    pinned = models.build("fashion_mnist", impl=impl, output_impl="tf", **TINY)
    assert pinned.decoder.get_layer("conv_transpose_2").impl == "tf"
    assert pinned.decoder.get_layer("conv_transpose_1").impl == impl
    unfused = models.build("fashion_mnist", unfused=True, **TINY)
    assert type(unfused.decoder.get_layer("conv_transpose_2")) is keras.layers.Conv2DTranspose


def test_cartoon_defaults_and_options():
    model = models.cartoon_autoencoder(latent_dim=16)
    assert model.encoder.output.shape == (None, 16)
    assert model.decoder.output.shape == (None, 256, 256, 3)
    assert len(model.decoder.layers) == 3 + 4 + 1
    with pytest.raises(ValueError, match="preset"):
        models.build("mnist")
    with pytest.raises(ValueError, match="divide"):
        models.build("fashion_mnist", input_shape=(30, 30, 1))
    with pytest.raises(ValueError, match="objective"):
        models.build("fashion_mnist", objective="adversarial")


def random_images(count, shape=(16, 16, 1), seed=0):
    return np.random.default_rng(seed).random((count, *shape), dtype="float32")


@pytest.mark.parametrize("training", [False, True])
def test_fused_equals_unfused_with_copied_weights(training):
    keras.utils.set_random_seed(0)
    reference = models.build("fashion_mnist", unfused=True, **TINY)
    fused = models.build("fashion_mnist", impl="tf", **TINY)
    randomize_batch_norm(reference)
    models.copy_weights(reference, fused)
    images = random_images(8)
    expected = reference(images, training=training)
    actual = fused(images, training=training)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    # ...and back: a fused model's weights make the same unfused model.
    round_trip = models.build("fashion_mnist", unfused=True, **TINY)
    models.copy_weights(fused, round_trip)
    np.testing.assert_allclose(round_trip(images), reference(images), rtol=1e-4, atol=1e-5)


def randomize_batch_norm(model):
    """Non-trivial BN state and conv biases so that copying them is actually checked."""
    rng = np.random.default_rng(1)
    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            for variable in layer.weights:
                name = variable.name.split("/")[-1]
                if name in ("gamma", "moving_variance"):
                    variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
                elif name in ("beta", "moving_mean", "bias"):
                    variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))


def test_encode_decode_reconstruct_are_batched_numpy():
    model = models.build("fashion_mnist", **TINY)
    images = random_images(10)
    codes = model.encode(images, batch_size=4)
    assert isinstance(codes, np.ndarray) and codes.shape == (10, 3)
    np.testing.assert_allclose(codes, model.encoder(images, training=False), rtol=1e-4,
                               atol=1e-5)
    decoded = model.decode(codes, batch_size=3)
    assert decoded.shape == (10, 16, 16, 1)
    np.testing.assert_allclose(model.reconstruct(images, batch_size=7), decoded, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(model(images), decoded, rtol=1e-4, atol=1e-5)


def test_variational_encoder_emits_mean_and_log_variance():
    model = models.build("fashion_mnist", objective="variational", beta=0.5, **TINY)
    assert model.encoder.output.shape == (None, 6)
    assert model.latent_dim == 3
    images = random_images(4)
    mean = model.encoder(images, training=False)[:, :3]
    np.testing.assert_allclose(model.encode(images), mean, rtol=1e-4, atol=1e-5)
    assert model.objective.beta == 0.5


def test_keras_file_round_trip(tmp_path):
    model = models.build("fashion_mnist", objective="denoising", noise_std=0.2, **TINY)
    randomize_batch_norm(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, models.Autoencoder)
    assert loaded.objective.name == "denoising" and loaded.objective.noise_std == 0.2
    images = random_images(4)
    np.testing.assert_allclose(loaded.reconstruct(images), model.reconstruct(images),
                               rtol=1e-5, atol=1e-6)


OBJECTIVE_OPTIONS = {
    "vanilla": {}, "denoising": {"noise_std": 0.1}, "sparse": {"sparsity_weight": 1e-2},
    "contractive": {"contractive_weight": 1e-3}, "variational": {"beta": 0.1},
}


@pytest.mark.parametrize("name", objectives.OBJECTIVES)
def test_objective_trains_and_loss_decreases(name):
    keras.utils.set_random_seed(0)
    model = models.build("fashion_mnist", objective=name, **TINY, **OBJECTIVE_OPTIONS[name])
    optimizer = keras.optimizers.Adam(1e-2)
    images = tf.constant(random_images(16))
    seed = tf.constant([1, 2])  # the same noise every step: the loss is one fixed function

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            terms = model.objective_terms(images, training=True, seed=seed)
        gradients = tape.gradient(terms["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return terms

    losses = [float(step()["loss"]) for _ in range(12)]
    terms = step()
    assert {"loss", "mse"} <= set(terms)
    assert all(np.isfinite(float(value)) for value in terms.values())
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_contractive_estimate_matches_exact_jacobian():
    model = models.build("fashion_mnist", impl="tf", **TINY)
    images = tf.constant(random_images(4))
    with tf.GradientTape() as tape:
        tape.watch(images)
        codes = model.encoder(images, training=False)
    jacobian = tape.batch_jacobian(codes, images)  # (4, latent, 16, 16, 1)
    exact = float(tf.reduce_mean(tf.reduce_sum(tf.square(jacobian), axis=[1, 2, 3, 4])))
    estimator = objectives.get("contractive", num_probes=512, step_size=1e-3)
    _, estimate = estimator.jacobian_penalty(model.encoder, images, training=False,
                                             seed=tf.constant([0, 1]))
    assert float(estimate) == pytest.approx(exact, rel=0.15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_image_mse_and_its_gradient_are_the_tutorials(dtype):
    rng = np.random.default_rng(3)
    images = tf.constant(rng.random((3, 5, 4, 2)), dtype=dtype)
    reconstruction = tf.constant(rng.random((3, 5, 4, 2)), dtype=dtype)
    upstream = tf.constant(rng.standard_normal(3), dtype=dtype)

    def tutorial_loss(x, y):
        return tf.reduce_mean(tf.square(x - y), axis=[1, 2, 3])

    results = []
    for loss_fn in (objectives.per_image_mse, tutorial_loss):
        with tf.GradientTape() as tape:
            tape.watch([images, reconstruction])
            loss = loss_fn(images, reconstruction)
        results.append([loss, *tape.gradient(loss, [images, reconstruction],
                                             output_gradients=upstream)])
    tolerance = 1e-6 if dtype == "float32" else 1e-13
    for ours, tutorials in zip(*results):
        np.testing.assert_allclose(ours.numpy(), tutorials.numpy(), rtol=tolerance,
                                   atol=tolerance)


def test_objectives_are_selected_by_name_and_validated():
    assert [objectives.get(name).name for name in objectives.OBJECTIVES] == list(
        objectives.OBJECTIVES)
    assert objectives.deserialize(objectives.serialize(
        objectives.get("sparse", sparsity_weight=0.5))).sparsity_weight == 0.5
    with pytest.raises(ValueError):
        objectives.get("denoising", noise_std=-1)
    with pytest.raises(TypeError):
        objectives.get("vanilla", beta=1.0)
