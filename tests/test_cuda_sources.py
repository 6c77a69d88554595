"""The CUDA sources compile: every .cu file with nvcc for sm_80 and sm_90
(warnings as errors, torch's extension flags), and the torch-side wrapper with
the host compiler. Runs on machines without a GPU; skips only when nvcc is
absent."""
import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/cuda/*.cu missing"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (no CUDA toolkit)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_cu_compiles(path, arch, tmp_path):
    # torch's own nvcc flags too (as setup.py's CUDAExtension passes them): they
    # remove the implicit __half / __nv_bfloat16 conversions, which a plain
    # nvcc build would accept.
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    cmd = [NVCC, "-c", "-std=c++20", f"-arch={arch}", *COMMON_NVCC_FLAGS, "-I", os.path.join(ROOT, "csrc"),
           "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Werror", "-o", str(tmp_path / "k.o"), path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"nvcc failed for {os.path.basename(path)} ({arch}):\n{r.stderr[-4000:]}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (no CUDA toolkit)")
def test_cuda_wrapper_compiles(tmp_path):
    # Syntax check of ops_cuda.cpp against torch's headers. The CPU wheel ships
    # the c10/cuda headers but not the build-generated cuda_cmake_macros.h: a
    # one-line stand-in takes its place.
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Werror", "-DVICO_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
           f"-I{tmp_path}", *[f"-I{p}" for p in include_paths()], f"-I{sysconfig.get_paths()['include']}",
           f"-I{_cuda_include()}", f"-I{os.path.join(ROOT, 'csrc')}", os.path.join(ROOT, "csrc", "cuda", "ops_cuda.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


def _cuda_include():
    """The include folder of the CUDA toolkit nvcc belongs to (nvcc on PATH may
    be a wrapper script, so several places are tried)."""
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", os.path.dirname(os.path.dirname(os.path.realpath(NVCC)))]
    with open(NVCC, "rb") as f:  # a wrapper like `exec /usr/local/cuda-13.0/bin/nvcc "$@"`
        head = f.read(4096)
    if head.startswith(b"#!"):
        for word in head.decode(errors="ignore").split():
            if word.endswith("/bin/nvcc"):
                candidates.append(os.path.dirname(os.path.dirname(word)))
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return os.path.join(root, "include")
    pytest.fail(f"no CUDA include folder with cuda_runtime.h among {candidates}")
