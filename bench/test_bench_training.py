"""pytest-benchmark: one whole train step of each tutorial model, pyae vs the tutorial loop.

    pytest bench/test_bench_training.py [--bench-quick]

Fashion-MNIST at batch 128, Cartoon at batch 32; configs as in ``training_report.CONFIGS``.
``extra_info`` carries images/s and, for pyae-auto, the step it chose. Timings are never
asserted on; ``python bench/training_report.py`` prints the ratio table.
"""
import pytest
import tensorflow as tf

import training_report

CASES = [(model_name, config) for model_name in training_report.BATCH_SIZES
         for config in training_report.CONFIGS]


@pytest.mark.parametrize("model_name,config", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_train_step(benchmark, request, model_name, config):
    quick = request.config.getoption("--bench-quick", default=False)
    batch_size = training_report.BATCH_SIZES[model_name]
    batch = tf.constant(training_report.sample_images(model_name, batch_size))
    step, _, note = training_report.make_step(model_name, config, batch)

    def one_step():
        return float(step(batch))  # float() waits for the step to finish

    rounds = 2 if quick else (10 if model_name == "cartoon" else 20)
    benchmark.pedantic(one_step, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["note"] = note
    benchmark.extra_info["batch_size"] = batch_size
    benchmark.extra_info["images_per_s"] = batch_size / benchmark.stats.stats.mean
