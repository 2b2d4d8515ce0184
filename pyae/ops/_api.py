"""The public fused op: validates arguments, picks the implementation, returns y and stats."""
import collections

import tensorflow as tf

from pyae.ops import _fallback, _loader, geometry

IMPLS = ("auto", "native", "tf")

FusedOutput = collections.namedtuple("FusedOutput", ["y", "mean", "variance"])

# Activation dtypes of mixed precision: the parameters and statistics stay float32.
HALF_DTYPES = (tf.bfloat16, tf.float16)


def in_xla_context():
    """True while tracing a function that XLA will compile (custom ops can't enter it)."""
    from tensorflow.python.ops import control_flow_util  # pylint: disable=import-outside-toplevel

    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


# CPU kernel paths on which the native op is slower than TF's own ops, and the measurement
# that says so (bench/RESULTS.md): there impl="auto" runs the composite ops instead.
SLOWER_THAN_TF_PATHS = {
    "generic": "the generic CPU path (im2col + OpenBLAS GEMM) does not beat the composite ops "
               "at every tutorial model (fwd+bwd vs impl='tf', geometric mean over the blocks: "
               "0.97x Fashion-MNIST, 5 of 7 blocks slower; 1.17x Cartoon; bench/RESULTS.md)",
}


# Under mixed_bfloat16, why the native bf16 op would not beat the composite ops in bfloat16
# (then impl="auto" runs those), or None: measured faster at every block (bench/RESULTS.md,
# "Mixed precision after the direct bf16 kernels": fwd+bwd per block vs Keras' layers under the
# policy, 1.27-2.12x Fashion-MNIST, 1.33-2.77x Cartoon).
BF16_SLOWER_THAN_TF = None


def _dtype_problem(dtype):
    """Why the native op cannot compute in ``dtype``, or None."""
    if dtype == tf.float32:
        return None
    if dtype == tf.bfloat16:
        if _loader.load() is None or _loader.isa_info()["error"]:
            return None  # the library's own problem is reported next
        bf16 = _loader.bf16_info()
        if bf16["path"] == "none":
            return f"the native op has no bfloat16 kernels here: {bf16['reason']}"
        return None
    return f"the native op computes in float32 or bfloat16, got {dtype.name}"


def explain_impl(impl="auto", dtype=tf.float32):
    """``(choice, reason)``: what ``impl`` resolves to ("native" or "tf") here, and why.

    ``impl="auto"`` picks the native op only where it is usable and beats the composite ops
    on the CPU kernel path in use (``SLOWER_THAN_TF_PATHS`` lists where it does not); in
    bfloat16 where the CPU has the bf16 kernels (``bf16_info()``) and they beat the composite
    ops in that dtype (``BF16_SLOWER_THAN_TF``). Raises ValueError for ``impl="native"`` where
    the native op cannot run, and for any but "tf" where ``PYAE_ISA`` forced a path that
    cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "tf":
        return "tf", "impl='tf' was requested"
    dtype = tf.as_dtype(dtype)
    native_problem = _dtype_problem(dtype)
    if native_problem is None and in_xla_context():
        native_problem = "a custom op cannot run inside an XLA (jit_compile) function"
    elif native_problem is None and _loader.load() is None:
        native_problem = _loader.fallback_reason()
    if native_problem is not None:
        if impl == "native":
            raise ValueError(f"impl='native' is not available: {native_problem}")
        return "tf", native_problem
    isa = _loader.isa_info()
    if isa["error"]:  # a path PYAE_ISA forced that cannot run: never a silent switch
        raise ValueError(f"pyae's native kernels cannot run: {isa['error']}")
    if dtype == tf.bfloat16:
        return _explain_bf16(impl)
    if impl == "native":
        return "native", f"impl='native' was requested (CPU kernel path {isa['active']})"
    slower = SLOWER_THAN_TF_PATHS.get(isa["active"])
    if slower is not None:
        return "tf", slower
    return "native", f"the native op beats the composite ops on the {isa['active']} path"


def _explain_bf16(impl):
    path = _loader.bf16_info()["path"]
    if impl == "native":
        return "native", f"impl='native' was requested (bf16 kernels {path})"
    if BF16_SLOWER_THAN_TF is not None:
        return "tf", BF16_SLOWER_THAN_TF
    return "native", (f"the native bf16 op ({path}) beats the composite ops in bfloat16 "
                      "(fwd+bwd at every block, 1.27-2.12x Fashion-MNIST, 1.33-2.77x Cartoon; "
                      "bench/RESULTS.md, 'Mixed precision')")


def resolve_impl(impl, dtype=tf.float32):
    """Return "native" or "tf" for the requested ``impl`` (see ``explain_impl``)."""
    return explain_impl(impl, dtype)[0]


def _check_args(x, kernel, gamma, beta, moving_mean, moving_variance, transpose):
    if not x.dtype.is_floating:
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype.name}")
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(f"x must be rank 4 (NHWC), got shape {x.shape}")
    if kernel.shape.rank != 4:
        raise ValueError(f"kernel must be rank 4 (kh, kw, ...), got shape {kernel.shape}")
    in_axis = 3 if transpose else 2
    out_axis = 2 if transpose else 3
    in_channels = x.shape[-1]
    if in_channels is not None and kernel.shape[in_axis] != in_channels:
        raise ValueError(
            f"x has {in_channels} channels but kernel shape {kernel.shape} expects "
            f"{kernel.shape[in_axis]} input channels"
        )
    filters = kernel.shape[out_axis]
    for name, tensor in (("gamma", gamma), ("beta", beta), ("moving_mean", moving_mean),
                         ("moving_variance", moving_variance)):
        if tensor.shape.rank != 1 or tensor.shape[0] != filters:
            raise ValueError(
                f"{name} must have shape ({filters},) to match the kernel's {filters} filters, "
                f"got {tensor.shape}"
            )
    if x.shape[0] == 0:
        raise ValueError(f"x has an empty batch: shape {x.shape}")


def fused_conv_bn_leaky_relu(
    x, kernel, gamma, beta, moving_mean, moving_variance,
    *, strides=1, padding="same", epsilon=1e-3, negative_slope=0.3,
    training=False, transpose=False, impl="auto",
):
    """``leaky_relu(batch_norm(conv(x, kernel)))`` as one op.

    ``x`` in float32, or in bfloat16/float16 for mixed precision: then y has x's dtype, the
    other arguments are cast to float32 and the statistics are float32, as Keras' layers
    compute under a "mixed_*" policy (the native op has bf16 kernels on CPUs with
    AVX512-BF16; otherwise, and for float16, the composite ops run).

    ``kernel`` is laid out as Keras stores it: ``(kh, kw, in, out)`` for a convolution,
    ``(kh, kw, out, in)`` for a transposed one. In training the batch statistics are used
    and returned (biased variance, as ``keras.ops.moments``); in inference the moving ones
    are. The returned statistics carry no gradient: they feed moving averages only.
    """
    x = tf.convert_to_tensor(x)
    mixed = x.dtype in HALF_DTYPES
    kernel, gamma, beta, moving_mean, moving_variance = (
        tf.cast(t, tf.float32) if mixed else tf.convert_to_tensor(t, dtype=x.dtype)
        for t in (kernel, gamma, beta, moving_mean, moving_variance)
    )
    strides = geometry.normalize_pair(strides, "strides")
    padding = geometry.normalize_padding(padding)
    geometry.check_op_params(epsilon, negative_slope)
    _check_args(x, kernel, gamma, beta, moving_mean, moving_variance, transpose)
    training = bool(training)
    if resolve_impl(impl, x.dtype) == "tf":
        composite = _fallback.mixed_precision if mixed else _fallback.fused_conv_bn_leaky_relu
        return FusedOutput(*composite(
            x, kernel, gamma, beta, moving_mean, moving_variance,
            strides=strides, padding=padding, epsilon=epsilon,
            negative_slope=negative_slope, training=training, transpose=transpose,
        ))
    library = _loader.load()
    op = (library.pyae_fused_conv_bn_leaky_relu_bf16 if mixed
          else library.pyae_fused_conv_bn_leaky_relu)
    y, mean, variance = op(
        x, kernel, gamma, beta, moving_mean, moving_variance,
        strides=list(strides), padding=padding.upper(), epsilon=float(epsilon),
        negative_slope=float(negative_slope), is_training=training, transpose=transpose,
    )
    return FusedOutput(y, tf.stop_gradient(mean), tf.stop_gradient(variance))
