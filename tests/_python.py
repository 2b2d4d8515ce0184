"""Subprocesses of the tests run the pyae this process imported, not the source tree they
happen to start in (CI tests an installed pyae from a clone whose pyae/ has no native parts)."""
import os

import pyae


def same_pyae_env(**overrides):
    """os.environ with PYTHONPATH set to the folder this process imported pyae from."""
    package_root = os.path.dirname(os.path.dirname(pyae.__file__))
    return dict(os.environ, PYTHONPATH=package_root, **overrides)


