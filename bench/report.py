"""Time every benchmark config at the tutorial's block shapes, in one process; print ratio tables.

    python bench/report.py [--quick] [--out FILE] [--isa avx512|avx2|generic] [--configs ...]
                           [--policy float32|mixed_bfloat16]

``--isa`` runs the native op on that CPU kernel path (default: the best this CPU has, or
``PYAE_ISA``). Compare the AVX2 path with stock layers held to AVX2 as well, as an AVX2 CPU
runs both: ``ONEDNN_MAX_CPU_ISA=AVX2 python bench/report.py --isa avx2``.

Configs (what runs, per block and mode; see ``CONFIG_MODES``):

* ``native``   the fused op, ``impl="native"``, in a graph-mode ``tf.function``
* ``keras``    ``Conv2D(use_bias=False)`` (or ``Conv2DTranspose``) + ``BatchNormalization()``
               + ``LeakyReLU()`` in a ``tf.function``
* ``xla``      the same Keras stack under ``tf.function(jit_compile=True)``
* ``tf``       the fused op's pure-TF fallback, ``impl="tf"``, in a ``tf.function``
* ``native32`` the fused op in float32 whatever ``--policy`` says (pyae's float32 baseline)
* ``grappler`` inference only: ``tf.nn.conv2d`` + ``tf.compat.v1.nn.fused_batch_norm(
               is_training=False)`` + ``tf.nn.leaky_relu`` with constant weights, which
               grappler's remapper rewrites into one ``_FusedConv2D`` (checked per block from
               the post-optimisation graph). It has no transposed twin: for decoder blocks the
               same graph is built on ``conv2d_transpose`` and stays unfused.

``--policy mixed_bfloat16`` runs every config but ``native32`` as Keras' layers run under that
policy: x, y, dy and dx in bfloat16, the variables float32 (``native`` is then the bf16 native
op, ``tf`` the composite ops in bfloat16, ``keras`` the stock layers built under the policy);
``grappler`` has no mixed form and is left out. A "mixed precision" table compares them.

Modes: ``train_fwd`` (training-mode forward, moving statistics updated), ``train_fwdbwd``
(that plus the gradients of x, kernel, gamma and beta for a fixed upstream gradient dy) and
``infer_fwd`` (inference forward with the moving statistics).

Also importable: ``build_step`` is what ``test_bench_op.py`` times under pytest-benchmark.
"""
import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
# An installed pyae wins; otherwise use the checkout this script lives in (in-place builds).
sys.path.append(os.path.dirname(BENCH_DIR))
import shapes  # noqa: E402
import run_options  # noqa: E402
from run_options import policy  # noqa: E402

CONFIG_MODES = {
    "native": ("train_fwd", "train_fwdbwd", "infer_fwd"),
    "keras": ("train_fwd", "train_fwdbwd", "infer_fwd"),
    "xla": ("train_fwd", "train_fwdbwd"),
    "tf": ("train_fwd", "train_fwdbwd"),
    "native32": ("train_fwd", "train_fwdbwd", "infer_fwd"),
    "grappler": ("infer_fwd",),
}
CONFIGS = tuple(CONFIG_MODES)
EPSILON = 1e-3
NEGATIVE_SLOPE = 0.3
MOMENTUM = 0.99
MIN_REPEATS = 5
DEFAULT_REPEATS = 30
REPEAT_BUDGET_S = 3.0
SETTLE_S = 0.005  # untimed calls of a config before each timed one (see _settle)
def compute_dtype(config):
    """The activations' dtype of `config` under the policy (native32 is always float32)."""
    if config == "native32" or policy() == "float32":
        return tf.float32
    return tf.as_dtype(policy().split("_", 1)[1])


class Unavailable(Exception):
    """A config that cannot run in this process (the native op library is not loaded)."""


def native_unavailable_reason():
    """None when the native op is loaded, else why it is not."""
    try:
        import pyae.ops  # pylint: disable=import-outside-toplevel

        if pyae.ops.native_available():
            return None
        return pyae.ops.build_info()["tf_ops"]["reason"] or "the native op library is not loaded"
    except Exception as err:  # pylint: disable=broad-except
        return f"pyae.ops could not report on it ({type(err).__name__}: {err})"


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class BlockData:
    """Deterministic float32 inputs and weights for one block (numpy)."""

    x: np.ndarray
    dy: np.ndarray
    kernel: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    moving_mean: np.ndarray
    moving_variance: np.ndarray


def make_data(block, seed=0):
    rng = np.random.default_rng(seed)
    channels = block.out_channels
    fan_in = shapes.KERNEL_SIZE**2 * block.in_channels

    def normal(shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return BlockData(
        x=normal(block.input_shape),
        dy=normal(block.output_shape),
        kernel=normal(block.kernel_shape, math.sqrt(2.0 / fan_in)),
        gamma=1.0 + normal((channels,), 0.1),
        beta=normal((channels,), 0.1),
        moving_mean=normal((channels,), 0.1),
        moving_variance=(1.0 + rng.random(channels)).astype(np.float32),
    )


# ----------------------------------------------------------------------------- forwards
# Each returns ``forward(x, training) -> y`` and the trainable variables to differentiate.


def _update_moving_average(variable, value):
    variable.assign(variable * MOMENTUM + value * (1.0 - MOMENTUM))


def fused_forward(block, data, impl, frozen=False):
    """``frozen``: the parameters as Const nodes (inference only), as grappler's config has them."""
    import pyae.ops  # pylint: disable=import-outside-toplevel

    if frozen:
        kernel, gamma, beta, moving_mean, moving_variance = (tf.constant(a) for a in (
            data.kernel, data.gamma, data.beta, data.moving_mean, data.moving_variance))
    else:
        kernel, gamma, beta = (tf.Variable(a) for a in (data.kernel, data.gamma, data.beta))
        moving_mean = tf.Variable(data.moving_mean, trainable=False)
        moving_variance = tf.Variable(data.moving_variance, trainable=False)

    def forward(x, training):
        y, mean, variance = pyae.ops.fused_conv_bn_leaky_relu(
            x, kernel, gamma, beta, moving_mean, moving_variance,
            strides=block.stride, padding=shapes.PADDING, epsilon=EPSILON,
            negative_slope=NEGATIVE_SLOPE, training=training, transpose=block.transpose,
            impl=impl,
        )
        if training:
            if frozen:
                raise ValueError("a frozen forward is inference only")
            _update_moving_average(moving_mean, mean)
            _update_moving_average(moving_variance, variance)
        return y

    return forward, [kernel, gamma, beta]


def keras_forward(block, data):
    import keras  # pylint: disable=import-outside-toplevel

    conv_class = keras.layers.Conv2DTranspose if block.transpose else keras.layers.Conv2D
    conv = conv_class(block.out_channels, shapes.KERNEL_SIZE, strides=block.stride,
                      padding=shapes.PADDING, use_bias=False, dtype=policy())
    batch_norm = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON,
                                                 dtype=policy())
    leaky_relu = keras.layers.LeakyReLU(negative_slope=NEGATIVE_SLOPE, dtype=policy())
    leaky_relu(batch_norm(conv(np.zeros((1,) + block.input_shape[1:], np.float32))))
    conv.kernel.assign(data.kernel)
    batch_norm.gamma.assign(data.gamma)
    batch_norm.beta.assign(data.beta)
    batch_norm.moving_mean.assign(data.moving_mean)
    batch_norm.moving_variance.assign(data.moving_variance)

    def forward(x, training):
        return leaky_relu(batch_norm(conv(x), training=training))

    return forward, [conv.kernel.value, batch_norm.gamma.value, batch_norm.beta.value]


def _plain_conv(x, kernel, block):
    strides = (1, block.stride, block.stride, 1)
    if block.transpose:
        return tf.nn.conv2d_transpose(x, kernel, block.output_shape, strides, "SAME")
    return tf.nn.conv2d(x, kernel, strides, "SAME")


def grappler_forward(block, data):
    """Inference graph in the exact form grappler's remapper fuses (weights as Const nodes)."""

    def forward(x, training):
        if training:
            raise ValueError("the grappler-fused config is inference only")
        z = _plain_conv(x, tf.constant(data.kernel), block)
        normalized, _, _ = tf.compat.v1.nn.fused_batch_norm(
            z, tf.constant(data.gamma), tf.constant(data.beta),
            mean=tf.constant(data.moving_mean), variance=tf.constant(data.moving_variance),
            epsilon=EPSILON, is_training=False,
        )
        return tf.nn.leaky_relu(normalized, alpha=NEGATIVE_SLOPE)

    return forward, []


def _forward_for(block, config, data, mode):
    if config in ("native", "native32"):
        reason = native_unavailable_reason()
        if reason is not None:
            raise Unavailable(f"native op not available: {reason}")
        # In inference the op is compared with grappler's, which needs its weights as
        # constants to fuse: the op gets them the same way, not through five variable reads.
        return fused_forward(block, data, "native", frozen=mode == "infer_fwd")
    if config == "tf":
        return fused_forward(block, data, "tf")
    if config in ("keras", "xla"):
        return keras_forward(block, data)
    if config == "grappler":
        return grappler_forward(block, data)
    raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")


# ----------------------------------------------------------------------------- steps


def _step_body(forward, trainables, mode):
    if mode == "train_fwdbwd":
        def forward_backward(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = forward(x, True)
            return tape.gradient(y, [x] + trainables, output_gradients=dy)
        return forward_backward

    training = mode == "train_fwd"

    def forward_only(x, dy):  # pylint: disable=unused-argument
        return [forward(x, training)]
    return forward_only


def build_step(block, config, mode, seed=0):
    """A zero-argument callable running ``config`` on ``block`` in ``mode``; returns tensors.

    Raises ``Unavailable`` when the config cannot run here, ``ValueError`` for a config
    that has no such mode.
    """
    if mode not in CONFIG_MODES.get(config, ()):
        raise ValueError(f"config {config!r} has no mode {mode!r}")
    data = make_data(block, seed)
    forward, trainables = _forward_for(block, config, data, mode)
    function = tf.function(_step_body(forward, trainables, mode), jit_compile=config == "xla")
    dtype = compute_dtype(config)
    x, dy = tf.cast(data.x, dtype), tf.cast(data.dy, dtype)
    return lambda: function(x, dy)


def sync(outputs):
    """Wait for every output: ``np.asarray`` blocks until the value exists.

    Not ``.numpy()``: that copies the tensor into fresh memory, which at the big blocks costs
    more than the op (a 64 MB output is ~15 ms of page faults and copying on the 2-core VM) and
    would be timed as if it were the op's.
    """
    for tensor in outputs:
        np.asarray(tensor)


# ----------------------------------------------------------------------------- measuring


def _settle(step):
    """Untimed calls of ``step`` for at least SETTLE_S (one at the least).

    oneDNN's worker threads keep spinning on the cores for a few milliseconds after its op
    returns; whatever ran next would be charged for it (one 1 ms call is too short: the
    native op at Cartoon enc5 timed 25% slower after one such call than after three).
    """
    start = time.perf_counter()
    sync(step())
    while time.perf_counter() - start < SETTLE_S:
        sync(step())


def time_rounds(steps, repeats, warmup):
    """Seconds of one call of each of ``steps`` (name -> step) per round, timed interleaved:
    ``{name: [seconds in round 0, round 1, ...]}``.

    One call of each step per round, the order reversed every other round, so a slow spell
    of the machine lands on every step alike instead of on whichever ran then, and the calls
    of one round ran seconds apart at most: their ratio (``paired_ratios``) is what the
    tables show, since this VM's speed drifts by up to 2x over a run. Each timed call follows
    untimed calls of the same step (``_settle``): every step is timed in its steady state,
    never in the wake of another library. After ``warmup`` calls each (the first one
    traces/compiles).
    """
    for step in steps.values():
        for _ in range(warmup):
            sync(step())
    seconds = {name: [] for name in steps}
    order = list(steps.items())
    # Python's cyclic collector off while timing: with TensorFlow loaded, a full collection
    # walks millions of objects and would land inside whichever call triggered it.
    gc.collect()
    gc.disable()
    try:
        for round_index in range(repeats):
            for name, step in order if round_index % 2 == 0 else reversed(order):
                _settle(step)
                start = time.perf_counter()
                sync(step())
                seconds[name].append(time.perf_counter() - start)
            spent = sum(sum(values) for values in seconds.values())
            if round_index + 1 >= MIN_REPEATS and spent > REPEAT_BUDGET_S * len(steps):
                break
    finally:
        gc.enable()
    return seconds


def paired_ratios(numerator_seconds, denominator_seconds):
    """numerator / denominator in each round both were timed in (one list per config, in
    round order, as ``time_rounds`` returns them)."""
    return [n / d for n, d in zip(numerator_seconds, denominator_seconds)]


def quartiles(values):
    """(25th percentile, median, 75th percentile) of ``values``."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def allocator_peak_mb(step, iterations=2):
    """TF CPU allocator peak during ``iterations`` calls, above what was live before them.

    Counts tensors TF allocates (activations, gradients, temporaries, XLA buffers); memory a
    kernel mallocs by itself is not seen here, only in the RSS column. None if unsupported.
    """
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        live_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        for _ in range(iterations):
            outputs = step()
            sync(outputs)
            del outputs
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except (ValueError, tf.errors.OpError, AttributeError):
        return None
    return (peak - live_before) / 2**20


def _proc_status_mb(key):
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"{key} not in /proc/self/status")


def _reset_peak_rss():
    """Release freed heap pages, then reset the kernel's peak-RSS mark to the current RSS."""
    import ctypes  # pylint: disable=import-outside-toplevel

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    return _proc_status_mb("VmRSS")


def _peak_rss_growth_mb(calls):
    """Peak RSS above the RSS before ``calls`` run (Linux: VmHWM after clear_refs)."""
    before = _reset_peak_rss()
    for call in calls:
        call()
    return _proc_status_mb("VmHWM") - before


def rss_child(block_id, config, mode, iterations):
    """In a fresh process: peak-RSS growth over the first call (tracing, compiling) and
    over ``iterations`` steady-state calls after a warm-up one; printed as JSON."""
    step = build_step(shapes.BLOCKS_BY_ID[block_id], config, mode)
    call = lambda: sync(step())  # noqa: E731
    first_mb = _peak_rss_growth_mb([call])
    call()
    steady_mb = _peak_rss_growth_mb([call] * iterations)
    print(json.dumps({"rss_first_mb": first_mb, "rss_mb": steady_mb}))


def rss_in_subprocess(block, config, mode, iterations=3):
    """Peak RSS growth (MB) of one config in a fresh process: (steady, first call, error)."""
    command = [sys.executable, os.path.abspath(__file__), "--rss-child", block.id, config, mode,
               "--rss-iterations", str(iterations)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            measured = json.loads(line)
            return measured["rss_mb"], measured["rss_first_mb"], None
    return None, None, (done.stderr.strip().splitlines() or ["no output"])[-1]


def grappler_fused_ops(block):
    """The fused op types (with their fused_ops) in the grappler config's optimised graph."""
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel

    step = build_step(block, "grappler", "infer_fwd")
    context.enable_graph_collection()
    try:
        sync(step())
        metadata = context.context().export_run_metadata()
    finally:
        context.disable_graph_collection()
    fused = []
    for function_graph in metadata.function_graphs:
        for node in function_graph.post_optimization_graph.node:
            if "Fused" in node.op and "Conv" in node.op:
                parts = [part.decode() for part in node.attr["fused_ops"].list.s]
                fused.append(f"{node.op}[{'+'.join(parts)}]")
    return fused


def measure_peak_gflops(size, repeats):
    """Best float32 numpy matmul rate (GFLOP/s) on ``size x size`` matrices."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal((size, size), dtype=np.float32)
    right = rng.standard_normal((size, size), dtype=np.float32)
    np.matmul(left, right)
    best = min(_seconds(lambda: np.matmul(left, right)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def measure_peak_gbps(megabytes, repeats):
    """Best ``np.copyto`` rate (GB/s), counting bytes read plus bytes written."""
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = min(_seconds(lambda: np.copyto(target, source)) for _ in range(repeats))
    return 2 * source.nbytes / best / 1e9


def _seconds(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
    """One (block, mode, config): median ms (and every round's ms, in round order), allocator
    peak MB, RSS growth MB, or why not."""

    ms: float = None
    rounds_ms: list = None
    alloc_mb: float = None
    rss_mb: float = None
    rss_first_mb: float = None
    skipped: str = None
    error: str = None


def _failed(err):
    result = Result()
    if isinstance(err, Unavailable):
        result.skipped = str(err)
    else:
        result.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return result


def run_mode(block, mode, options):
    """Results for every config that has ``mode``, the configs timed interleaved."""
    results, steps = {}, {}
    for config in options.configs:
        if mode not in CONFIG_MODES[config]:
            continue
        try:
            steps[config] = build_step(block, config, mode)
        except Exception as err:  # pylint: disable=broad-except
            results[config] = _failed(err)
    try:
        rounds = time_rounds(steps, options.repeats, options.warmup)
    except Exception:  # pylint: disable=broad-except
        # One config failing mid-run must not cost the others: time them one by one (their
        # ratios are then of medians, not of rounds: `_ratio` pairs rounds of equal count).
        rounds = {}
        for config, step in steps.items():
            try:
                rounds.update(time_rounds({config: step}, options.repeats, options.warmup))
            except Exception as err:  # pylint: disable=broad-except
                results[config] = _failed(err)
    for config, seconds in rounds.items():
        results[config] = _measured(block, config, mode, steps[config], seconds, options)
    return results


def _measured(block, config, mode, step, seconds, options):
    rounds_ms = [1e3 * value for value in seconds]
    result = Result(ms=statistics.median(rounds_ms), rounds_ms=rounds_ms)
    if mode != "train_fwdbwd":
        return result
    result.alloc_mb = allocator_peak_mb(step)
    if options.rss:
        result.rss_mb, result.rss_first_mb, rss_error = rss_in_subprocess(block, config, mode)
        if rss_error:
            result.error = f"RSS subprocess: {rss_error}"
    return result


def run_all(blocks, options):
    results = {}
    for block in blocks:
        for mode in options.modes:
            for config, result in run_mode(block, mode, options).items():
                results[block.id, mode, config] = result
                _progress(block, mode, config, result)
        gc.collect()
    return results


def _progress(block, mode, config, result):
    shown = f"{result.ms:.2f} ms" if result.ms is not None else (result.error or "n/a")
    print(f"  {block.id:22s} {mode:13s} {config:9s} {shown}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- formatting


def _ms(result):
    """The median ms and, where there were rounds, their interquartile range: "9.41 +-4%"."""
    if result is None or result.ms is None:
        return "err" if result is not None and result.error else "n/a"
    if not result.rounds_ms or len(result.rounds_ms) < 2:
        return f"{result.ms:.2f}"
    return f"{result.ms:.2f} {_fmt_spread(result)}"


def _mb(value):
    return "n/a" if value is None else f"{value:.1f}"


def _round_ratios(numerator, denominator):
    """Per-round ratios where both were timed in the same rounds, else None."""
    if numerator is None or denominator is None:
        return None
    rounds = numerator.rounds_ms, denominator.rounds_ms
    if None in rounds or len(rounds[0]) != len(rounds[1]):
        return None
    return paired_ratios(*rounds)


def _ratio(numerator, denominator):
    """numerator / denominator: the median of the per-round ratios where both were timed in
    the same rounds, else the ratio of the medians."""
    if numerator is None or denominator is None or numerator.ms is None or denominator.ms is None:
        return None
    ratios = _round_ratios(numerator, denominator)
    return statistics.median(ratios) if ratios else numerator.ms / denominator.ms


def _fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_paired(numerator, denominator):
    """The ratio with the 25th-75th percentile of its per-round values: "1.27 (1.21-1.33)"."""
    ratios = _round_ratios(numerator, denominator)
    if not ratios or numerator.ms is None or denominator.ms is None:
        return _fmt_ratio(_ratio(numerator, denominator))
    low, median, high = quartiles(ratios)
    return f"{median:.2f} ({low:.2f}-{high:.2f})"


def _fmt_spread(result):
    """The interquartile range of a config's rounds, as a share of its median: "+-4%"."""
    if result is None or not result.rounds_ms or result.ms is None:
        return "n/a"
    low, _, high = quartiles(result.rounds_ms)
    return f"+-{50 * (high - low) / result.ms:.0f}%"


def _geomean(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _best(results, block, mode):
    timed = [(results[block.id, mode, c].ms, c) for c in CONFIGS
             if (block.id, mode, c) in results and results[block.id, mode, c].ms is not None]
    return min(timed) if timed else (None, None)


def training_table(blocks, results, mode, peaks):
    header = ["block", "shape", "GFLOP", "MB floor", "floor ms", "native ms", "keras ms",
              "xla ms", "tf ms", "keras/native", "xla/native", "tf/native", "floor/native",
              "floor/best"]
    rows = []
    for block in blocks:
        get = lambda config, b=block: results.get((b.id, mode, config))  # noqa: E731
        floor_ms = 1e3 * shapes.floor_seconds(block, mode, *peaks)
        native = get("native")
        best_ms, best_config = _best(results, block, mode)
        rows.append([
            block.name, block.label, f"{shapes.flops(block, mode) / 1e9:.3f}",
            f"{shapes.byte_floor(block, mode) / 1e6:.1f}", f"{floor_ms:.2f}",
            _ms(native), _ms(get("keras")), _ms(get("xla")), _ms(get("tf")),
            _fmt_paired(get("keras"), native), _fmt_paired(get("xla"), native),
            _fmt_paired(get("tf"), native),
            _fmt_ratio(floor_ms / native.ms if native and native.ms else None),
            f"{floor_ms / best_ms:.2f} ({best_config})" if best_ms else "n/a",
        ])
    return _table(header, rows)


def inference_table(blocks, results, peaks, fusion):
    header = ["block", "shape", "GFLOP", "floor ms", "native ms", "grappler ms", "keras ms",
              "grappler/native", "keras/native", "floor/native", "grappler graph"]
    rows = []
    for block in blocks:
        get = lambda config, b=block: results.get((b.id, "infer_fwd", config))  # noqa: E731
        floor_ms = 1e3 * shapes.floor_seconds(block, "infer_fwd", *peaks)
        native = get("native")
        fused = fusion.get(block.id)
        rows.append([
            block.name, block.label, f"{shapes.flops(block, 'infer_fwd') / 1e9:.3f}",
            f"{floor_ms:.2f}", _ms(native), _ms(get("grappler")), _ms(get("keras")),
            _fmt_paired(get("grappler"), native), _fmt_paired(get("keras"), native),
            _fmt_ratio(floor_ms / native.ms if native and native.ms else None),
            ", ".join(fused) if fused else "not fused" if fused is not None else "n/a",
        ])
    return _table(header, rows)


def memory_table(blocks, results):
    configs = [c for c in CONFIGS if "train_fwdbwd" in CONFIG_MODES[c]]
    header = (["block", "shape"] + [f"{c} alloc MB" for c in configs]
              + [f"{c} RSS MB" for c in configs] + [f"{c} 1st-call RSS MB" for c in configs])
    rows = []
    for block in blocks:
        picked = [results.get((block.id, "train_fwdbwd", c)) or Result() for c in configs]
        rows.append([block.name, block.label] + [_mb(r.alloc_mb) for r in picked]
                    + [_mb(r.rss_mb) for r in picked] + [_mb(r.rss_first_mb) for r in picked])
    return _table(header, rows)


def geomean_lines(blocks, results, model):
    lines = []
    for mode, configs in (("train_fwdbwd", ("keras", "xla", "tf")), ("train_fwd", ("keras", "xla", "tf")),
                          ("infer_fwd", ("grappler", "keras"))):
        parts = []
        for config in configs:
            ratios = [_ratio(results.get((b.id, mode, config)), results.get((b.id, mode, "native")))
                      for b in blocks]
            mean = _geomean(ratios)
            counted = sum(r is not None for r in ratios)
            parts.append(f"{config}/native = {_fmt_ratio(mean)}" + (f" ({counted} blocks)" if mean else ""))
        lines.append(f"- {model} {mode}, geometric mean: " + "; ".join(parts))
    conv_blocks = [b for b in blocks if not b.transpose]
    grappler_conv = _geomean([_ratio(results.get((b.id, "infer_fwd", "grappler")),
                                     results.get((b.id, "infer_fwd", "native"))) for b in conv_blocks])
    lines.append(f"- {model} infer_fwd, grappler/native over Conv2D blocks only "
                 f"(the ones grappler can fuse): {_fmt_ratio(grappler_conv)}")
    return lines


def mixed_precision_table(blocks, results, mode):
    """Under a mixed policy: the native op, the stock layers and the composite ops in that
    policy, and pyae's float32 native op, per block."""
    header = ["block", "shape", "native ms", "keras ms", "tf ms", "native32 ms",
              "keras/native", "tf/native", "native32/native"]
    rows = []
    for block in blocks:
        get = lambda config, b=block: results.get((b.id, mode, config))  # noqa: E731
        native = get("native")
        rows.append([block.name, block.label, _ms(native), _ms(get("keras")), _ms(get("tf")),
                     _ms(get("native32")), _fmt_paired(get("keras"), native),
                     _fmt_paired(get("tf"), native),
                     _fmt_paired(get("native32"), native)])
    return _table(header, rows)


def mixed_geomean_lines(blocks, results, model):
    lines = []
    for mode in ("train_fwdbwd", "train_fwd", "infer_fwd"):
        parts = []
        for config in ("keras", "tf", "native32"):
            mean = _geomean([_ratio(results.get((b.id, mode, config)),
                                    results.get((b.id, mode, "native"))) for b in blocks])
            if mean is not None:
                parts.append(f"{config}/native = {_fmt_ratio(mean)}")
        lines.append(f"- {model} {mode} under {policy()}, geometric mean: " + "; ".join(parts))
    return lines


def _build_summary():
    try:
        import pyae  # pylint: disable=import-outside-toplevel
        import pyae.ops  # pylint: disable=import-outside-toplevel

        info = pyae.ops.build_info()
    except Exception as err:  # pylint: disable=broad-except
        return [f"- pyae.ops.build_info() failed: {type(err).__name__}: {err}"]
    tf_ops = info["tf_ops"]
    native_module = info["native_module"]
    cuda = info.get("cuda") or {}
    return [
        f"- pyae {pyae.__version__} from {os.path.dirname(pyae.__file__)}",
        f"- pyae TF op library: built={tf_ops['built']}, loaded={tf_ops['loaded']}, "
        f"built for TF {tf_ops['built_for_tf']}"
        + (f"; not used because {tf_ops['reason']}" if tf_ops["reason"] else ""),
        f"- pyae._native: available={native_module.get('available')}"
        + (f" ({native_module['reason']})" if native_module.get("reason") else ""),
        f"- CUDA built: {cuda.get('built')}; build type: {info.get('build_type')}; "
        f"compile flags: {info.get('compile_flags')}",
        "- " + run_options.isa_line(info),
        f"- bf16 kernels: {info['bf16']['path']} ({info['bf16']['reason']}); dtype policy of "
        f"the configs: {policy()} (native32 always float32)",
    ]


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header_lines(options, peaks):
    import keras  # pylint: disable=import-outside-toplevel

    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    return [
        "# pyae fused Conv+BN+LeakyReLU benchmark",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {_cpu_model()}, {usable_cores} usable cores ({os.cpu_count()} online), "
        f"{platform.system()} {platform.machine()}",
        f"- TensorFlow {tf.__version__}, Keras {keras.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- peaks: {peaks[0]:.1f} GFLOP/s (float32 numpy matmul), {peaks[1]:.1f} GB/s "
        f"(np.copyto, read+write bytes); best of a run before and one after the timings"
        f"{' [given on the command line]' if options.peaks_given else ''}",
        *_build_summary(),
        f"- timing: up to {options.repeats} rounds (at least {MIN_REPEATS}, stopping after "
        f"{REPEAT_BUDGET_S:.0f} s per config) after {options.warmup} warm-up calls; each round "
        "times one call of each config of a block, interleaved (the order reversed every other "
        "round), each right after untimed calls of the same config for "
        f"{SETTLE_S * 1e3:.0f} ms, Python's garbage collector off; perf_counter around a call synchronised by np.asarray (no "
        "copy). ms: the median over the rounds, +-: half the interquartile range as a share of "
        "it. Ratios: the median over the rounds of the ratio of the two configs' calls in that "
        "round (seconds apart, so a drift of the machine's speed cancels), with the 25th-75th "
        "percentile of those per-round ratios in brackets; FLOPs and floors from bench/shapes.py",
    ]


NOTES = [
    "Notes:",
    "- floor ms = max(FLOPs / peak FLOP/s, floor bytes / peak bytes/s) (bench/shapes.py); "
    "floor/x is the fraction of the floor speed x reaches (1.0 = at the roofline; above 1 means "
    "the peaks were measured low, e.g. on a loaded machine).",
    "- keras = Conv2D(use_bias=False)+BatchNormalization()+LeakyReLU() in tf.function; "
    "xla = the same under jit_compile=True; tf = pyae's fused op with impl='tf'; "
    "native = impl='native'. Ratios > 1 mean native is faster.",
    "- train_fwdbwd computes dx, dW, dgamma, dbeta for a fixed dy (dx for every block, "
    "the first included) and updates the moving statistics.",
    "- alloc MB: TF CPU allocator peak over two steady-state fwd+bwd calls above the live "
    "memory before them (tf.config.experimental.get_memory_info). RSS MB: in a fresh process per "
    "config, peak RSS (VmHWM, reset through /proc/self/clear_refs after malloc_trim) above the RSS "
    "before 3 steady-state calls; 1st-call RSS MB: the same around the first call, so it "
    "includes tracing and, for xla, XLA compilation.",
    "- grappler graph: the fused node found in the grappler config's post-optimisation graph "
    "(tf.function run metadata); grappler's remapper fuses Conv2D+FusedBatchNorm+LeakyRelu for "
    "inference only and has no Conv2DBackpropInput (transposed) fusion.",
    "- inference forward: native and grappler take the parameters as graph constants (grappler "
    "needs them so to fuse), keras reads its layers' variables.",
]


def render(blocks, results, peaks, fusion, options):
    lines = header_lines(options, peaks) + [""]
    reason = native_unavailable_reason()
    if reason:
        lines += [f"**native columns are n/a: the native op is not available ({reason}).**", ""]
    for model in shapes.MODELS:
        model_blocks = [b for b in blocks if b.model == model]
        if not model_blocks:
            continue
        lines += [f"## {model} (batch {model_blocks[0].batch})", ""]
        if policy() != "float32":
            for mode, title in (("train_fwdbwd", "forward+backward"), ("train_fwd", "forward"),
                                ("infer_fwd", "inference forward")):
                lines += [f"### mixed precision ({policy()}), training {title}"
                          if mode != "infer_fwd" else f"### mixed precision ({policy()}), {title}",
                          ""] + mixed_precision_table(model_blocks, results, mode) + [""]
            lines += [*mixed_geomean_lines(model_blocks, results, model), ""]
        lines += ["### training forward+backward", ""] + training_table(model_blocks, results, "train_fwdbwd", peaks)
        lines += ["", "### training forward", ""] + training_table(model_blocks, results, "train_fwd", peaks)
        lines += ["", "### inference forward", ""] + inference_table(model_blocks, results, peaks, fusion)
        lines += ["", "### peak memory, training forward+backward", ""] + memory_table(model_blocks, results)
        lines += ["", *geomean_lines(model_blocks, results, model), ""]
    problems = [f"- {bid} {mode} {config}: {r.error}" for (bid, mode, config), r in results.items() if r.error]
    if problems:
        lines += ["Errors:", *problems, ""]
    lines += NOTES
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(shapes.QUICK_BLOCK_IDS)}, few repeats")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--blocks", nargs="+", metavar="ID",
                        help="only these block ids, e.g. fashion_mnist/enc2 cartoon/dec1")
    parser.add_argument("--repeats", type=int, help=f"timed rounds (default {DEFAULT_REPEATS}, quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (default 3, quick 2)")
    parser.add_argument("--peak-gflops", type=float, help="use this peak instead of measuring it")
    parser.add_argument("--peak-gbps", type=float, help="use this bandwidth instead of measuring it")
    parser.add_argument("--no-rss", dest="rss", action="store_false",
                        help="skip the per-config fresh-process RSS measurement")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        help="only these configs (default: all but native32 in float32, all "
                             "but grappler under a mixed policy)")
    run_options.add_options(parser, "the Keras dtype policy the configs run under")
    parser.add_argument("--modes", nargs="+", choices=shapes.MODES, default=list(shapes.MODES),
                        help="only these modes (default: all)")
    parser.add_argument("--rss-child", nargs=3, metavar=("BLOCK", "CONFIG", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--rss-iterations", type=int, default=3, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    run_options.apply(options, child=bool(options.rss_child))
    if options.configs is None:
        left_out = "native32" if options.policy == "float32" else "grappler"
        options.configs = [config for config in CONFIGS if config != left_out]
    options.repeats = options.repeats or (5 if options.quick else DEFAULT_REPEATS)
    options.warmup = options.warmup or (2 if options.quick else 3)
    options.peaks_given = options.peak_gflops is not None and options.peak_gbps is not None
    return options


def selected_blocks(options):
    if options.blocks:
        unknown = [b for b in options.blocks if b not in shapes.BLOCKS_BY_ID]
        if unknown:
            raise SystemExit(f"unknown block ids {unknown}; known: {sorted(shapes.BLOCKS_BY_ID)}")
        return [shapes.BLOCKS_BY_ID[b] for b in options.blocks]
    return shapes.quick_blocks() if options.quick else shapes.ALL_BLOCKS


def measure_peaks(options):
    size, megabytes, repeats = (2048, 128, 3) if options.quick else (3072, 256, 5)
    gflops = options.peak_gflops or measure_peak_gflops(size, repeats)
    gbps = options.peak_gbps or measure_peak_gbps(megabytes, repeats)
    return gflops, gbps


def main(argv=None):
    options = parse_args(argv)
    if options.rss_child:
        rss_child(*options.rss_child, options.rss_iterations)
        return
    blocks = selected_blocks(options)
    tf.get_logger().setLevel("ERROR")  # every config is its own tf.function: no retracing notes
    print("measuring machine peaks...", file=sys.stderr, flush=True)
    peaks_before = measure_peaks(options)
    print("checking grappler fusion...", file=sys.stderr, flush=True)
    fusion = ({block.id: grappler_fused_ops(block) for block in blocks}
              if "grappler" in options.configs else {})
    print("timing configs...", file=sys.stderr, flush=True)
    results = run_all(blocks, options)
    print("measuring machine peaks again...", file=sys.stderr, flush=True)
    peaks = tuple(map(max, peaks_before, measure_peaks(options)))
    report = render(blocks, results, peaks, fusion, options)
    print(report)
    if options.out:
        with open(options.out, "w", encoding="utf-8") as out:
            out.write(report)


if __name__ == "__main__":
    main()
