"""The Trainer: history, checkpoints and resume, seeds, NaN stop, TensorBoard, strategies."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from pyae import models, ops, train

TINY = {"input_shape": (16, 16, 1), "latent_dim": 3, "filters": (4, 8), "strides": (2, 2)}


def tiny_model(seed=0, **options):
    keras.utils.set_random_seed(seed)
    return models.build("fashion_mnist", **TINY, **options)


@pytest.fixture(name="images")
def fixture_images():
    return np.random.default_rng(0).random((64, 16, 16, 1), dtype="float32")


def weights_of(model):
    return [np.array(variable) for variable in model.variables]


def test_fit_returns_history_and_writes_loss_csv(tmp_path, images):
    trainer = train.Trainer(tiny_model(), step="native", seed=0, checkpoint_dir=tmp_path)
    history = trainer.fit(images, epochs=2, batch_size=32, validation_data=images[:16],
                          verbose=0)
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"loss", "mse", "val_loss", "val_mse", "seconds", "images_per_s"} <= set(history[0])
    assert all(np.isfinite(row["loss"]) for row in history)
    rows = train.read_loss_csv(tmp_path / train.LOSS_CSV)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["loss"] for row in rows] == [row["loss"] for row in history]


def test_killed_run_resumes_from_last_complete_epoch(tmp_path, images):
    first = train.Trainer(tiny_model(seed=0), step="native", seed=0, checkpoint_dir=tmp_path)
    first_history = first.fit(images, epochs=2, batch_size=32, verbose=0)
    saved = weights_of(first.model)
    # A run killed while writing epoch 3 leaves only a temporary folder behind.
    (tmp_path / ".epoch-000003.tmp-12345").mkdir()

    # "Restart the process": a new Trainer, a differently initialised model, the same folder.
    second = train.Trainer(tiny_model(seed=1), step="native", seed=0, checkpoint_dir=tmp_path)
    assert second.restore() == 2
    for restored, expected in zip(weights_of(second.model), saved):
        np.testing.assert_array_equal(restored, expected)
    assert int(second.optimizer.iterations.numpy()) == int(first.optimizer.iterations.numpy())
    history = second.fit(images, epochs=3, batch_size=32, verbose=0)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:2] == first_history

    # The resumed epoch 3 is the epoch 3 an uninterrupted run would have trained.
    uninterrupted = train.Trainer(tiny_model(seed=0), step="native", seed=0)
    full = uninterrupted.fit(images, epochs=3, batch_size=32, verbose=0)
    assert history[2]["loss"] == pytest.approx(full[2]["loss"], rel=1e-5)
    assert sorted(os.listdir(tmp_path)) == [".epoch-000003.tmp-12345", "epoch-000002",
                                            "epoch-000003", "loss.csv"]


def test_same_seed_gives_identical_losses(images):
    def run():
        trainer = train.Trainer(tiny_model(seed=5, objective="denoising"), step="native",
                                seed=5)
        return [row["loss"] for row in trainer.fit(images, epochs=2, batch_size=16, verbose=0)]

    assert run() == run()


@pytest.mark.parametrize("impl", ["auto", "tf"])
def test_nan_loss_stops_with_epoch_and_step(images, impl):
    poisoned = images.copy()
    poisoned[40] = np.nan  # batch 2 of 2 in epoch 1 without shuffling
    # The native op refuses NaN input outright; the composite ops carry it to the loss.
    trainer = train.Trainer(tiny_model(impl=impl), step="native", seed=0)
    with pytest.raises(FloatingPointError, match="epoch 1, step 2") as caught:
        trainer.fit(poisoned, epochs=2, batch_size=32, verbose=0, shuffle=False)
    assert isinstance(caught.value, train.NonFiniteLossError)
    assert (caught.value.epoch, caught.value.step) == (1, 2)


def test_tensorboard_scalars_and_images(tmp_path, images):
    log_dir = tmp_path / "logs"
    trainer = train.Trainer(tiny_model(), step="native", seed=0, log_dir=str(log_dir))
    trainer.fit(images, epochs=1, batch_size=32, verbose=0)
    tags = set()
    for event_file in log_dir.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"step/loss", "epoch/loss", "epoch/mse", "reconstructions"} <= tags


def test_datasets_of_images_or_pairs(images):
    labels = np.arange(len(images))
    unbatched_pairs = tf.data.Dataset.from_tensor_slices((images, labels))
    trainer = train.Trainer(tiny_model(), step="native", seed=0)
    history = trainer.fit(unbatched_pairs, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history[0]["loss"])
    batched = tf.data.Dataset.from_tensor_slices(images).batch(16)
    history = trainer.fit(batched, epochs=2, verbose=0)
    assert len(history) == 2
    evaluated = trainer.evaluate((images, labels))
    assert set(evaluated) == {"loss", "mse"}


def test_xla_and_native_steps_agree_and_auto_probing_leaves_no_trace(monkeypatch, images):
    trainer = train.Trainer(tiny_model(seed=3), seed=3, probe_steps=1, auto_policy="measure")
    initial = trainer._state_variables()  # pylint: disable=protected-access
    initial_values = [np.array(variable) for variable in initial]
    batch = tf.constant(images[:32])
    losses = {}
    for kind in ("xla", "native"):
        losses[kind] = [float(trainer.step_function(kind)(batch)["loss"]) for _ in range(2)]
        for variable, value in zip(initial, initial_values):
            variable.assign(value)
    np.testing.assert_allclose(losses["xla"], losses["native"], rtol=1e-4)

    if not ops.native_available():  # exercise the measuring path all the same
        monkeypatch.setattr(ops, "native_available", lambda: True)
    trainer._choose_step(images[:32], verbose=0)  # pylint: disable=protected-access
    assert trainer.chosen_step in ("xla", "native")
    assert set(trainer.step_timings) == {"xla", "native"}
    assert "ms/step" in trainer.step_reason
    assert set(trainer._step_functions) == {trainer.chosen_step}  # pylint: disable=protected-access
    for variable, value in zip(initial, initial_values):
        np.testing.assert_array_equal(np.array(variable), value)  # probing restored all


def test_auto_step_without_native_library_is_xla(monkeypatch, images, capsys):
    monkeypatch.setattr(ops, "native_available", lambda: False)
    trainer = train.Trainer(tiny_model(), seed=0)
    trainer._choose_step(images[:32], verbose=1)  # pylint: disable=protected-access
    assert trainer.chosen_step == "xla"
    assert "not loaded" in trainer.step_reason
    assert "train step 'xla'" in capsys.readouterr().out


def test_auto_step_rule_on_cpu(monkeypatch, images):
    monkeypatch.setattr(ops, "native_available", lambda: True)
    trainer = train.Trainer(tiny_model(), seed=0)
    trainer._choose_step(images[:32], verbose=0)  # pylint: disable=protected-access
    assert trainer.chosen_step == "native" and "rule" in trainer.step_reason
    assert not trainer.step_timings


def test_bad_arguments():
    with pytest.raises(ValueError, match="step"):
        train.Trainer(tiny_model(), step="eager")
    with pytest.raises(ValueError, match="auto_policy"):
        train.Trainer(tiny_model(), auto_policy="guess")
    with pytest.raises(TypeError, match="Autoencoder"):
        train.Trainer(keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="shape"):
        train.Trainer(tiny_model(), step="native").fit(np.zeros((4, 16, 16)), epochs=1)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, time
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Logical devices must exist before TensorFlow initialises its runtime.
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from pyae import models, train

    started = time.perf_counter()
    images = np.random.default_rng(0).random((32, 16, 16, 1), dtype="float32")
    options = dict(input_shape=(16, 16, 1), latent_dim=3, filters=(4, 8), strides=(2, 2))
    keras.utils.set_random_seed(0)
    single = models.build("fashion_mnist", **options)
    initial = single.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync}
    # SGD, not Adam: Adam is blind to a wrongly scaled gradient, SGD's update shows it.
    mirrored = train.Trainer(single, optimizer=keras.optimizers.SGD(0.5), step="xla", seed=0,
                             strategy=strategy)
    result["losses"] = [mirrored.train_step(images)["loss"] for _ in range(2)]
    mirrored_update = [a - b for a, b in zip(mirrored.model.get_weights(), initial)]
    reference = train.Trainer(single, optimizer=keras.optimizers.SGD(0.5), step="xla", seed=0)
    result["reference_losses"] = [reference.train_step(images)["loss"] for _ in range(2)]
    single_update = [a - b for a, b in zip(single.get_weights(), initial)]
    result["update_ratio"] = float(
        sum(np.sum(u * u) for u in mirrored_update)
        / sum(np.sum(u * v) for u, v in zip(mirrored_update, single_update)))
    # The graph-mode step, through fit, with its resume-safe batching and reporting.
    history = train.Trainer(single, step="native", seed=0, strategy=strategy).fit(
        images, epochs=2, batch_size=32, verbose=0)
    result["fit_losses"] = [row["loss"] for row in history]
    result["seconds"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result))
""")


def test_mirrored_strategy_over_two_logical_cpus():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT],
                               capture_output=True, text=True, timeout=300, env=environment,
                               check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout[-2000:] + completed.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    # Replicas normalise over their own 16 images, so the two agree closely, not exactly.
    np.testing.assert_allclose(result["losses"], result["reference_losses"], rtol=1e-2)
    # The mirrored update is the single-device one (a gradient summed over replicas
    # without the 1/replicas scaling would make this ratio 2).
    assert result["update_ratio"] == pytest.approx(1.0, abs=0.1)
    assert all(np.isfinite(result["fit_losses"]))
