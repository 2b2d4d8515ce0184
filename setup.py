"""Build pyae's native parts with CMake (the pybind11 cmake_example pattern).

CMake builds whatever it can find (see CMakeLists.txt). If the native build fails and
PYAE_REQUIRE_NATIVE is not set, pyae installs without it and runs on its pure-TF fallback.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_NATIVE_ENV = "PYAE_REQUIRE_NATIVE"


class CMakeExtension(Extension):
    def __init__(self, name, sourcedir=""):
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        package_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DPYAE_OUTPUT_DIR={package_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
        ] + os.environ.get("CMAKE_ARGS", "").split()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        try:
            subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
            subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            if os.environ.get(REQUIRE_NATIVE_ENV, "") not in ("", "0"):
                raise
            print(f"pyae: the native build failed ({err}); installing the pure-TF fallback only.",
                  file=sys.stderr)

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        # `build_ext --inplace`: setuptools copies the extension alone, but CMake also wrote the
        # TF op library and the build record into the package's ops/ folder.
        built_ops = Path(self.build_lib) / "pyae" / "ops"
        source_ops = Path(self.get_finalized_command("build_py").get_package_dir("pyae")) / "ops"
        for built in built_ops.glob("*"):
            if built.suffix in (".so", ".json"):
                shutil.copy2(built, source_ops / built.name)


setup(
    ext_modules=[CMakeExtension("pyae._native")],
    cmdclass={"build_ext": CMakeBuild},
)
