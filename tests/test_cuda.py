"""The CUDA kernels of pyae._native against the float64 numpy reference, on the CPU op tests'
cases (tests/op_cases.py): forward and every gradient, training and inference, FMA and TF32,
the tutorial's shapes and awkward ones, every output poisoned with NaN before each run.

The CUDA tests run where the module was built with CUDA and a device is visible, with
PyTorch providing the device arrays; elsewhere they skip, naming which of the three is
missing. The comparison itself runs everywhere: the same check drives the CPU kernels, so
what a GPU session runs has run here first. Needs no TensorFlow (a GPU machine has none):
``PYAE_NATIVE_DIR=build/gpu/pyae pytest --noconftest tests/test_cuda.py`` (bench/gpu/run.sh).
"""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

import reference
from native_module import load_native
from op_cases import ALL_SHAPES, AWKWARD, FASHION_BLOCKS, make_inputs, op_attrs, shape_id

SEED = 20261201
# Relative to each tensor's largest reference value. FMA float32: the CPU op tests' bounds;
# TF32 rounds each conv operand to 10 mantissa bits.
FMA_RTOL = {"y": 2e-5, "mean": 1e-5, "variance": 1e-5, "dx": 5e-5, "dkernel": 5e-5,
            "dgamma": 5e-5, "dbeta": 5e-5}
TF32_RTOL = dict.fromkeys(FMA_RTOL, 1e-3)
RECOMPUTE_RTOL = 1e-4  # the CPU op tests' bound where the backward recomputes z
GRAD_NAMES = ("dx", "dkernel", "dgamma", "dbeta")

NATIVE = load_native()


def cuda_unavailable_reason():
    """Why the CUDA kernels cannot run here, or None."""
    if NATIVE is None:
        return "pyae._native is not built"
    if not hasattr(NATIVE, "conv_bn_lrelu_forward_cuda"):
        return "pyae._native was built without CUDA (nvcc was not found)"
    info = NATIVE.cuda_device_info()
    if "error" in info:
        return f"no CUDA device is visible ({info['error']})"
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        return "PyTorch (the tests' CUDA arrays) is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


@pytest.fixture
def rng(request):
    """Fresh random inputs per test, reproducible from the test's name."""
    return np.random.default_rng([SEED, *request.node.name.encode()])


@pytest.fixture(scope="module")
def native():
    if NATIVE is None:
        pytest.skip("pyae._native is not built")
    return NATIVE


@pytest.fixture(scope="module")
def cuda():
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return CudaKernels(NATIVE)


@pytest.fixture(scope="module")
def stand_in(native):
    """CudaKernels driving the CPU kernels through the CUDA entry points' signatures."""
    if not hasattr(native, "conv_bn_lrelu_output_shape"):
        pytest.skip("pyae._native was built without CUDA (nvcc was not found)")
    pytest.importorskip("torch", reason="PyTorch (the tests' device arrays) is not installed")
    from cuda_stand_in import CpuStandIn  # pylint: disable=import-outside-toplevel

    return CudaKernels(CpuStandIn(native), device="cpu")


@pytest.fixture(params=["cuda", "cpu-stand-in"])
def kernels(request):
    """The CUDA kernels, and the same test driving the CPU kernels in their place."""
    return request.getfixturevalue("cuda" if request.param == "cuda" else "stand_in")


def _torch():
    import torch  # pylint: disable=import-outside-toplevel

    return torch


class CudaKernels:
    """The CUDA entry points on PyTorch device arrays; outputs are NaN until written."""

    def __init__(self, native, allow_tf32=False, device="cuda"):
        self.torch, self.native = _torch(), native
        self.allow_tf32, self.device_name = allow_tf32, device

    def with_tf32(self, allow_tf32):
        return CudaKernels(self.native, allow_tf32, self.device_name)

    def device(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(self.device_name)

    def poisoned(self, shape):
        return self.torch.full(tuple(shape), float("nan"), device=self.device_name)

    def call_args(self, attrs):
        return dict(strides=list(attrs["strides"]), padding=attrs["padding"],
                    training=attrs["training"], transpose=attrs["transpose"],
                    allow_tf32=self.allow_tf32,
                    stream=self.stream(),
                    **{k: attrs[k] for k in ("epsilon", "negative_slope") if k in attrs})

    def stream(self):
        on_gpu = self.device_name == "cuda"
        return self.torch.cuda.current_stream().cuda_stream if on_gpu else 0

    def host(self, *tensors):
        if self.device_name == "cuda":
            self.torch.cuda.synchronize()
        return tuple(t.cpu().numpy() for t in tensors)

    def forward(self, inputs, attrs):
        d = {name: self.device(value) for name, value in inputs.items()}
        out_shape = self.native.conv_bn_lrelu_output_shape(
            inputs["x"].shape, inputs["kernel"].shape, list(attrs["strides"]), attrs["padding"],
            attrs["transpose"])
        channels = out_shape[3]
        y, mean, variance = (self.poisoned(out_shape), self.poisoned((channels,)),
                             self.poisoned((channels,)))
        self.native.conv_bn_lrelu_forward_cuda(
            d["x"], d["kernel"], d["gamma"], d["beta"], d["moving_mean"], d["moving_variance"],
            y, mean, variance, **self.call_args(attrs))
        if not attrs["training"]:  # the statistics used are the moving ones, as on the CPU
            mean, variance = d["moving_mean"], d["moving_variance"]
        return self.host(y, mean, variance)

    def backward(self, dy, inputs, y, mean, variance, attrs):
        d = {name: self.device(value) for name, value in inputs.items()}
        grads = [self.poisoned(inputs["x"].shape), self.poisoned(inputs["kernel"].shape),
                 self.poisoned(inputs["gamma"].shape), self.poisoned(inputs["gamma"].shape)]
        self.native.conv_bn_lrelu_backward_cuda(
            self.device(dy), d["x"], d["kernel"], d["gamma"], d["beta"], self.device(y),
            self.device(mean), self.device(variance), *grads, **self.call_args(attrs))
        return self.host(*grads)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if not np.all(np.isfinite(actual)):  # NaN poison left: an element was never written
        return np.inf
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-6)


def check_against_reference(kernels, rng, case, training, rtol, negative_slope=0.3,
                            **input_scales):
    """Forward and every gradient of one case against tests/reference.py; returns the
    relative errors, failing with all of those over their bounds."""
    inputs = make_inputs(rng, case, **input_scales)
    attrs = dict(op_attrs(case, training), negative_slope=negative_slope)
    y, mean, variance = kernels.forward(inputs, attrs)
    y_ref, mean_ref, var_ref, _ = reference.forward(*inputs.values(), **attrs)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    grads = kernels.backward(dy, inputs, y, mean, variance, attrs)
    grads_ref = reference.backward(dy, *inputs.values(), **attrs)
    errors = {"y": relative_error(y, y_ref), "mean": relative_error(mean, mean_ref),
              "variance": relative_error(variance, var_ref)}
    errors.update({n: relative_error(g, r) for n, g, r in zip(GRAD_NAMES, grads, grads_ref)})
    bounds = rtol if isinstance(rtol, dict) else dict.fromkeys(errors, rtol)
    too_large = {n: f"{e:.2e}" for n, e in errors.items() if not e < bounds[n]}
    assert not too_large, f"relative error over its bound: {too_large} (bounds {bounds})"
    return errors


# --- the harness on the CPU kernels (runs wherever pyae._native and PyTorch are) ---------


@pytest.mark.parametrize("case", [FASHION_BLOCKS[1], FASHION_BLOCKS[5], AWKWARD[3], AWKWARD[4]],
                         ids=shape_id)
def test_reference_check_passes_on_the_cpu_stand_in(stand_in, rng, case):
    for training in (True, False):
        check_against_reference(stand_in, rng, case, training, FMA_RTOL)


def test_reference_check_catches_an_unwritten_element(stand_in, rng):
    class DropsOneElement(CudaKernels):
        def backward(self, *args):
            dx, *rest = super().backward(*args)
            dx = dx.copy()
            dx.flat[dx.size // 2] = np.nan  # as a kernel that never wrote it leaves the poison
            return (dx, *rest)

    kernels = DropsOneElement(stand_in.native, device="cpu")
    with pytest.raises(AssertionError, match="'dx': 'inf'"):
        check_against_reference(kernels, rng, AWKWARD[0], True, FMA_RTOL)


def test_cuda_output_shape_is_the_cpu_kernels_shape(native, rng):
    if not hasattr(native, "conv_bn_lrelu_output_shape"):
        pytest.skip("pyae._native was built without CUDA (nvcc was not found)")
    for case in ALL_SHAPES:
        inputs = make_inputs(rng, case)
        attrs = op_attrs(case, training=False)
        y, _, _ = native.conv_bn_lrelu_forward(*inputs.values(), **attrs)
        shape = native.conv_bn_lrelu_output_shape(
            inputs["x"].shape, inputs["kernel"].shape, list(attrs["strides"]), attrs["padding"],
            attrs["transpose"])
        assert tuple(shape) == y.shape, shape_id(case)


# --- the CUDA kernels ---------------------------------------------------------------------


@pytest.mark.parametrize("allow_tf32", [False, True], ids=["fma", "tf32"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", ALL_SHAPES, ids=shape_id)
def test_cuda_forward_and_gradients_match_float64_reference(cuda, rng, case, training,
                                                            allow_tf32):
    check_against_reference(cuda.with_tf32(allow_tf32), rng, case, training,
                            TF32_RTOL if allow_tf32 else FMA_RTOL)


@pytest.mark.parametrize(
    "gamma_scale, beta_scale, negative_slope",
    [(1e-8, 0.2, 0.3), (0.01, 5.0, 0.3), (1.0, 0.2, 0.0)],
    ids=["gamma-near-zero", "beta-dominates-gamma", "relu-not-invertible"],
)
@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convT"])
def test_backward_recomputes_z_where_inverting_y_is_inexact(
        kernels, rng, transpose, gamma_scale, beta_scale, negative_slope):
    case = (2, 9, 9, 3, 4, 3, 2, "same", transpose)
    check_against_reference(kernels, rng, case, True, RECOMPUTE_RTOL, negative_slope=negative_slope,
                            gamma_scale=gamma_scale, beta_scale=beta_scale)


def test_results_are_bit_identical_between_runs(kernels, rng):
    inputs = make_inputs(rng, FASHION_BLOCKS[2])
    attrs = op_attrs(FASHION_BLOCKS[2], training=True)
    first = kernels.forward(inputs, attrs)
    second = kernels.forward(inputs, attrs)
    dy = rng.normal(size=first[0].shape).astype(np.float32)
    grads = [kernels.backward(dy, inputs, *first, attrs) for _ in range(2)]
    for a, b in zip(first + grads[0], second + grads[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "overrides, message",
    [({"epsilon": -1.0}, r"epsilon must be > 0\. Received: epsilon=-1\.0"),
     ({"negative_slope": -0.5}, r"Received: negative_slope=-0\.5"),
     ({"padding": "full"}, r"Received: padding='full'"),
     ({"strides": [0, 1]}, r"Received: strides=\(0, 1\)")],
    ids=["epsilon", "negative-slope", "padding", "strides"],
)
def test_bad_parameters_are_rejected_naming_the_value(kernels, rng, overrides, message):
    inputs = make_inputs(rng, FASHION_BLOCKS[3])
    attrs = dict(op_attrs(FASHION_BLOCKS[3], training=True), **overrides)
    with pytest.raises((ValueError, RuntimeError), match=message):
        kernels.forward(inputs, attrs)


# --- bench/gpu/check_and_time.py, the script a GPU session runs, dry-run on the CPU --------


def load_check_and_time():
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu" / "check_and_time.py"
    spec = importlib.util.spec_from_file_location("check_and_time", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reference_kind", ["torch-if-installed", "numpy"])
def test_gpu_check_script_dry_run_passes_on_the_cpu_kernels(native, tmp_path, monkeypatch,
                                                            reference_kind):
    script = load_check_and_time()
    if reference_kind == "numpy":  # as on a machine without PyTorch
        monkeypatch.setattr(script, "torch", None)
        monkeypatch.setattr(script, "F", None)
    status = script.main(["--dry-run", "--quick", "--no-compile", "--native-dir",
                          str(pathlib.Path(native.__file__).parent), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    check = (tmp_path / "check.txt").read_text()
    assert status == 0 and results["all_passed"], check
    assert "correctness: ALL PASSED" in check and "FAIL" not in check
    timed = [row["case"]["name"] for row in results["timing"]]
    assert timed == ["fmnist enc2 conv 28x28x32->64 s2", "fmnist dec2 convT 7x7x64->64 s2"]
    assert all(row["times_ms"]["fused train"] > 0 for row in results["timing"])
    assert ("eager train" in results["timing"][0]["times_ms"]) == (script.torch is not None)
    assert "geomean" in (tmp_path / "timing.txt").read_text() or script.torch is None
