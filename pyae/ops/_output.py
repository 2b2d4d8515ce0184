"""The models' output layer as one op: ``activation(conv2d_transpose(x, kernel) + bias)``.

Both tutorial models end with a stock ``Conv2DTranspose(channels, 3, stride, "same",
activation="sigmoid")`` from 32 channels to 1 or 3. TensorFlow runs it (oneDNN) at a few
GFLOP/s at those channel counts, and under mixed_bfloat16 its bias gradient is a slow bf16
reduction; the native op computes forward and gradients in one pass each, memory-bound.
"""
import tensorflow as tf

from pyae.ops import _loader, geometry
from pyae.ops._api import HALF_DTYPES, IMPLS, in_xla_context

OUTPUT_ACTIVATIONS = ("sigmoid", "linear")
NATIVE_OUTPUT_DTYPES = (tf.float32, tf.bfloat16)

# The native kernels keep one float32 accumulator per output channel and sum it across the
# input channels' vector once per output value: built for the models' 1-4 output channels.
# Beyond this many output channels impl="auto" leaves the layer to oneDNN's GEMM-based conv.
MAX_AUTO_OUT_CHANNELS = 4

# CPU kernel paths on which the native output op was measured faster than TF's own ops at both
# tutorial output layers, forward and backward, float32 and bfloat16 (bench/output_op.py;
# bench/RESULTS.md, "The output op"), with the figures; impl="auto" runs the native op there.
# Not the generic path: its fwd+bwd ran 0.29x (Cartoon) and 0.63x (Fashion-MNIST) of TF's.
FASTER_THAN_TF_PATHS = {
    "avx512": "the native output op beats TF's ops on the avx512 path (tf/native, fwd+bwd: "
              "Fashion-MNIST 1.25x float32, 1.90x bfloat16; Cartoon 1.05x float32, 2.53x "
              "bfloat16; forward alone 1.51-3.11x)",
    "avx2": "the native output op beats TF's ops on the avx2 path, oneDNN held to AVX2 too "
            "(tf/native, fwd+bwd: Fashion-MNIST 1.21x, Cartoon 1.19x in float32; oneDNN's "
            "bf16 conv transpose does not run there at all)",
}


# Under mixed_bfloat16 the rule is judged on the whole train step (bench/training_report.py
# --policy mixed_bfloat16 --configs pyae-native pyae-native-tfout, interleaved), not on the op
# alone: once the op alone was faster while the step with it measured slower in two single
# runs. Paired runs since put the native op ahead at both models (bench/RESULTS.md, "The bf16
# output op on AVX512-BF16").
BF16_STEP_FASTER_PATHS = {
    "avx512": "under mixed_bfloat16 the native output op (AVX512-BF16 kernels) makes the whole "
              "train step faster than TF's ops on the avx512 path (ms/step native vs TF's ops, "
              "paired runs: Cartoon 336 vs 361 and 368 vs 506, Fashion-MNIST 75 vs 79 and 72 "
              "vs 69; before the bf16 kernels Cartoon 362 vs 394, 350 vs 383, 641 vs 701)",
}


def _native_op_problem(dtype):
    """Why the native output op cannot run here for ``dtype``, or None."""
    if dtype not in NATIVE_OUTPUT_DTYPES:
        return f"the native output op computes in float32 or bfloat16, got {dtype.name}"
    if in_xla_context():
        return "a custom op cannot run inside an XLA (jit_compile) function"
    library = _loader.load()
    if library is None:
        return _loader.fallback_reason()
    if tf.config.list_logical_devices("GPU"):
        return "the native output op has CPU kernels only (on a GPU TF's ops run)"
    if not hasattr(library, "pyae_conv_transpose_output"):
        return "the loaded op library has no output op (rebuild pyae: python setup.py build_ext)"
    isa = _loader.isa_info()
    if isa["error"]:
        return f"pyae's native kernels cannot run: {isa['error']}"
    return None


def explain_output_impl(impl="auto", dtype=tf.float32, out_channels=1):
    """``(choice, reason)``: what ``impl`` resolves to ("native" or "tf") for the output op
    computing in ``dtype`` with ``out_channels`` output channels, and why.

    ``impl="auto"`` picks the native op where it is usable and measured faster than TF's own
    ops (bench/RESULTS.md, "The output op"). Raises ValueError for ``impl="native"`` where
    the native op cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}. Received: impl={impl!r}")
    if impl == "tf":
        return "tf", "impl='tf' was requested"
    problem = _native_op_problem(tf.as_dtype(dtype))
    if problem is not None:
        if impl == "native":
            raise ValueError(f"impl='native' is not available for the output op: {problem}")
        return "tf", problem
    path = _loader.isa_info()["active"]
    if impl == "native":
        return "native", f"impl='native' was requested (CPU kernel path {path})"
    if out_channels > MAX_AUTO_OUT_CHANNELS:
        return "tf", (f"{out_channels} output channels: the native output op is built for "
                      f"at most {MAX_AUTO_OUT_CHANNELS} (the models' 1 and 3)")
    if path not in FASTER_THAN_TF_PATHS:
        return "tf", (f"the native output op was not measured faster than TF's conv transpose "
                      f"on the {path} path (bench/RESULTS.md, 'The output op')")
    if tf.as_dtype(dtype) == tf.bfloat16 and path in BF16_STEP_FASTER_PATHS:
        return "native", BF16_STEP_FASTER_PATHS[path]
    return "native", FASTER_THAN_TF_PATHS[path]


def _normalize_activation(activation):
    name = "linear" if activation is None else activation
    if name not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"activation must be one of {OUTPUT_ACTIVATIONS} or None. "
                         f"Received: activation={activation!r}")
    return name


def _check_args(x, kernel, bias):
    if x.dtype not in (tf.float32,) + HALF_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16. Received: x.dtype={x.dtype.name}")
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(f"x must be rank 4 (NHWC). Received: x.shape={x.shape}")
    if kernel.shape.rank != 4:
        raise ValueError("kernel must be rank 4, (kh, kw, out_channels, in_channels) as "
                         f"Conv2DTranspose stores it. Received: kernel.shape={kernel.shape}")
    in_channels = x.shape[-1]
    if in_channels is not None and kernel.shape[3] != in_channels:
        raise ValueError(f"x has {in_channels} channels but the kernel expects "
                         f"{kernel.shape[3]} (its last axis). Received: kernel.shape="
                         f"{kernel.shape}, x.shape={x.shape}")
    out_channels = kernel.shape[2]
    if bias is not None and (bias.shape.rank != 1 or bias.shape[0] != out_channels):
        raise ValueError(f"bias must have shape ({out_channels},) to match the kernel's "
                         f"{out_channels} output channels. Received: bias.shape={bias.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"x has an empty batch. Received: x.shape={x.shape}")


def composite(x, kernel, bias, strides, activation):
    """What Keras' Conv2DTranspose computes, in x's dtype (the variables cast to it)."""
    z = tf.nn.conv_transpose(x, tf.cast(kernel, x.dtype), _output_shape(x, kernel, strides),
                             strides=strides, padding="SAME")
    if bias is not None:
        z = z + tf.reshape(tf.cast(bias, x.dtype), (1, 1, 1, -1))
    return tf.sigmoid(z) if activation == "sigmoid" else z


def _output_shape(x, kernel, strides):
    dims = [x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(3)]
    return [dims[0], dims[1] * strides[0], dims[2] * strides[1], kernel.shape[2]]


def conv_transpose_output(x, kernel, bias, strides=1, activation="sigmoid", impl="auto"):
    """``activation(conv2d_transpose(x, kernel, strides, "same") + bias)``, as Keras'
    ``Conv2DTranspose`` computes it.

    ``x`` is NHWC in the compute dtype (float32, or bfloat16/float16 under mixed precision);
    ``kernel`` is the float32 variable in Conv2DTranspose's layout ``(kh, kw, out_channels,
    in_channels)``; ``bias`` is ``(out_channels,)`` or None; ``activation`` is "sigmoid" or
    "linear" (None). The output has x's dtype and shape ``(N, H*sh, W*sw, out_channels)``;
    the gradients of kernel and bias come back float32. ``impl``: "native" (the fused op,
    its gradient a second native op), "tf" (TF's own ops) or "auto"
    (``explain_output_impl`` says which runs and why).
    """
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel, dtype=tf.float32)
    bias = None if bias is None else tf.convert_to_tensor(bias, dtype=tf.float32)
    strides = geometry.normalize_pair(strides, "strides")
    activation = _normalize_activation(activation)
    _check_args(x, kernel, bias)
    if explain_output_impl(impl, x.dtype, kernel.shape[2])[0] == "tf":
        return composite(x, kernel, bias, strides, activation)
    if bias is None:
        bias = tf.zeros((kernel.shape[2],), tf.float32)
    return _loader.load().pyae_conv_transpose_output(
        x, kernel, bias, strides=list(strides), activation=activation)
