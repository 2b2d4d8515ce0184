"""pyae: convolutional autoencoders on a fused Conv + BatchNorm + LeakyReLU op.

``import pyae`` loads the op library (so SavedModels holding the op load; the version check
runs first and a mismatch only warns and falls back) and registers pyae's Keras classes (so
``.keras`` files holding fused layers or an Autoencoder load), like any Keras package. The
``pyae`` command is the exception: it parses its arguments first and imports TensorFlow only
for a command that needs it, so ``pyae --help`` or a usage error answers at once.
"""
import sys
from pathlib import Path

__version__ = "0.1.0"

COMMAND_NAMES = ("pyae", "pyae.exe")


def _starting_the_pyae_command():
    """True while the ``pyae`` console script or ``python -m pyae`` imports this package."""
    first = sys.argv[0] if sys.argv else ""
    if Path(first).name in COMMAND_NAMES:
        return True
    if first == "-m":  # Python sets argv[0] to "-m" while it locates the module it runs
        args = getattr(sys, "orig_argv", [])
        return any(flag == "-m" and module.split(".")[0] == "pyae"
                   for flag, module in zip(args, args[1:]))
    return False


if not _starting_the_pyae_command():
    from pyae import layers, models, ops  # noqa: F401  layers and models register with Keras

    ops.load()
