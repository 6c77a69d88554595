"""Build of vico_flow's compiled kernels.

Needs torch at build time: install torch==2.13.0 first, then
`pip install --no-build-isolation -e .` (build isolation would fetch another
torch). The CPU kernels are always built; the CUDA kernels (csrc/cuda) join the same
extension only where torch has CUDA and nvcc is present.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "vico-flow builds against an installed torch: run `pip install torch==2.13.0` "
        "then `pip install --no-build-isolation -e .`"
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


# torch 2.13's headers are C++20.
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
sources = rel(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
common = dict(name="vico_flow._C", include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])

# The CUDA kernels join the extension only where they can be built and run:
# a CUDA build of torch and an nvcc (CUDA_HOME). VICO_FLOW_NO_CUDA=1 opts out.
with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not os.environ.get("VICO_FLOW_NO_CUDA")
if with_cuda:
    sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
    ext = CUDAExtension(
        sources=sources,
        define_macros=[("VICO_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags + ["-DVICO_WITH_CUDA"], "nvcc": ["-O3", "-std=c++20", "-DVICO_WITH_CUDA"]},
        **common,
    )
else:
    ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **common)
ext_modules = [ext]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
