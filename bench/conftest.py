"""pytest setup for the benchmark suite: the ``bench`` marker and ``--bench-quick``.

Only ``pytest bench/`` collects these; ``pytest tests/`` never loads this directory.
"""
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
# An installed pyae wins; otherwise the checkout this suite lives in (in-place builds).
sys.path.append(os.path.dirname(BENCH_DIR))


def pytest_addoption(parser):
    parser.addoption(
        "--bench-quick", action="store_true", default=False,
        help="benchmark only the two smoke-test block shapes (bench/shapes.py QUICK_BLOCK_IDS)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bench: a timing benchmark (pytest-benchmark); never asserts on timings"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(BENCH_DIR + os.sep):
            item.add_marker(pytest.mark.bench)
