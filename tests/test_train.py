"""Training through Keras' compile/fit/evaluate: steps, run callbacks, resume, seeds, NaN."""
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from _python import same_pyae_env
from pyae import callbacks, models, objectives, ops, train

TINY = {"input_shape": (16, 16, 1), "latent_dim": 3, "filters": (4, 8), "strides": (2, 2)}


def tiny_model(seed=0, **options):
    keras.utils.set_random_seed(seed)
    return models.build("fashion_mnist", **TINY, **options)


@pytest.fixture(name="images")
def fixture_images(rng):
    return rng.random((64, 16, 16, 1), dtype="float32")


def weights_of(model):
    return [np.array(variable) for variable in model.weights]


class BatchSizes(keras.callbacks.Callback):
    """Counts the batches of each epoch."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_compile_defaults_are_the_tutorials(images):
    model = tiny_model()
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    counter = BatchSizes()
    model.fit(np.concatenate([images, images, images]), epochs=1, verbose=0,
              callbacks=[counter])
    assert counter.batches == 2  # 192 images at the tutorial's batch of 128
    with pytest.raises(ValueError, match="loss="):
        model.compile(loss="mse")


@pytest.mark.parametrize("name", objectives.OBJECTIVES)
def test_every_objective_trains_with_fit_evaluate_and_predict(name, images):
    model = tiny_model(objective=name)
    model.compile(keras.optimizers.Adam(1e-2), seed=0)
    history = model.fit(images, epochs=3, batch_size=32, validation_data=images[:16],
                        verbose=0).history
    terms = objectives.get(name).term_names
    assert set(history) == set(terms) | {f"val_{term}" for term in terms}
    assert all(np.isfinite(values).all() for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    evaluated = model.evaluate(images, verbose=0, return_dict=True)
    assert set(evaluated) == set(terms)
    assert model.predict(images[:5], verbose=0).shape == (5, 16, 16, 1)


@pytest.mark.parametrize("options, through_pyae", [
    ({"validation_data": "pairs"}, True),
    ({"validation_split": 0.25}, False),  # only Keras' own array pipeline splits
    ({"shuffle": "batch"}, False),
])
def test_fit_feeds_arrays_through_a_pipeline_without_autotuning(images, monkeypatch, options,
                                                                through_pyae):
    # TF 2.21 can hold each epoch's end until tf.data's autotuner wakes (pyae.data).
    given = {}
    keras_fit = keras.Model.fit

    def recording_fit(self, x=None, y=None, **kwargs):
        given.update(x=x, validation_data=kwargs.get("validation_data"))
        return keras_fit(self, x, y, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    if options.get("validation_data") == "pairs":
        options = {"validation_data": (images[:8], np.zeros(8))}  # labels play no part
    model = tiny_model()
    model.compile(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Keras' "shuffle=True ... will be ignored"
        history = model.fit(images, epochs=2, batch_size=32, verbose=0, **options).history
    assert len(history["loss"]) == 2
    if not through_pyae:
        assert isinstance(given["x"], np.ndarray)
        return
    for dataset in (given["x"], given["validation_data"]):
        assert isinstance(dataset, tf.data.Dataset)
        assert dataset.options().autotune.enabled is False
    assert len(history["val_loss"]) == 2


def test_tf_data_of_pairs_and_steps_per_execution(images):
    pairs = tf.data.Dataset.from_tensor_slices((images, np.arange(len(images)))).batch(16)
    results = []
    for steps_per_execution in (1, 3):
        model = tiny_model(seed=2, objective="denoising")
        model.compile(seed=2, steps_per_execution=steps_per_execution)
        history = model.fit(pairs, epochs=2, verbose=0).history
        results.append((history["loss"], weights_of(model)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for one, grouped in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(one, grouped, rtol=1e-4, atol=1e-6)


def test_auto_step_is_native_on_cpu_and_says_why(monkeypatch, images, capsys):
    monkeypatch.setattr(ops, "native_available", lambda: True)
    model = tiny_model()
    model.compile()
    assert model.jit_compile is False
    assert model.chosen_step == "native" and "rule for CPU" in model.step_reason
    model.fit(images, epochs=2, batch_size=32, verbose="auto")
    printed = capsys.readouterr().out
    assert printed.count("train step 'native'") == 1


def test_auto_step_without_native_library_is_xla(monkeypatch):
    monkeypatch.setattr(ops, "native_available", lambda: False)
    model = tiny_model()
    model.compile()
    assert model.jit_compile is True
    assert model.chosen_step == "xla" and "not loaded" in model.step_reason
    with pytest.raises(ValueError, match="auto_policy"):
        model.compile(auto_policy="guess")


def test_auto_step_is_xla_where_the_layers_would_run_composite_ops(monkeypatch):
    monkeypatch.setattr(ops, "native_available", lambda: True)
    monkeypatch.setattr(ops, "explain_impl",
                        lambda impl="auto", dtype="float32": ("tf", "the generic CPU path is slower"))
    model = tiny_model()
    model.compile()
    assert model.jit_compile is True and model.chosen_step == "xla"
    assert "generic CPU path" in model.step_reason


def test_auto_step_under_mixed_float16_is_xla_as_its_layers_run_composite_ops(monkeypatch,
                                                                             images):
    monkeypatch.setattr(ops, "native_available", lambda: True)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model()
        model.compile()
        assert model.jit_compile is True and model.chosen_step == "xla"
        assert "float16" in model.step_reason
        history = model.fit(images, epochs=1, batch_size=32, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(history["loss"][0])


def test_measured_step_keeps_the_faster_and_leaves_no_trace(images):
    model = tiny_model(seed=3)
    model.compile(seed=3, auto_policy="measure")
    if model.chosen_step is not None:
        pytest.skip(f"no measuring without the native op: {model.step_reason}")
    before = weights_of(model)
    model.compile(seed=3, auto_policy="measure")
    step, reason, timings = train.measure_step(model, images[:32], probe_steps=1)
    assert set(timings) == {"xla", "native"} and "ms/step" in reason
    assert model.jit_compile is (step == "xla")
    for value, expected in zip(weights_of(model), before):
        np.testing.assert_array_equal(value, expected)
    assert int(model.optimizer.iterations) == 0


def test_redirected_console_gets_one_line_per_epoch(images, capsys):
    model = tiny_model()
    model.compile(seed=0)
    model.fit(images, epochs=3, batch_size=8, verbose="auto")  # pytest's stdout is no TTY
    lines = [line for line in capsys.readouterr().out.splitlines() if "loss" in line]
    assert len(lines) == 3
    assert train.console_verbose("auto") == 2 and train.console_verbose(1) == 1


def test_run_folder_resumes_from_last_complete_epoch(tmp_path, images, capsys):
    first = tiny_model(seed=0)
    train.fit(first, images, epochs=2, batch_size=32, run_dir=tmp_path, seed=0,
              shuffle=False, verbose=0)
    saved = weights_of(first)
    # A run killed while writing epoch 3 leaves only a temporary folder behind.
    (tmp_path / ".epoch-000003.tmp-12345").mkdir()
    assert train.last_checkpoint(tmp_path) == (2, str(tmp_path / "epoch-000002"))

    # "Restart the process": a differently initialised model, the same folder.
    second = tiny_model(seed=1)
    history = train.fit(second, images, epochs=3, batch_size=32, run_dir=tmp_path, seed=7,
                        shuffle=False, verbose=2)
    assert "resuming from" in capsys.readouterr().out
    assert history.epoch == [2]
    assert second.seed == 0  # the run's noise seed comes back with its weights

    uninterrupted = tiny_model(seed=0)
    full = train.fit(uninterrupted, images, epochs=3, batch_size=32, seed=0, shuffle=False,
                     verbose=0)
    assert history.history["loss"][0] == pytest.approx(full.history["loss"][2], rel=1e-5)
    rows = train.read_loss_csv(tmp_path / train.LOSS_CSV)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith((".", "epoch"))) \
        == ["epoch-000002", "epoch-000003"]

    restored = tiny_model(seed=4)
    assert train.restore(restored, tmp_path) == 3
    for value, expected in zip(weights_of(restored), weights_of(second)):
        np.testing.assert_array_equal(value, expected)
    assert any(not np.array_equal(a, b) for a, b in zip(saved, weights_of(second)))


def test_loss_csv_drops_an_epoch_logged_but_not_checkpointed(tmp_path, images):
    model = tiny_model()
    train.fit(model, images, epochs=1, batch_size=32, run_dir=tmp_path, seed=0, verbose=0)
    csv_path = tmp_path / train.LOSS_CSV
    header, row = csv_path.read_text().splitlines()
    # Killed after loss.csv got epoch 1's row (and half of epoch 2's) but before the
    # checkpoint of epoch 1 was committed.
    csv_path.write_text(f"{header}\n{row}\n{row.replace('0,', '1,', 1)}\n2,0.1")
    train.fit(tiny_model(), images, epochs=2, batch_size=32, run_dir=tmp_path, seed=0,
              verbose=0)
    assert [row["epoch"] for row in train.read_loss_csv(csv_path)] == [0, 1]


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import keras, numpy as np
    from pyae import models, train

    run_dir, kill_at_epoch = sys.argv[1], int(sys.argv[2])

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == kill_at_epoch * 2 + 1:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, no clean-up at all

    keras.utils.set_random_seed(0)
    model = models.build("fashion_mnist", input_shape=(16, 16, 1), latent_dim=3,
                         filters=(4, 8), strides=(2, 2))
    images = np.random.default_rng(0).random((64, 16, 16, 1), dtype="float32")
    train.fit(model, images, epochs=3, batch_size=32, run_dir=run_dir, seed=0,
              callbacks=[Kill()] if kill_at_epoch >= 0 else [], verbose=0)
""")


def run_script(script, *arguments, timeout=300, cwd=None, env=None):
    """``python -c script`` importing this process's pyae, from a folder with no pyae/ in it."""
    return subprocess.run([sys.executable, "-c", script, *map(str, arguments)],
                          capture_output=True, text=True, timeout=timeout,
                          env=same_pyae_env(TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
                          cwd=cwd or tempfile.gettempdir(), check=False)


def test_killed_process_resumes_and_loses_no_epoch(tmp_path):
    killed = run_script(KILLED_RUN, tmp_path / "run", 1)  # killed in epoch 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert train.complete_epochs(tmp_path / "run") == [1]
    resumed = run_script(KILLED_RUN, tmp_path / "run", -1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train.complete_epochs(tmp_path / "run") == [2, 3]
    rows = train.read_loss_csv(tmp_path / "run" / train.LOSS_CSV)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    uninterrupted = run_script(KILLED_RUN, tmp_path / "whole", -1)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    # Nothing lost, nothing repeated: the epochs after the kill are the uninterrupted ones
    # but for the shuffle order, which follows the process.
    whole = train.read_loss_csv(tmp_path / "whole" / train.LOSS_CSV)
    assert rows[0] == whole[0]


def test_same_seed_gives_bit_identical_loss_csv(tmp_path):
    for name in ("a", "b"):
        completed = run_script(KILLED_RUN, tmp_path / name, -1)
        assert completed.returncode == 0, completed.stderr[-3000:]
    first = (tmp_path / "a" / train.LOSS_CSV).read_bytes()
    assert first == (tmp_path / "b" / train.LOSS_CSV).read_bytes()
    assert first.count(b"\n") == 4


@pytest.mark.parametrize("impl", ["auto", "tf"])
def test_nan_stops_naming_epoch_step_and_culprit(images, impl):
    poisoned = images.copy()
    poisoned[40] = np.nan  # batch 2 of 2 in epoch 1 without shuffling
    model = tiny_model(impl=impl)
    model.compile(seed=0)
    with pytest.raises(FloatingPointError, match="epoch 1, step 2") as caught:
        model.fit(poisoned, epochs=2, batch_size=32, shuffle=False, verbose=0,
                  callbacks=[callbacks.StopOnNonFinite()])
    assert isinstance(caught.value, train.NonFiniteLossError)
    assert (caught.value.epoch, caught.value.step) == (1, 2)
    assert "Graph execution error" not in str(caught.value)
    assert "nan" in str(caught.value).lower()


def test_culprit_is_the_ops_own_message():
    message = ("Graph execution error:\n\nDetected at node Foo defined at (most recent call "
               "last):\n  File \"x.py\", line 1, in <module>\n\nx contains NaN or Inf "
               "values at index 3\n\t [[{{node Foo}}]] [Op:__inference_step_1]")
    error = tf.errors.InvalidArgumentError(None, None, message)
    assert callbacks.culprit(error) == "x contains NaN or Inf values at index 3"


def test_tensorboard_scalars_and_reconstruction_images(tmp_path, images):
    train.fit(tiny_model(), images, epochs=1, batch_size=32, run_dir=tmp_path, seed=0,
              validation_data=images[:8], verbose=0)
    tags = set()
    for folder, _, files in os.walk(tmp_path / train.LOG_DIR):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                tags.update(value.tag for value in event.summary.value)
    assert {"epoch_loss", "epoch_mse", "reconstructions"} <= tags


MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Logical devices must exist before TensorFlow initialises its runtime.
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from pyae import models, train

    images = np.random.default_rng(0).random((64, 16, 16, 1), dtype="float32")
    options = dict(input_shape=(16, 16, 1), latent_dim=3, filters=(4, 8), strides=(2, 2))

    def trained(strategy, run_dir=None):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = models.build("fashion_mnist", **options)
            initial = model.get_weights()
            # SGD, not Adam: Adam is blind to a wrongly scaled gradient, SGD's update shows it.
            model.compile(keras.optimizers.SGD(0.5), seed=0)
        history = train.fit(model, images, epochs=2, batch_size=32, run_dir=run_dir,
                            shuffle=False, verbose=0)
        update = [a - b for a, b in zip(model.get_weights(), initial)]
        return history.history["loss"], update

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": mirrored.num_replicas_in_sync}
    result["losses"], mirrored_update = trained(mirrored, run_dir=sys_run_dir)
    result["reference_losses"], single_update = trained(tf.distribute.get_strategy())
    result["update_ratio"] = float(
        sum(np.sum(u * u) for u in mirrored_update)
        / sum(np.sum(u * v) for u, v in zip(mirrored_update, single_update)))
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.parametrize("library", ["native", "fallback"])
def test_fit_under_mirrored_strategy_over_two_logical_cpus(tmp_path, library):
    """On the fallback too: jit_compile='auto' must not pick XLA, which cannot compile a
    multi-replica step on the CPU."""
    import json  # pylint: disable=import-outside-toplevel

    if library == "native" and not ops.native_available():
        pytest.skip("native op library not available")
    script = MIRRORED_SCRIPT.replace("sys_run_dir", repr(str(tmp_path)))
    completed = run_script(script, env={"PYAE_FORCE_FALLBACK": "1"} if library == "fallback"
                           else {})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout[-2000:] + completed.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    # Replicas normalise over their own 16 images, so the two agree closely, not exactly.
    np.testing.assert_allclose(result["losses"], result["reference_losses"], rtol=2e-2)
    # The mirrored update is the single-device one (a gradient summed over replicas
    # without the 1/replicas scaling would make this ratio 2).
    assert result["update_ratio"] == pytest.approx(1.0, abs=0.1)
    assert train.complete_epochs(tmp_path) == [1, 2]


def test_cli_train_reports_a_nan_stop_in_one_line(monkeypatch, tmp_path, capsys):
    from pyae import cli  # pylint: disable=import-outside-toplevel

    def diverging_fit(*args, **kwargs):
        raise train.NonFiniteLossError(3, 7, {"loss": float("nan")})

    monkeypatch.setattr(train, "fit", diverging_fit)
    status = cli.main(["train", "--dataset", "digits", "--limit", "64", "--epochs", "1",
                       "--out", str(tmp_path / "run"), "--quiet"])
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("pyae train: error: non-finite loss at epoch 3, step 7")
