"""``build_info()``: what was built, against what, and why anything was not."""
import tensorflow as tf

from pyae.ops import _api, _loader


def _native_module_info():
    try:
        from pyae import _native  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        return {"available": False, "reason": str(err)}
    info = dict(_native.build_info())
    info["available"] = True
    return info


def build_info():
    """A dict describing the native parts of this installation.

    Keys: ``tf_ops`` (the TF op library: built, loaded, the TF version and ABI it was built
    for, the running ones, and the reason it is not used, if any), ``isa`` (the CPU kernels'
    paths: ``built`` and ``supported`` by this CPU, best first, the ``active`` one, the
    ``reason`` it was picked, the ``error`` that stops the kernels, "" if none, and what
    ``impl="auto"`` picks on it and why as ``auto``),
    ``bf16`` (mixed precision: the bf16 kernels' ``path``, "avx512bf16" or "none", the
    ``reason``, and what ``impl="auto"`` picks in bfloat16 and why as ``auto``),
    ``native_module`` (the pybind11 module ``pyae._native``: its kernels and CUDA support),
    ``cuda`` and ``compile_flags`` as recorded by CMake.
    """
    recorded = _loader.read_build_info()
    library = _loader.load()
    isa = _loader.isa_info()
    if isa is None:
        built = recorded.get("isas_built")
        isa = {"built": built.split(",") if built else [], "supported": None, "active": None,
               "reason": "the native op library is not in use", "error": ""}
    if not isa["error"]:
        isa["auto"] = dict(zip(("impl", "reason"), _api.explain_impl("auto")))
    bf16 = _loader.bf16_info() or {"path": "none", "reason": "the native op library is not in use"}
    if not isa["error"]:
        bf16["auto"] = dict(zip(("impl", "reason"), _api.explain_impl("auto", tf.bfloat16)))
    return {
        "isa": isa,
        "bf16": bf16,
        "tf_ops": {
            "built": _loader.LIBRARY_PATH.exists(),
            "loaded": library is not None,
            "built_for_tf": recorded.get("tf_version"),
            "built_cxx11_abi": recorded.get("tf_cxx11_abi"),
            "running_tf": tf.__version__,
            "running_cxx11_abi": tf.sysconfig.CXX11_ABI_FLAG,
            "reason": _loader.fallback_reason(),
        },
        "native_module": _native_module_info(),
        "cuda": recorded.get("cuda", {"built": False, "reason": "no build information recorded"}),
        "compile_flags": recorded.get("compile_flags"),
        "build_type": recorded.get("build_type"),
    }
