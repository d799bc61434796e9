"""Build the optional CUDA extension `sslfast._C` from csrc/, and nothing else.

The extension is built only when all of these hold:
  * SSLFAST_SKIP_CUDA_BUILD is not "1";
  * torch can be imported in the build environment and was built with CUDA
    (use `pip install --no-build-isolation .` so the build sees your torch);
  * a CUDA toolkit is found (CUDA_HOME / nvcc), or SSLFAST_BUILD_CUDA=1 insists.
Otherwise this is a plain pure-Python install. It never probes a GPU to choose dependencies and
never downloads anything. Architectures come from TORCH_CUDA_ARCH_LIST (default "9.0" for H100/H200).
"""
import glob
import os

from setuptools import setup


def _cuda_extension_or_reason():
    if os.environ.get("SSLFAST_SKIP_CUDA_BUILD") == "1":
        return None, "SSLFAST_SKIP_CUDA_BUILD=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:  # torch absent (e.g. isolated build env) or broken
        return None, f"torch not importable at build time ({type(exc).__name__})"
    forced = os.environ.get("SSLFAST_BUILD_CUDA") == "1"
    if torch.version.cuda is None and not forced:
        return None, "torch was built without CUDA"
    if CUDA_HOME is None and not forced:
        return None, "no CUDA toolkit found (set CUDA_HOME)"
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    ext = CUDAExtension(
        name="sslfast._C",
        sources=sources,
        # No -std flag: torch's BuildExtension passes the standard its headers need; forcing
        # C++17 breaks the build against torch 2.14, whose headers need C++20.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return (ext, BuildExtension.with_options(use_ninja=True)), None


_built, _reason = _cuda_extension_or_reason()
if _built is None:
    print(f"sslfast: skipping the CUDA extension: {_reason}")
    setup()
else:
    ext, build_ext = _built
    setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
