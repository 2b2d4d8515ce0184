"""The fused op's kernel contract on the Python side: shapes and parameter rules.

The contract lives in C++ (``ops/kernels/conv_geometry.h``), shared by the CPU and CUDA
kernels, the TF op and the bindings. Python asks it through ``pyae._native`` for concrete
values, so a layer reports exactly the shape and the error the kernels will. Two cases keep
the same arithmetic in Python, and ``tests/test_contract.py`` checks it against the native
module value by value:

* a length that is a symbolic tensor (the fallback's dynamic batch shapes), which only TF
  arithmetic can follow;
* an installation without ``pyae._native`` (the pure-TF fallback), where nothing else can
  answer.
"""
import functools
import importlib
import numbers

PADDINGS = ("same", "valid")


@functools.lru_cache(maxsize=1)
def _native():
    """``pyae._native``, or None when this installation has none that answers for the
    contract (none built, or an in-place build older than these entry points)."""
    try:
        module = importlib.import_module("pyae._native")
    except ImportError:
        return None
    has_contract = hasattr(module, "output_length") and hasattr(module, "check_op_params")
    return module if has_contract else None


def normalize_pair(value, name):
    """Accept an int or a pair of ints; return a tuple of two positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1. Received: {name}={value!r}")
    return pair


def normalize_padding(padding):
    padding_lower = str(padding).lower()
    if padding_lower not in PADDINGS:
        raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
    return padding_lower


def _is_concrete(*values):
    return all(isinstance(v, numbers.Integral) for v in values)


def output_length(length, kernel, stride, padding, transpose):
    """Length of the fused op's output along one axis; None stays None."""
    if length is None:
        return None
    native = _native()
    if native is not None and _is_concrete(length, kernel, stride):
        return native.output_length(int(length), int(kernel), int(stride), padding, transpose)
    return python_output_length(length, kernel, stride, padding, transpose)


def python_output_length(length, kernel, stride, padding, transpose):
    """The contract's arithmetic on ints or symbolic tensors (TensorFlow SAME/VALID rules;
    Keras' Conv2DTranspose with output_padding=None)."""
    if transpose:
        if padding == "same":
            return length * stride
        return length * stride + max(kernel - stride, 0)
    if padding == "same":
        return -(-length // stride)
    return max(-(-(length - kernel + 1) // stride), 0)


def conv_output_length(length, kernel, stride, padding):
    """Output length of a Conv2D along one axis (TensorFlow semantics)."""
    return output_length(length, kernel, stride, padding, transpose=False)


def conv_transpose_output_length(length, kernel, stride, padding):
    """Output length of a Conv2DTranspose along one axis (Keras, output_padding=None)."""
    return output_length(length, kernel, stride, padding, transpose=True)


def check_op_params(epsilon, negative_slope):
    """Raise the kernels' own ValueError unless epsilon > 0 and negative_slope >= 0."""
    for name, value in (("epsilon", epsilon), ("negative_slope", negative_slope)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number. Received: {name}={value!r}")
    native = _native()
    if native is not None:
        message = native.check_op_params(float(epsilon), float(negative_slope))
    else:
        message = python_check_op_params(epsilon, negative_slope)
    if message:
        raise ValueError(message)


def python_check_op_params(epsilon, negative_slope):
    """The contract's rule without the native module: "" or the same message."""
    if not epsilon > 0:
        return f"epsilon must be > 0. Received: epsilon={float(epsilon)!r}"
    if not negative_slope >= 0:
        return f"negative_slope must be >= 0. Received: negative_slope={float(negative_slope)!r}"
    return ""
