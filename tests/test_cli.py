"""The ``pyae`` command line: one tiny training run per module, every command on it, and
bad input that must exit 2 with one message naming the bad value."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from pyae import cli, runs

SAMPLERS = ("uniform", "normal", "gaussian", "gmm")
RUN_FILES = ["config.json", "metrics.json", "loss.csv", "model.weights.h5",
             "reconstructions.png", "latent_scatter.png", "interpolation.png",
             "loss_curves.png"] + [f"samples_{name}.png" for name in SAMPLERS]


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``pyae argv``, run in this process."""
    try:
        status = cli.main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(result, *fragments):
    status, _, err = result
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def metrics_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One epoch on 128 digits: the run folder every other test reads."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    status = cli.main(["train", "--epochs", "1", "--limit", "128", "--batch-size", "64",
                       "--step", "native", "--out", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir


def test_train_writes_the_whole_run_folder(trained_run):
    for name in RUN_FILES:
        path = trained_run / name
        assert path.is_file() and path.stat().st_size > 0, name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["preset"] == "fashion_mnist"
    assert config["data"] == {"dataset": "digits", "fashion_mnist_path": None,
                              "image_size": None, "limit": 128, "seed": 0}
    assert config["train"]["epochs"] == 1 and config["train"]["chosen_step"] == "native"
    assert (trained_run / "loss.csv").read_text().count("\n") == 2  # header + one epoch
    metrics = metrics_of(trained_run)
    assert set(metrics["reconstruction"]) == {"mse", "psnr", "ssim"}
    assert "linear_probe_accuracy" in metrics["representation"]
    assert set(metrics["samplers"]) == set(SAMPLERS)
    assert {"hole_rate", "precision", "recall", "density", "coverage"} <= set(
        metrics["samplers"]["gmm"])


def test_reconstruct_rewrites_grid_and_metrics(trained_run, capsys):
    (trained_run / "reconstructions.png").unlink()
    status, out, _ = run_cli(capsys, "reconstruct", "--run", trained_run, "--n", 10)
    assert status == 0
    assert (trained_run / "reconstructions.png").stat().st_size > 0
    assert json.loads(out)["reconstruction"]["mse"] == metrics_of(trained_run)[
        "reconstruction"]["mse"]


def test_latent_writes_scatter(trained_run, capsys):
    (trained_run / "latent_scatter.png").unlink()
    status, out, _ = run_cli(capsys, "latent", "--run", trained_run, "--quiet")
    assert status == 0
    assert (trained_run / "latent_scatter.png").stat().st_size > 0
    assert "knn_accuracy" in json.loads(out)["representation"]


def test_sample_writes_chosen_samplers_and_interpolation(trained_run, capsys):
    for name in ("samples_uniform.png", "samples_gmm.png", "interpolation.png"):
        (trained_run / name).unlink()
    status, out, _ = run_cli(capsys, "sample", "--run", trained_run, "--samplers",
                             "uniform,gmm", "--n", 5, "--interpolation", "slerp", "--quiet")
    assert status == 0
    for name in ("samples_uniform.png", "samples_gmm.png", "interpolation.png"):
        assert (trained_run / name).stat().st_size > 0
    assert set(json.loads(out)["samplers"]) == {"uniform", "gmm"}
    # Other samplers' entries from training are kept, not dropped.
    assert set(metrics_of(trained_run)["samplers"]) == set(SAMPLERS)


def test_evaluate_prints_every_metric(trained_run, capsys):
    status, out, _ = run_cli(capsys, "evaluate", "--run", trained_run, "--samplers", "gaussian",
                             "--n", 100, "--quiet")
    assert status == 0
    printed = json.loads(out)
    assert {"reconstruction", "representation", "samplers", "decoder_consistency"} <= set(printed)
    assert printed["decoder_consistency"]["test_codes"] >= 0


@pytest.mark.parametrize("command, option", [("denoise", "--noise-std=0.2"),
                                             ("inpaint", "--mask-fraction=0.3")])
def test_restoration_writes_figure_and_psnr(trained_run, capsys, command, option):
    status, out, _ = run_cli(capsys, command, "--run", trained_run, option, "--images", 32,
                             "--quiet")
    assert status == 0
    assert (trained_run / f"{command}.png").stat().st_size > 0
    summary = metrics_of(trained_run)[command]
    assert summary == json.loads(out)[command]
    assert summary["images"] == 32
    assert summary["psnr_gain"] == pytest.approx(summary["psnr_after"] - summary["psnr_before"])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, fragments", [
    (["train", "--dataset", "mnistt"], ["'mnistt'", "unknown dataset"]),
    (["train", "--dataset", "folder:/no/such/folder"], ["/no/such/folder", "does not exist"]),
    (["train", "--dataset", "folder:"], ["'folder:'", "folder:PATH"]),
    (["train", "--fashion-mnist-path", "/no/such/idx"], ["/no/such/idx"]),
    (["train", "--preset", "anime"], ["'anime'", "--preset"]),
    (["train", "--epochs", "0"], ["'0'", "--epochs"]),
    (["train", "--latent-dim", "two"], ["'two'"]),
    (["reconstruct", "--run", "/no/such/run"], ["/no/such/run"]),
    (["sample", "--run", ".", "--samplers", "uniform,bogus"], ["bogus"]),
    (["inpaint", "--run", ".", "--mask-fraction", "1.5"], ["'1.5'"]),
    (["denoise", "--run", ".", "--noise-std", "-1"], ["'-1'"]),
    (["frobnicate"], ["'frobnicate'"]),
])
def test_bad_input_exits_2_naming_the_value(capsys, argv, fragments):
    assert_user_error(run_cli(capsys, *argv), *fragments)


def test_run_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert_user_error(run_cli(capsys, "latent", "--run", tmp_path), str(tmp_path),
                      "no checkpoint")
    other = tmp_path / "empty"
    other.mkdir()
    assert_user_error(run_cli(capsys, "evaluate", "--run", other), "no config.json")


def test_image_size_the_model_cannot_take(tmp_path, capsys):
    result = run_cli(capsys, "train", "--dataset", "synthetic_faces", "--image-size", 30,
                     "--limit", 8, "--out", tmp_path / "run")
    assert_user_error(result, "cartoon", "(30, 30, 3)")
    assert not (tmp_path / "run").exists()


def test_bench_without_bench_folder(tmp_path, capsys):
    assert_user_error(run_cli(capsys, "bench", "--bench-dir", tmp_path / "nope"), "nope")


def test_python_dash_m_help_and_error():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    help_run = subprocess.run([sys.executable, "-m", "pyae", "--help"], capture_output=True,
                              text=True, env=environment, timeout=120)
    assert help_run.returncode == 0
    for command in ("train", "reconstruct", "latent", "sample", "evaluate", "denoise",
                    "inpaint", "bench"):
        assert command in help_run.stdout
    error_run = subprocess.run([sys.executable, "-m", "pyae", "latent", "--run", "/no/run"],
                               capture_output=True, text=True, env=environment, timeout=120)
    assert error_run.returncode == 2
    assert "Traceback" not in error_run.stderr
    assert error_run.stderr.strip().splitlines()[-1] == (
        "pyae latent: error: --run /no/run: no such run folder")


def imported_modules(importtime_stderr):
    """The modules a ``python -X importtime`` run imported, from its stderr."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


@pytest.fixture
def pyae_script(tmp_path):
    """The console script pip writes for ``pyae`` (entry point pyae.cli:main)."""
    script = tmp_path / "bin" / "pyae"
    script.parent.mkdir()
    script.write_text("import sys\nfrom pyae.cli import main\nsys.exit(main())\n")
    return script


@pytest.mark.parametrize("launcher", ["console script", "python -m pyae"])
@pytest.mark.parametrize("argv, status", [
    (["--help"], 0), (["train", "--help"], 0), (["train", "--epochs", "0"], 2),
    (["latent", "--run", "/no/such/run"], 2)])
def test_the_command_answers_without_importing_tensorflow(pyae_script, launcher, argv, status):
    start = [str(pyae_script)] if launcher == "console script" else ["-m", "pyae"]
    result = subprocess.run([sys.executable, "-X", "importtime", *start, *argv],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr
    imported = imported_modules(result.stderr)
    assert "pyae.cli" in imported
    assert not {"tensorflow", "keras"} & imported


def write_idx_gz(path, array):
    """An IDX file (ubyte) as Fashion-MNIST ships it, gzip-compressed."""
    import gzip

    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.asarray(array, np.uint8).tobytes())


def fake_fashion_mnist(folder):
    import numpy as np

    from pyae import data

    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, count in (("train", 64), ("test", 16)):
        write_idx_gz(folder / data.FASHION_MNIST_FILES[f"x_{split}"],
                     rng.integers(0, 256, (count, 28, 28)))
        write_idx_gz(folder / data.FASHION_MNIST_FILES[f"y_{split}"],
                     np.arange(count) % 10)
    return ["--dataset", "fashion_mnist", "--fashion-mnist-path", folder]


def fake_cartoon_folder(folder):
    from pyae import data

    data.write_synthetic_cartoon_folder(folder, 40, image_size=32, seed=0)
    return ["--dataset", f"folder:{folder}", "--preset", "cartoon", "--image-size", 32,
            "--latent-dim", 8]


@pytest.mark.parametrize("make_dataset, preset", [(fake_fashion_mnist, "fashion_mnist"),
                                                  (fake_cartoon_folder, "cartoon")])
def test_the_tutorials_two_runs(tmp_path, capsys, make_dataset, preset):
    dataset_args = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", *dataset_args, "--epochs", 1, "--step", "native",
                             "--out", run_dir, "--quiet")
    assert status == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["preset"] == preset
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name


def test_bench_runs_the_report_script_with_extra_arguments(tmp_path, capfd):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "report.py").write_text("import sys\nprint('report', sys.argv[1:])\n")
    status = cli.main(["bench", "--bench-dir", str(bench), "--quiet", "--", "--fast"])
    assert status == 0
    assert "report ['--fast']" in capfd.readouterr().out


@pytest.mark.parametrize("preset, images, batch_size", [
    ("fashion_mnist", 60000, 128), ("fashion_mnist", 1500, 32), ("cartoon", 100000, 32),
    ("cartoon", 100, 16)])
def test_default_batch_size_gives_enough_steps(preset, images, batch_size):
    assert runs.default_batch_size(preset, images) == batch_size


def test_out_folder_holding_another_run_is_refused(trained_run, capsys):
    result = run_cli(capsys, "train", "--latent-dim", 3, "--limit", 128, "--out", trained_run)
    assert_user_error(result, str(trained_run), "another dataset or model")


# --------------------------------------------------------------------------- issue 12's rough edges

def warning_lines(err):
    return [line for line in err.splitlines() if ": warning: " in line]


def test_native_impl_in_an_xla_step_is_refused_before_anything_is_written(tmp_path, capsys):
    result = run_cli(capsys, "train", "--impl", "native", "--step", "xla", "--limit", 64,
                     "--out", tmp_path / "run")
    assert_user_error(result, "--impl native --step xla")
    assert not (tmp_path / "run").exists()


def test_resuming_with_another_batch_size_is_refused(trained_run, tmp_path, capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    config_before = (run_dir / "config.json").read_bytes()
    result = run_cli(capsys, "train", "--epochs", 2, "--limit", 128, "--batch-size", 32,
                     "--out", run_dir)
    assert_user_error(result, str(run_dir), "batch size 64, not 32")
    assert (run_dir / "config.json").read_bytes() == config_before


def test_resuming_without_a_batch_size_keeps_the_runs_own(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    config["train"]["batch_size"] = None
    runs.check_resumable(trained_run, config)
    assert config["train"]["batch_size"] == 64


def test_damaged_final_weights_fall_back_to_the_last_epoch(trained_run, tmp_path, capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    weights = run_dir / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    status, out, err = run_cli(capsys, "reconstruct", "--run", run_dir, "--quiet")
    assert status == 0, err
    [line] = warning_lines(err)
    assert str(weights) in line and "last complete epoch" in line
    assert json.loads(out)["reconstruction"]["mse"] > 0


def test_a_run_saved_with_a_stock_output_layer_loads_its_final_weights(trained_run, tmp_path,
                                                                      capsys):
    """Runs trained before the output layer became a FusedConv2DTranspose hold it as
    Keras' Conv2DTranspose, which a .weights.h5 file names by class."""
    import h5py
    import numpy as np

    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    for epoch_dir in run_dir.glob("epoch-*"):  # no fallback: the final weights must load
        shutil.rmtree(epoch_dir)
    with h5py.File(run_dir / "model.weights.h5", "r+") as weights:
        weights.move("decoder/layers/fused_conv2d_transpose", "decoder/layers/conv2d_transpose")
        kernel = weights["decoder/layers/conv2d_transpose/vars/0"][()]
    _, model, _ = runs.load_run(run_dir)
    np.testing.assert_array_equal(model.decoder.layers[-1].kernel.numpy(), kernel)
    assert not list(run_dir.glob(".*.h5"))
    status, _, err = run_cli(capsys, "reconstruct", "--run", run_dir, "--quiet")
    assert status == 0 and warning_lines(err) == [], err


def test_damaged_final_weights_without_an_epoch_checkpoint(trained_run, tmp_path, capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    for epoch_dir in run_dir.glob("epoch-*"):
        shutil.rmtree(epoch_dir)
    (run_dir / "model.weights.h5").write_bytes(b"\x89HDF\r\n")
    result = run_cli(capsys, "latent", "--run", run_dir, "--quiet")
    assert_user_error(result, str(run_dir / "model.weights.h5"), "damaged")


def test_damaged_metrics_are_kept_aside_and_restarted(trained_run, tmp_path, capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    (run_dir / "metrics.json").write_text('{"reconstruction": {"mse": 0.0')
    status, _, err = run_cli(capsys, "reconstruct", "--run", run_dir, "--quiet")
    assert status == 0, err
    [line] = warning_lines(err)
    assert str(run_dir / "metrics.json") in line and "metrics.json.damaged" in line
    assert (run_dir / "metrics.json.damaged").read_text() == '{"reconstruction": {"mse": 0.0'
    assert set(metrics_of(run_dir)) == {"reconstruction"}


@pytest.mark.parametrize("text", ['{"data": ', '{"data": {}}'], ids=["truncated", "partial"])
def test_damaged_config_is_named(trained_run, tmp_path, capsys, text):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    (run_dir / "config.json").write_text(text)
    assert_user_error(run_cli(capsys, "sample", "--run", run_dir, "--quiet"),
                      str(run_dir / "config.json"), "damaged")


def test_damaged_weights_and_epoch_checkpoint_name_the_checkpoint(trained_run, tmp_path,
                                                                  capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    (run_dir / "model.weights.h5").write_bytes(b"")
    [epoch_dir] = run_dir.glob("epoch-*")
    for path in epoch_dir.glob("ckpt.data-*"):
        path.write_bytes(b"")
    status, _, err = run_cli(capsys, "reconstruct", "--run", run_dir, "--quiet")
    assert status == 2, err
    assert "Traceback" not in err
    assert f"{epoch_dir}: damaged checkpoint" in err.splitlines()[-1]


def test_run_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    runs.write_json(path, {"kept": 1})

    def interrupted(_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(OSError, match="disk full"):
        runs.write_json(path, {"kept": 2})
    assert json.loads(path.read_text()) == {"kept": 1}
    assert [entry.name for entry in tmp_path.iterdir()] == ["metrics.json"]


def test_final_weights_are_replaced_whole_or_not_at_all(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    before = (run_dir / "model.weights.h5").read_bytes()

    class Interrupted:
        def save_weights(self, path):
            open(path, "wb").write(b"half a file")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.save_weights(Interrupted(), run_dir)
    assert (run_dir / "model.weights.h5").read_bytes() == before
    assert not list(run_dir.glob(".tmp-*"))


def test_a_folder_of_unreadable_images(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        (folder / f"cs{index}.png").write_bytes(b"not a png")
    result = run_cli(capsys, "train", "--dataset", f"folder:{folder}", "--out", tmp_path / "run")
    assert_user_error(result, f"no readable images in {folder}")
    assert not (tmp_path / "run").exists()


def test_a_projection_a_2d_latent_does_not_need_is_reported(trained_run, capsys):
    status, _, err = run_cli(capsys, "latent", "--run", trained_run, "--projection", "tsne",
                             "--quiet")
    assert status == 0, err
    [line] = warning_lines(err)
    assert "'tsne' not used" in line and "2-D" in line


def test_every_command_and_option_has_help():
    commands = next(action for action in cli.build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_a_set_too_small_for_the_analyses_is_refused_up_front(tmp_path, capsys):
    folder = tmp_path / "cartoonset10k"
    from pyae import data

    data.write_synthetic_cartoon_folder(folder, 10, image_size=32, seed=0)
    result = run_cli(capsys, "train", "--dataset", f"folder:{folder}", "--limit", 10,
                     "--image-size", 32, "--out", tmp_path / "run")
    assert_user_error(result, "--limit 10", "9 training and 1 test image(s) are too few")
    assert not (tmp_path / "run").exists()


def test_the_smallest_set_the_analyses_take_trains_and_analyses(tmp_path, capsys):
    folder = tmp_path / "cartoonset10k"
    from pyae import data

    data.write_synthetic_cartoon_folder(folder, 15, image_size=32, seed=0)
    status, _, err = run_cli(capsys, "train", "--dataset", f"folder:{folder}", "--image-size",
                             32, "--latent-dim", 8, "--epochs", 1, "--step", "native",
                             "--out", tmp_path / "run", "--quiet")
    assert status == 0, err
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file(), name


def test_a_damaged_last_epoch_falls_back_to_the_one_before(trained_run, tmp_path, capsys):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    (run_dir / "model.weights.h5").unlink()  # as if training had stopped after epoch 2
    [first] = run_dir.glob("epoch-*")
    second = shutil.copytree(first, run_dir / "epoch-000002")
    for path in second.glob("ckpt.data-*"):
        path.write_bytes(b"")
    status, _, err = run_cli(capsys, "reconstruct", "--run", run_dir, "--quiet")
    assert status == 0, err
    [line] = warning_lines(err)
    assert f"{second}: damaged checkpoint" in line and f"using {first.name} instead" in line
