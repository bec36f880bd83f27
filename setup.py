"""Installs maskformer_fast (with kernels/ as maskformer_fast.kernels) and builds the C++ matcher.

Build without isolation so the extension compiles against the torch already installed:
    pip install --no-build-isolation -e .
"""
import os
import sys

from setuptools import setup, find_packages


def ext_modules():
    # torch is imported here, not at module level, so that metadata-only commands work.
    import torch
    from torch.utils.cpp_extension import CppExtension

    sources = ["csrc/hungarian.cpp", "csrc/bindings.cpp"]
    # MASKFORMER_FAST_NO_EXT=1: Python only (benchmarks/gpu_suite.sh installs in seconds, then builds
    # the extension as its own bounded step with `setup.py build_ext --inplace`)
    if os.environ.get("MASKFORMER_FAST_NO_EXT") == "1" or not all(os.path.exists(s) for s in sources):
        return []
    # rpath to torch's libraries: `import maskformer_fast._C` then works before `import torch`.
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    return [CppExtension(
        "maskformer_fast._C", sources, include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=["-O3", "-std=c++17"], extra_link_args=[f"-Wl,-rpath,{torch_lib}"],
    )]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExtension(BuildExtension):
        """Installs without the C++ matcher when it cannot be built: maskformer_fast.matching
        then falls back to scipy and says so. MASKFORMER_FAST_REQUIRE_EXT=1 makes failure fatal."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # no compiler, or it failed: any error of the toolchain
                if os.environ.get("MASKFORMER_FAST_REQUIRE_EXT") == "1":
                    raise
                print(f"WARNING: building maskformer_fast._C failed ({type(e).__name__}: {e}); "
                      "the C++ matcher is unavailable", file=sys.stderr)
                self.extensions = []  # nothing to copy into place

    return {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


setup(
    name="maskformer_fast",
    version="0.1.0",
    description="MaskFormer with fused Triton kernels and an exact batched matcher",
    packages=find_packages(include=["maskformer_fast", "maskformer_fast.*"]) + ["maskformer_fast.kernels"],
    package_dir={"maskformer_fast.kernels": "kernels"},
    # class names and palettes of the datasets (maskformer_fast.visualize reads them with importlib.resources)
    package_data={"maskformer_fast": ["data/*.json"]},
    python_requires=">=3.10",
    # pip install maskformer-fast[onnx]: mf.export_onnx and predict --backend onnxruntime
    extras_require={"onnx": ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2"]},
    ext_modules=ext_modules(),
    cmdclass=cmdclass(),
)
