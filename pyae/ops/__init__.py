"""The fused Conv + BatchNorm + LeakyReLU op and the output op (conv transpose + bias +
activation): native when built, pure TF otherwise."""
from pyae.ops import _gradients  # noqa: F401  registers the native gradient by op name
from pyae.ops._api import (HALF_DTYPES, IMPLS, SLOWER_THAN_TF_PATHS, FusedOutput, explain_impl,
                           fused_conv_bn_leaky_relu, in_xla_context, resolve_impl)
from pyae.ops._build import build_info
from pyae.ops._loader import (FORCE_FALLBACK_ENV, ISA_ENV, ISA_NAMES, bf16_info, isa_info, load,
                              set_isa)
from pyae.ops._output import (MAX_AUTO_OUT_CHANNELS, OUTPUT_ACTIVATIONS, conv_transpose_output,
                              explain_output_impl)

__all__ = [
    "FORCE_FALLBACK_ENV",
    "IMPLS",
    "MAX_AUTO_OUT_CHANNELS",
    "OUTPUT_ACTIVATIONS",
    "ISA_ENV",
    "ISA_NAMES",
    "SLOWER_THAN_TF_PATHS",
    "FusedOutput",
    "HALF_DTYPES",
    "bf16_info",
    "build_info",
    "conv_transpose_output",
    "explain_impl",
    "explain_output_impl",
    "fused_conv_bn_leaky_relu",
    "in_xla_context",
    "isa_info",
    "load",
    "native_available",
    "resolve_impl",
    "set_isa",
]


def native_available():
    """True when the native TF op library is loaded and usable in this process."""
    return load() is not None
