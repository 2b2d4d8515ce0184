"""The fused op: native kernels vs a float64 numpy reference, native and fallback vs the Keras
stack, numeric gradients, bad input, the loader and SavedModels."""
import concurrent.futures
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import pyae
import pyae.ops
from pyae.ops import _loader

import reference
from _python import same_pyae_env
from conftest import needs_native
from op_cases import (ALL_SHAPES, AWKWARD, CARTOON_BLOCKS, FASHION_BLOCKS, make_inputs, op_attrs,
                      shape_id)


def assert_close(actual, expected, rtol=2e-5, name=""):
    """Relative to the tensor's scale: float32 kernels vs a float64 reference."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: not finite (an element was never written)"
    scale = max(np.max(np.abs(expected)), 1e-6)
    error = np.max(np.abs(actual - expected)) / scale
    assert error < rtol, f"{name}: relative error {error:.2e} >= {rtol:.0e}"


# --- pyae._native against the float64 numpy reference -------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", ALL_SHAPES, ids=shape_id)
def test_native_forward_matches_float64_reference(rng, isa, case, training):
    native = needs_native()
    inputs = make_inputs(rng, case)
    attrs = op_attrs(case, training)
    y, mean, variance = native.conv_bn_lrelu_forward(*inputs.values(), **attrs)
    y_ref, mean_ref, var_ref, _ = reference.forward(*inputs.values(), **attrs)
    assert_close(y, y_ref, name="y")
    assert_close(mean, mean_ref, rtol=1e-5, name="mean")
    assert_close(variance, var_ref, rtol=1e-5, name="variance")


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", FASHION_BLOCKS + AWKWARD, ids=shape_id)
def test_native_backward_matches_float64_reference(rng, isa, case, training):
    native = needs_native()
    inputs = make_inputs(rng, case)
    attrs = op_attrs(case, training)
    y, mean, variance = native.conv_bn_lrelu_forward(*inputs.values(), **attrs)
    dy = rng.normal(size=y.shape).astype(np.float32)
    grads = native.conv_bn_lrelu_backward(
        dy, inputs["x"], inputs["kernel"], inputs["gamma"], inputs["beta"], y, mean, variance,
        **attrs)
    grads_ref = reference.backward(dy, *inputs.values(), **attrs)
    for name, grad, grad_ref in zip(("dx", "dkernel", "dgamma", "dbeta"), grads, grads_ref):
        assert_close(grad, grad_ref, rtol=5e-5, name=name)


@pytest.mark.parametrize(
    "gamma_scale, beta_scale, negative_slope",
    [(1e-8, 0.2, 0.3), (0.01, 5.0, 0.3), (1.0, 0.2, 0.0)],
    ids=["gamma-near-zero", "beta-dominates-gamma", "relu-not-invertible"],
)
def test_backward_recomputes_z_where_inverting_y_is_inexact(
        rng, isa, gamma_scale, beta_scale, negative_slope):
    native = needs_native()
    case = (2, 9, 9, 3, 4, 3, 2, "same", False)
    inputs = make_inputs(rng, case, gamma_scale=gamma_scale, beta_scale=beta_scale)
    attrs = dict(op_attrs(case, True), negative_slope=negative_slope)
    assert not native_can_invert(inputs, negative_slope)
    y, mean, variance = native.conv_bn_lrelu_forward(*inputs.values(), **attrs)
    dy = rng.normal(size=y.shape).astype(np.float32)
    grads = native.conv_bn_lrelu_backward(
        dy, inputs["x"], inputs["kernel"], inputs["gamma"], inputs["beta"], y, mean, variance,
        **attrs)
    grads_ref = reference.backward(dy, *inputs.values(), **attrs)
    for name, grad, grad_ref in zip(("dx", "dkernel", "dgamma", "dbeta"), grads, grads_ref):
        assert_close(grad, grad_ref, rtol=1e-4, name=name)


def native_can_invert(inputs, negative_slope):
    gamma, beta = np.abs(inputs["gamma"]), np.abs(inputs["beta"])
    return negative_slope > 0 and bool(np.all((gamma >= 1e-6) & (beta <= 64 * gamma)))


# --- the TF op (native and fallback) against the Keras stack -------------------------------


def keras_stack(case, inputs, epsilon=1e-3, momentum=0.99, negative_slope=0.3):
    *_, f, k, s, pad, transpose = case
    conv_cls = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    conv = conv_cls(f, k, strides=s, padding=pad, use_bias=False)
    bn = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum)
    act = keras.layers.LeakyReLU(negative_slope=negative_slope)
    conv.build(inputs["x"].shape)
    bn.build(conv.compute_output_shape(inputs["x"].shape))
    conv.kernel.assign(inputs["kernel"])
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(bn, name).assign(inputs[name])
    return conv, bn, act


def run_keras_stack(case, inputs, training):
    conv, bn, act = keras_stack(case, inputs)
    x = tf.constant(inputs["x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = act(bn(conv(x), training=training))
        loss = tf.reduce_sum(y * tf.sin(y))
    grads = tape.gradient(loss, [x, conv.kernel, bn.gamma, bn.beta])
    return y, grads, (bn.moving_mean.numpy(), bn.moving_variance.numpy())


def run_fused_op(case, inputs, training, impl, momentum=0.99):
    x = tf.constant(inputs["x"])
    variables = [tf.Variable(inputs[name]) for name in ("kernel", "gamma", "beta")]
    attrs = op_attrs(case, training)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, mean, variance = pyae.ops.fused_conv_bn_leaky_relu(
            x, *variables, inputs["moving_mean"], inputs["moving_variance"], impl=impl, **attrs)
        loss = tf.reduce_sum(y * tf.sin(y))
    grads = tape.gradient(loss, [x] + variables)
    if training:
        moving = (inputs["moving_mean"] * momentum + mean.numpy() * (1 - momentum),
                  inputs["moving_variance"] * momentum + variance.numpy() * (1 - momentum))
    else:
        moving = (inputs["moving_mean"], inputs["moving_variance"])
    return y, grads, moving


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", FASHION_BLOCKS + AWKWARD, ids=shape_id)
def test_fused_matches_keras_stack(rng, impl_on_every_path, case, training):
    inputs = make_inputs(rng, case)
    y_ref, grads_ref, moving_ref = run_keras_stack(case, inputs, training)
    y, grads, moving = run_fused_op(case, inputs, training, impl_on_every_path)
    assert_close(y, y_ref, rtol=1e-5, name="y")
    for name, grad, grad_ref in zip(("dx", "dkernel", "dgamma", "dbeta"), grads, grads_ref):
        assert_close(grad, grad_ref, rtol=1e-4, name=name)
    assert_close(moving[0], moving_ref[0], rtol=1e-5, name="moving_mean")
    assert_close(moving[1], moving_ref[1], rtol=1e-5, name="moving_variance")


@pytest.mark.parametrize("case", CARTOON_BLOCKS[:1] + CARTOON_BLOCKS[-1:], ids=shape_id)
def test_fused_matches_keras_stack_at_cartoon_shapes(rng, impl_on_every_path, case):
    inputs = make_inputs(rng, case)
    y_ref, grads_ref, _ = run_keras_stack(case, inputs, True)
    y, grads, _ = run_fused_op(case, inputs, True, impl_on_every_path)
    assert_close(y, y_ref, rtol=1e-5, name="y")
    for name, grad, grad_ref in zip(("dx", "dkernel", "dgamma", "dbeta"), grads, grads_ref):
        assert_close(grad, grad_ref, rtol=1e-4, name=name)


@pytest.mark.parametrize("case", FASHION_BLOCKS[:2] + FASHION_BLOCKS[-1:], ids=shape_id)
def test_parameter_gradients_without_dx_match_keras_stack(rng, impl, case):
    """A first layer: in a graph nothing reads dx, so the native grad kernel skips it."""
    inputs = make_inputs(rng, case)
    _, grads_ref, _ = run_keras_stack(case, inputs, True)
    x = tf.constant(inputs["x"])
    variables = [tf.Variable(inputs[name]) for name in ("kernel", "gamma", "beta")]

    @tf.function
    def parameter_gradients():
        with tf.GradientTape() as tape:
            y, _, _ = pyae.ops.fused_conv_bn_leaky_relu(
                x, *variables, inputs["moving_mean"], inputs["moving_variance"], impl=impl,
                **op_attrs(case, True))
            loss = tf.reduce_sum(y * tf.sin(y))
        return tape.gradient(loss, variables)

    for name, grad, grad_ref in zip(("dkernel", "dgamma", "dbeta"), parameter_gradients(),
                                    grads_ref[1:]):
        assert_close(grad, grad_ref, rtol=1e-4, name=name)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", [AWKWARD[0], (2, 4, 4, 3, 3, 3, 2, "same", True),
                                  (2, 6, 6, 2, 3, 3, 2, "same", False)],
                         ids=shape_id)
def test_gradient_matches_numeric_gradient(rng, impl, case, training):
    inputs = make_inputs(rng, case)
    # A gentle slope keeps finite differences that straddle the kink from dominating.
    attrs = dict(op_attrs(case, training), negative_slope=0.7)
    names = ("x", "kernel", "gamma", "beta")
    weights = rng.normal(size=(1,)).astype(np.float32)

    def loss(x, kernel, gamma, beta):
        y = pyae.ops.fused_conv_bn_leaky_relu(
            x, kernel, gamma, beta, inputs["moving_mean"], inputs["moving_variance"],
            impl=impl, **attrs).y
        return tf.reduce_sum(y * tf.cos(y)) * weights[0]

    theoretical, numerical = tf.test.compute_gradient(
        loss, [tf.constant(inputs[name], tf.float32) for name in names], delta=1e-3)
    for name, analytic, numeric in zip(names, theoretical, numerical):
        scale = max(np.max(np.abs(numeric)), 1e-3)
        assert np.max(np.abs(analytic - numeric)) / scale < 3e-2, name


# --- bad input -----------------------------------------------------------------------------

GOOD = (2, 8, 8, 3, 4, 3, 1, "same", False)


def call_op(inputs, impl="auto", **overrides):
    attrs = dict(op_attrs(GOOD, True), **overrides)
    return pyae.ops.fused_conv_bn_leaky_relu(*inputs.values(), impl=impl, **attrs)


@pytest.mark.parametrize(
    "field, bad_value, message",
    [
        ("x", np.ones((8, 8, 3), np.float32), "rank 4"),
        ("x", np.ones((2, 8, 8, 5), np.float32), "5 channels"),
        ("gamma", np.ones((7,), np.float32), "gamma must have shape"),
        ("moving_variance", np.ones((3,), np.float32), "moving_variance must have shape"),
        ("x", np.ones((2, 8, 8, 3), np.int32), "int32"),
        ("x", np.ones((0, 8, 8, 3), np.float32), "empty batch"),
    ],
    ids=["rank", "channels", "gamma-size", "variance-size", "integer-dtype", "empty-batch"],
)
def test_bad_input_is_rejected_by_name(rng, impl, field, bad_value, message):
    inputs = make_inputs(rng, GOOD)
    inputs[field] = bad_value
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=message):
        call_op(inputs, impl=impl)


@pytest.mark.parametrize("strides, message", [(0, "strides must be >= 1"),
                                              ((1, 2, 3), "strides")])
def test_bad_strides_are_rejected(rng, impl, strides, message):
    with pytest.raises(ValueError, match=message):
        call_op(make_inputs(rng, GOOD), impl=impl, strides=strides)


# One policy for non-finite values on every impl: NaN or Inf in the activations (x, dy)
# propagates as in Keras, so one bad image spoils its own outputs (all of a batch's in
# training, where it enters the batch statistics) and the loss says so; a non-finite or
# impossible parameter is an error naming it.

@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_non_finite_input_propagates_as_in_keras(rng, bad, training):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs["x"][1, 3, 4, 2] = bad
    native = call_op(inputs, impl="native", training=training).y.numpy()
    composite = call_op(inputs, impl="tf", training=training).y.numpy()
    assert not np.isfinite(native).all()
    np.testing.assert_array_equal(np.isfinite(native), np.isfinite(composite))
    finite = np.isfinite(composite)
    np.testing.assert_allclose(native[finite], composite[finite], rtol=1e-4, atol=1e-4)
    if not training:  # the other images of the batch are untouched
        assert np.isfinite(native[[0] + list(range(2, len(native)))]).all()


def test_predict_on_a_batch_with_one_bad_image_answers_for_the_others_on_every_impl(rng):
    from pyae.layers import FusedConvBNLeakyReLU

    needs_native()
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    images[2, 1, 1, 0] = np.nan
    outputs = {}
    for impl in ("native", "tf"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)),
                                  FusedConvBNLeakyReLU(4, 3, padding="same", impl=impl)])
        outputs[impl] = model.predict(images, verbose=0)
    for output in outputs.values():
        assert np.isfinite(output[[0, 1, 3]]).all() and not np.isfinite(output[2]).all()
    np.testing.assert_allclose(outputs["native"][[0, 1, 3]], outputs["tf"][[0, 1, 3]],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("field, index, training", [
    ("kernel", (2, 1, 0, 3), True), ("gamma", (1,), True), ("beta", (3,), False),
    ("moving_mean", (0,), False), ("moving_variance", (2,), False),
])
def test_non_finite_parameter_is_named(rng, field, index, training):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs[field][index] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{field} contains NaN or Inf"):
        call_op(inputs, impl="native", training=training)


def test_negative_moving_variance_is_named(rng):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs["moving_variance"][2] = -0.5
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"moving_variance \+ epsilon must be > 0 \(element 2 is -0.5"):
        call_op(inputs, impl="native", training=False)


@pytest.mark.parametrize("impl", ["native", "tf"])
def test_non_finite_upstream_gradient_propagates(rng, impl):
    if impl == "native":
        needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs["x"] = tf.constant(inputs["x"])
    with tf.GradientTape() as tape:
        tape.watch(inputs["x"])
        y = call_op(inputs, impl=impl).y
        loss = tf.reduce_sum(y * tf.constant(np.inf))
    assert not np.isfinite(tape.gradient(loss, inputs["x"]).numpy()).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strides": [0, 1]}, "strides must be >= 1"),
        ({"strides": [1, 1, 1]}, "strides must have 2 elements"),
        ({"epsilon": -1.0}, "epsilon must be > 0"),
    ],
    ids=["stride-zero", "stride-count", "epsilon"],
)
def test_raw_native_op_checks_its_attributes(rng, overrides, message):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    attrs = dict({"strides": [1, 1], "padding": "SAME", "epsilon": 1e-3,
                  "negative_slope": 0.3, "is_training": True, "transpose": False}, **overrides)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        pyae.ops.load().pyae_fused_conv_bn_leaky_relu(*inputs.values(), **attrs)


@pytest.mark.parametrize(
    "field, shape, message",
    [("x", (2, 8, 8, 5), "channels"), ("gamma", (9,), "gamma must have shape"),
     ("x", (0, 8, 8, 3), "empty batch"), ("x", (2, 2, 2, 3), "too small")],
    ids=["channels", "gamma", "empty-batch", "valid-too-small"],
)
def test_raw_native_op_checks_shapes_at_run_time(rng, field, shape, message):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs[field] = rng.normal(size=shape).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)] * 6)
    def unknown_shapes(*args):
        return pyae.ops.load().pyae_fused_conv_bn_leaky_relu(
            *args, strides=[1, 1], padding="VALID" if "valid" in message or "small" in message
            else "SAME", is_training=True)

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        unknown_shapes(*inputs.values())


def test_native_module_rejects_bad_input_with_value_error(rng):
    native = needs_native()
    inputs = make_inputs(rng, GOOD)
    inputs["x"] = inputs["x"][0]
    with pytest.raises(ValueError, match="x must have rank 4"):
        native.conv_bn_lrelu_forward(*inputs.values())


def test_native_ops_running_at_once_match_one_at_a_time(rng):
    """Ops sharing the intra-op pool at once (their helpers start late, or find the op over)
    still run every task exactly once: the same bits as each op alone."""
    needs_native()
    cases = [FASHION_BLOCKS[3], FASHION_BLOCKS[5], CARTOON_BLOCKS[2], AWKWARD[0]]
    inputs = [make_inputs(rng, case) for case in cases]

    def run(index):
        y, grads, _ = run_fused_op(cases[index], inputs[index], True, "native")
        return [y.numpy()] + [grad.numpy() for grad in grads]

    alone = [run(index) for index in range(len(cases))]
    order = [index for _ in range(3) for index in range(len(cases))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as threads:
        together = list(threads.map(run, order))
    for index, result in zip(order, together):
        for name, got, want in zip(("y", "dx", "dkernel", "dgamma", "dbeta"), result,
                                   alone[index]):
            np.testing.assert_array_equal(got, want, err_msg=f"{shape_id(cases[index])} {name}")


INTER_OP_GRAPH = """
    import sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(int(sys.argv[1]))
    import pyae.ops
    cases = np.load(sys.argv[2], allow_pickle=True)["cases"].tolist()

    @tf.function
    def step(blocks):
        # Independent blocks: TF may run them side by side on its inter-op threads.
        results = []
        for (x, kernel, gamma, beta, mean, variance, dy), attrs in zip(blocks, cases):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel, gamma, beta])
                y, _, _ = pyae.ops.fused_conv_bn_leaky_relu(
                    x, kernel, gamma, beta, mean, variance, impl="native", **attrs)
                loss = tf.reduce_sum(y * dy)
            results.append([y] + tape.gradient(loss, [x, kernel, gamma, beta]))
        return results

    blocks = [[tf.constant(v) for v in np.load(f"{sys.argv[2]}.{i}.npz").values()]
              for i in range(len(cases))]
    for _ in range(3):
        results = step(blocks)
    np.savez(sys.argv[3], *[t.numpy() for block in results for t in block])
"""


@pytest.mark.parametrize("inter_op_threads", [1, 2])
def test_native_op_in_a_graph_matches_reference_under_one_and_two_inter_op_threads(
        rng, tmp_path, inter_op_threads):
    """The op's helpers are offered to TF's inter-op threads as well as its intra-op pool;
    with one inter-op thread (the op's own caller) none of them can come, with two they can,
    and ops beside it compete for both pools: every output matches the float64 reference."""
    needs_native()
    cases = [FASHION_BLOCKS[1], FASHION_BLOCKS[6], AWKWARD[8]]
    attrs = [op_attrs(case, training=True) for case in cases]
    np.savez(tmp_path / "cases.npz", cases=np.array(attrs, dtype=object))
    arrays = []
    for index, case in enumerate(cases):
        inputs = make_inputs(rng, case)
        y_ref, *_ = reference.forward(*inputs.values(), **attrs[index])
        dy = rng.normal(size=y_ref.shape).astype(np.float32)
        np.savez(tmp_path / f"cases.npz.{index}.npz", *inputs.values(), dy)
        arrays.append((inputs, dy, y_ref))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(INTER_OP_GRAPH), str(inter_op_threads),
         str(tmp_path / "cases.npz"), str(tmp_path / "out.npz")], capture_output=True,
        text=True, env=same_pyae_env(TF_CPP_MIN_LOG_LEVEL="3"), check=False, timeout=300,
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = list(np.load(tmp_path / "out.npz").values())
    for index, (inputs, dy, y_ref) in enumerate(arrays):
        got = outputs[5 * index: 5 * index + 5]
        want = [y_ref] + list(reference.backward(dy, *inputs.values(), **attrs[index]))
        for name, actual, expected in zip(("y", "dx", "dkernel", "dgamma", "dbeta"), got, want):
            assert_close(actual, expected, rtol=5e-5, name=f"{shape_id(cases[index])} {name}")


# --- implementation choice, loader, build info ----------------------------------------------


def test_native_impl_is_refused_inside_xla(rng):
    needs_native()
    inputs = make_inputs(rng, GOOD)

    weights = list(inputs.values())[1:]

    @tf.function(jit_compile=True)
    def compiled(x):
        return pyae.ops.fused_conv_bn_leaky_relu(x, *weights, training=True, impl="auto").y

    @tf.function(jit_compile=True)
    def forced(x):
        return pyae.ops.fused_conv_bn_leaky_relu(x, *weights, training=True, impl="native").y

    expected = call_op(inputs, impl="tf").y
    assert_close(compiled(inputs["x"]), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="XLA"):
        forced(inputs["x"])


@pytest.mark.parametrize(
    "recorded, running, abi, expected",
    [
        ({"tf_version": "2.21.0", "tf_cxx11_abi": 1}, "2.21.3", 1, None),
        ({"tf_version": "2.20.0", "tf_cxx11_abi": 1}, "2.21.0", 1, "built for TensorFlow 2.20.0"),
        ({"tf_version": "2.21.0", "tf_cxx11_abi": 0}, "2.21.0", 1, "_GLIBCXX_USE_CXX11_ABI=0"),
        ({}, "2.21.0", 1, "not built"),
    ],
    ids=["same-minor", "other-minor", "other-abi", "nothing-built"],
)
def test_loader_explains_a_mismatch_before_loading(recorded, running, abi, expected):
    reason = _loader.mismatch_reason(recorded, running, abi)
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


def run_python(code, cwd, **env):
    """`python -c` in `cwd`, importing the same pyae as this process."""
    package_root = os.path.dirname(os.path.dirname(pyae.__file__))
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=package_root, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, check=False, timeout=300, cwd=cwd)


def test_environment_variable_forces_the_fallback(tmp_path):
    result = run_python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import pyae.ops
            print(pyae.ops.native_available(), pyae.ops.resolve_impl("auto"))
            print(pyae.ops.build_info()["tf_ops"]["reason"])
        print(sum("fallback" in str(w.message) for w in caught))
    """, tmp_path, PYAE_FORCE_FALLBACK="1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "False tf"
    assert "PYAE_FORCE_FALLBACK is set" in lines[1]


def test_missing_library_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(_loader, "LIBRARY_PATH", tmp_path / "missing.so")
    monkeypatch.setattr(_loader, "BUILD_INFO_PATH", tmp_path / "missing.json")
    monkeypatch.setattr(_loader, "_state", {"loaded": False, "library": None, "reason": None})
    monkeypatch.delenv("PYAE_FORCE_FALLBACK", raising=False)
    with pytest.warns(RuntimeWarning, match="pure-TensorFlow fallback") as caught:
        assert _loader.load() is None
        assert _loader.load() is None
    assert len(caught) == 1
    assert pyae.ops.resolve_impl("auto") == "tf"
    with pytest.raises(ValueError, match="not installed"):
        pyae.ops.resolve_impl("native")


def test_build_info_says_what_was_built():
    info = pyae.ops.build_info()
    assert info["tf_ops"]["running_tf"] == tf.__version__
    assert info["tf_ops"]["loaded"] == (info["tf_ops"]["reason"] is None)
    if info["tf_ops"]["loaded"]:
        assert info["tf_ops"]["built_for_tf"].split(".")[:2] == tf.__version__.split(".")[:2]
        assert info["native_module"]["available"]
        assert "cuda" in info and "built" in info["cuda"]


def test_build_info_reports_the_cpu_paths():
    needs_native()
    isa = pyae.ops.build_info()["isa"]
    assert "generic" in isa["built"] and "generic" in isa["supported"]
    assert isa["active"] in isa["built"] and isa["active"] in isa["supported"]
    assert isa["error"] == ""
    if os.environ.get("PYAE_ISA", "auto") == "auto":
        best = [name for name in isa["built"] if name in isa["supported"]][0]
        assert isa["active"] == best
        assert "best path this CPU runs" in isa["reason"]


def test_set_isa_switches_the_path_and_rejects_unknown_names():
    needs_native()
    previous = pyae.ops.isa_info()["active"]
    try:
        pyae.ops.set_isa("generic")
        assert pyae.ops.isa_info()["active"] == "generic"
        assert "forced" in pyae.ops.isa_info()["reason"]
    finally:
        pyae.ops.set_isa(os.environ.get("PYAE_ISA", "auto"))
    assert pyae.ops.isa_info()["active"] == previous
    with pytest.raises(ValueError, match="Received: isa='sse9'"):
        pyae.ops.set_isa("sse9")
    with pytest.raises(ValueError, match="Received: isa=3"):
        pyae.ops.set_isa(3)


def test_environment_variable_naming_a_bad_path_is_a_clear_error(tmp_path):
    needs_native()
    result = run_python("""
        import numpy as np
        import pyae.ops
        print(pyae.ops.build_info()["isa"]["error"])
        x = np.ones((1, 4, 4, 1), np.float32)
        k = np.ones((3, 3, 1, 2), np.float32)
        c = np.ones(2, np.float32)
        for impl in ("native", "auto"):
            try:
                pyae.ops.fused_conv_bn_leaky_relu(x, k, c, c, c, c, impl=impl)
            except ValueError as err:
                print(impl, err)
        print(pyae.ops.fused_conv_bn_leaky_relu(x, k, c, c, c, c, impl="tf").y.shape)
    """, tmp_path, PYAE_ISA="avx9000")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().split("\n")
    assert "PYAE_ISA='avx9000' is not a path" in lines[0]
    assert lines[1].startswith("native ") and "avx9000" in lines[1]
    assert lines[2].startswith("auto ") and "avx9000" in lines[2]
    assert lines[3] == "(1, 4, 4, 2)"


@pytest.mark.skipif(os.environ.get("PYAE_REQUIRE_NATIVE", "") in ("", "0"),
                    reason="only where the native build is required (CI)")
def test_native_parts_are_built_where_required():
    info = pyae.ops.build_info()
    assert info["tf_ops"]["loaded"], info["tf_ops"]["reason"]
    assert info["native_module"]["available"], info["native_module"]
    if os.environ.get("PYAE_REQUIRE_CUDA", "") not in ("", "0"):
        assert info["cuda"]["built"], info["cuda"]


def test_saved_model_with_the_native_op_loads_after_import_pyae(rng, tmp_path):
    needs_native()
    inputs = make_inputs(rng, GOOD)
    module = tf.Module()
    module.weights = [tf.Variable(inputs[name]) for name in list(inputs)[1:]]

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def serve(x):
        return pyae.ops.fused_conv_bn_leaky_relu(x, *module.weights, impl="native").y

    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "model"))
    expected = serve(inputs["x"]).numpy()
    np.save(tmp_path / "x.npy", inputs["x"])
    result = run_python(f"""
        import numpy as np, tensorflow as tf
        import pyae
        loaded = tf.saved_model.load({str(tmp_path / 'model')!r})
        np.save({str(tmp_path / 'y.npy')!r}, loaded.serve(np.load({str(tmp_path / 'x.npy')!r})))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_close(np.load(tmp_path / "y.npy"), expected, rtol=1e-6)
