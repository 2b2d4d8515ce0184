"""Finds and imports ``pyae._native`` without importing the ``pyae`` package.

The package imports TensorFlow; the CUDA tests and ``bench/gpu/check_and_time.py`` run on a
GPU machine that has PyTorch but no TensorFlow, against a module built with
``-DPYAE_WITH_TF=OFF``. The module's folder comes from ``PYAE_NATIVE_DIR`` (bench/gpu/run.sh
sets it to its build output), else from wherever ``pyae`` would be imported from.
"""
import glob
import importlib.machinery
import importlib.util
import os

NATIVE_DIR_ENV = "PYAE_NATIVE_DIR"


def native_path(native_dir=None):
    """Path of the _native extension, or None when none is built."""
    directory = native_dir or os.environ.get(NATIVE_DIR_ENV)
    if not directory:
        spec = importlib.util.find_spec("pyae")  # locates the package without running it
        if spec is None or not spec.submodule_search_locations:
            return None
        directory = spec.submodule_search_locations[0]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        matches = sorted(glob.glob(os.path.join(directory, "_native" + suffix)))
        if matches:
            return matches[0]
    return None


def load_native(native_dir=None):
    """The _native extension module, or None when none is built (the pure-TF install)."""
    path = native_path(native_dir)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("_native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
