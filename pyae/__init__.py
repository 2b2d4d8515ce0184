"""pyae: convolutional autoencoders on a fused Conv + BatchNorm + LeakyReLU op."""
from pyae import ops

__version__ = "0.1.0"

# Loading the op library here registers the op, so SavedModels that contain it load after
# ``import pyae``. The version check runs first; a mismatch only warns and falls back.
ops.load()
