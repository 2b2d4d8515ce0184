"""Finds, checks and loads the native TensorFlow op library.

The check happens *before* ``tf.load_op_library``: a library built against another
TensorFlow can crash the process on load, so a mismatch is reported and never loaded.
"""
import ctypes
import json
import os
import pathlib
import threading
import warnings

import tensorflow as tf

FORCE_FALLBACK_ENV = "PYAE_FORCE_FALLBACK"
_HERE = pathlib.Path(__file__).resolve().parent
LIBRARY_PATH = _HERE / "_pyae_tf_ops.so"
BUILD_INFO_PATH = _HERE / "_build_info.json"

_lock = threading.Lock()
_state = {"loaded": False, "library": None, "reason": None}


def read_build_info():
    """What CMake recorded at build time, or an empty dict if nothing was built."""
    if not BUILD_INFO_PATH.exists():
        return {}
    try:
        return json.loads(BUILD_INFO_PATH.read_text())
    except (OSError, ValueError) as err:
        return {"tf_ops_reason": f"{BUILD_INFO_PATH.name} is unreadable ({err})"}


def _minor(version):
    return ".".join(str(version).split(".")[:2])


def mismatch_reason(recorded, running_version, running_abi):
    """One sentence explaining why the recorded build cannot run here, or None."""
    built_version = recorded.get("tf_version")
    if built_version is None:
        return "the op library was not built (TensorFlow was not importable at build time)"
    if _minor(built_version) != _minor(running_version):
        return (
            f"the op library was built for TensorFlow {built_version} but TensorFlow "
            f"{running_version} is running; reinstall pyae (pip install --force-reinstall .) "
            "to rebuild it"
        )
    built_abi = recorded.get("tf_cxx11_abi")
    if built_abi is not None and int(built_abi) != int(running_abi):
        return (
            f"the op library was built with _GLIBCXX_USE_CXX11_ABI={built_abi} but the running "
            f"TensorFlow uses {running_abi}; reinstall pyae to rebuild it"
        )
    return None


def _find_problem():
    if os.environ.get(FORCE_FALLBACK_ENV, "") not in ("", "0"):
        return f"{FORCE_FALLBACK_ENV} is set"
    if not LIBRARY_PATH.exists():
        recorded = read_build_info()
        why = recorded.get("tf_ops_reason", "no build information was recorded")
        return f"the native op library is not installed ({why})"
    return mismatch_reason(
        read_build_info(), tf.__version__, tf.sysconfig.CXX11_ABI_FLAG
    )


def load():
    """Load the op library once; return it, or None after one warning if it can't be used."""
    with _lock:
        if _state["loaded"]:
            return _state["library"]
        _state["loaded"] = True
        problem = _find_problem()
        if problem is None:
            try:
                _state["library"] = tf.load_op_library(str(LIBRARY_PATH))
            except (tf.errors.NotFoundError, OSError) as err:
                problem = f"loading {LIBRARY_PATH.name} failed: {err}"
        _state["reason"] = problem
        if problem is not None and os.environ.get(FORCE_FALLBACK_ENV, "") in ("", "0"):
            warnings.warn(
                f"pyae: using the pure-TensorFlow fallback because {problem}.",
                RuntimeWarning,
                stacklevel=2,
            )
        return _state["library"]


def fallback_reason():
    load()
    return _state["reason"]


ISA_ENV = "PYAE_ISA"
ISA_NAMES = ("avx512", "avx2", "generic")
_ISA_INFO_FIELDS = ("active", "reason", "error", "built", "supported")


def _isa_functions():
    """The op library's path functions, through ctypes (the library TF loaded: dlopen returns
    the same handle), or None without the library."""
    if load() is None:
        return None
    if "isa" not in _state:
        library = ctypes.CDLL(str(LIBRARY_PATH))
        for name, argtypes in (("pyae_select_isa", [ctypes.c_char_p, ctypes.c_char_p,
                                                    ctypes.c_int64]),
                               ("pyae_isa_info", [ctypes.c_char_p, ctypes.c_int64]),
                               ("pyae_bf16_info", [ctypes.c_char_p, ctypes.c_int64])):
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = ctypes.c_int64
        _state["isa"] = library
    return _state["isa"]


def _call_text(function, *args):
    size = 512
    while True:
        out = ctypes.create_string_buffer(size)
        needed = function(*args, out, size)
        if needed <= size:
            return out.value.decode()
        size = needed


def isa_info():
    """The native kernels' path: ``active``, ``reason``, ``error`` (what stops the kernels,
    "" if nothing), ``built`` and ``supported`` (lists, best first); None without the
    library."""
    functions = _isa_functions()
    if functions is None:
        return None
    fields = dict(zip(_ISA_INFO_FIELDS, _call_text(functions.pyae_isa_info).split("\n")))
    for key in ("built", "supported"):
        fields[key] = [name for name in fields[key].split(",") if name]
    return fields


def bf16_info():
    """The bf16 kernels (mixed precision): ``path`` ("avx512bf16", or "none" where this build,
    the CPU or the float32 path in use rules them out) and ``reason``; None without the
    library. They follow the float32 path: forcing avx2 or generic turns them off."""
    functions = _isa_functions()
    if functions is None:
        return None
    path, _, reason = _call_text(functions.pyae_bf16_info).partition("\n")
    return {"path": path, "reason": reason}


def set_isa(name):
    """Run the native kernels on path ``name`` ("avx512", "avx2", "generic", or "auto" for the
    best this CPU runs). Raises ValueError naming the value if this build or CPU lacks it."""
    if not isinstance(name, str):
        raise ValueError(f"isa must be a string, one of {ISA_NAMES + ('auto',)}. "
                         f"Received: isa={name!r}")
    functions = _isa_functions()
    if functions is None:
        raise ValueError(f"isa={name!r} needs the native op library, which is not in use: "
                         f"{fallback_reason()}")
    error = _call_text(functions.pyae_select_isa, name.encode())
    if error:
        raise ValueError(f"{error}. Received: isa={name!r}")
