"""pytest-benchmark suite: every tutorial block shape x mode x implementation.

    pytest bench/test_bench_op.py --benchmark-only [--bench-quick]

Names read ``test_block[<model>/<block>-<mode>-<config>]``; results are grouped per block and
mode so the implementations of one block line up. Configs and modes are those of
``report.py`` (which times the same steps in one process and prints ratio tables).
A config that cannot run here (the native op before its library is built) is skipped with
the reason. Benchmarks never assert on timings.
"""
import pytest

import report
import shapes

pytestmark = pytest.mark.bench

ROUNDS = 5
WARMUP_ROUNDS = 2


def _cases(blocks):
    return [
        pytest.param(block, mode, config, id=f"{block.id}-{mode}-{config}")
        for block in blocks
        for mode in shapes.MODES
        for config in report.CONFIGS
        if mode in report.CONFIG_MODES[config]
    ]


def pytest_generate_tests(metafunc):
    if {"block", "mode", "config"} <= set(metafunc.fixturenames):
        quick = metafunc.config.getoption("--bench-quick", default=False)
        blocks = shapes.quick_blocks() if quick else shapes.ALL_BLOCKS
        metafunc.parametrize(("block", "mode", "config"), _cases(blocks))


def _measured_label(config):
    """What the config actually ran, for the saved results."""
    return {
        "native": "pyae fused op, impl='native', tf.function",
        "native32": "pyae fused op, impl='native', float32 whatever the policy, tf.function",
        "tf": "pyae fused op, impl='tf' (pure-TF fallback), tf.function",
        "keras": "Keras Conv+BatchNormalization+LeakyReLU, tf.function",
        "xla": "Keras Conv+BatchNormalization+LeakyReLU, tf.function(jit_compile=True)",
        "grappler": "tf.nn.conv2d + fused_batch_norm(is_training=False) + leaky_relu, tf.function",
    }[config]


def test_block(benchmark, block, mode, config):
    try:
        step = report.build_step(block, config, mode)
    except report.Unavailable as err:
        pytest.skip(str(err))
    benchmark.group = f"{block.id} {mode} ({block.label})"
    benchmark.extra_info.update({
        "block": block.id,
        "shape": block.label,
        "mode": mode,
        "config": config,
        "measured": _measured_label(config),
        "flops": shapes.flops(block, mode),
        "floor_bytes": shapes.byte_floor(block, mode),
    })
    benchmark.pedantic(lambda: report.sync(step()), rounds=ROUNDS,
                       warmup_rounds=WARMUP_ROUNDS, iterations=1)
