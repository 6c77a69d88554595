"""GPU suite: the CUDA and Triton backends against torch.matmul (float32,
TF32 off) on the same shapes, hard and soft, fwd and fwd+bwd, plus the half
precision hard product against its float32 self. Skipped without a GPU; the
stored runs are in benchmarks/results/ with the device name.

Default sizes 1024^3, 4096^3 and the thin flow shapes; --bench-large adds 8192^3.
"""
from __future__ import annotations

import pytest
import torch

import vico_flow
from vico_flow import _backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = {
    "1024^3": ((1024, 1024), (1024, 1024)),
    "4096^3": ((4096, 4096), (4096, 4096)),
    "8192^3": ((8192, 8192), (8192, 8192)),
    "thin 4x4096x4096": ((4, 4096), (4096, 4096)),
    "batched 2560x[4x16x16]": ((2560, 4, 16), (2560, 16, 16)),
}
LARGE = {"8192^3"}


def _backends_here():
    names = ["triton"]
    if getattr(_backends.compiled_extension(), "cuda_built", False):
        names.insert(0, "cuda")
    return names


def _timed(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("product", ["hard", "soft"])
@pytest.mark.parametrize("impl", ["cuda", "triton", "torch.matmul"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gpu_product(benchmark, bench_large, shape, product, phase, impl):
    if shape in LARGE and not bench_large:
        pytest.skip("--bench-large")
    if impl != "torch.matmul" and impl not in _backends_here():
        pytest.skip(f"backend {impl} not built")
    g = torch.Generator(device="cuda").manual_seed(0)
    A = torch.rand(SHAPES[shape][0], device="cuda", generator=g).requires_grad_(phase == "fwd+bwd")
    B = torch.rand(SHAPES[shape][1], device="cuda", generator=g).requires_grad_(phase == "fwd+bwd")
    if impl == "torch.matmul":
        f = torch.matmul
    elif product == "hard":
        f = lambda a, b: vico_flow.minmax_matmul(a, b, backend=impl)  # noqa: E731
    else:
        f = lambda a, b: vico_flow.soft_minmax_matmul(a, b, 0.01, backend=impl)  # noqa: E731

    def step():
        if phase == "fwd":
            with torch.no_grad():
                return f(A, B)
        A.grad = B.grad = None
        out = f(A, B)
        out.backward(torch.ones_like(out))
        return out

    benchmark.group = f"gpu {torch.cuda.get_device_name()} {shape} {product} {phase}"
    benchmark.extra_info["impl"] = "kernel" if impl == _backends_here()[0] else impl
    benchmark.pedantic(_timed(step), rounds=5, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["cuda", "triton"])
def test_gpu_half_hard(benchmark, impl, dtype):
    if impl not in _backends_here():
        pytest.skip(f"backend {impl} not built")
    A = torch.rand(4096, 4096, device="cuda").to(dtype)
    B = torch.rand(4096, 4096, device="cuda").to(dtype)
    benchmark.group = f"gpu {torch.cuda.get_device_name()} 4096^3 hard fwd by dtype ({impl})"
    benchmark.extra_info["impl"] = "baseline" if dtype == torch.float32 else str(dtype)  # ratios against float32
    with torch.no_grad():
        benchmark.pedantic(_timed(lambda: vico_flow.minmax_matmul(A, B, backend=impl)), rounds=5, iterations=1,
                           warmup_rounds=2)
