"""Shape arithmetic shared by the native op, the fallback and the layers.

Mirrors TensorFlow's SAME/VALID rules (and Keras' Conv2DTranspose output length) so the
fused op produces exactly the shapes the Keras stack would.
"""

PADDINGS = ("same", "valid")


def normalize_pair(value, name):
    """Accept an int or a pair of ints; return a tuple of two positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def normalize_padding(padding):
    padding_lower = str(padding).lower()
    if padding_lower not in PADDINGS:
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    return padding_lower


def conv_output_length(length, kernel, stride, padding):
    """Output length of a Conv2D along one axis (TensorFlow semantics)."""
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return max(-(-(length - kernel + 1) // stride), 0)


def conv_transpose_output_length(length, kernel, stride, padding):
    """Output length of a Conv2DTranspose along one axis (Keras, output_padding=None)."""
    if length is None:
        return None
    if padding == "same":
        return length * stride
    return length * stride + max(kernel - stride, 0)
