"""GPU suite: the CUDA and Triton backends against torch.matmul (float32,
TF32 off) on the same shapes, hard and soft, fwd and fwd+bwd, plus the half
precision hard product against its float32 self. Skipped without a GPU; the
stored runs are in benchmarks/results/ with the device name.

Default sizes 1024^3, 4096^3 and the thin flow shapes; --bench-large adds 8192^3.
Also the grouped ST-Flow of a VideoCrafter2-sized graph on the GPU.
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


_VC2_GPU = {}


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("method", ["soft", "hard"])
def test_gpu_videocrafter2_flow(benchmark, method, phase):
    """Grouped ST-Flow of a VideoCrafter2-sized graph (16 frames of 40x64, 77 text
    tokens, cross + temporal layers; 4 sources) on the GPU, "auto" backend."""
    from vico_flow import st_flow
    from vico_flow.synthetic import unet3d_graph

    if "graph" not in _VC2_GPU:
        _VC2_GPU["graph"] = unet3d_graph().to("cuda")
    graph = _VC2_GPU["graph"]
    attn = [l.attn for l in graph.layers if hasattr(l, "attn")]
    for a in attn:
        a.requires_grad_(phase == "fwd+bwd")

    def step():
        for a in attn:
            a.grad = None
        with torch.set_grad_enabled(phase == "fwd+bwd"):
            r = st_flow(graph, [1, 2, 5, 7], mode=method)
            if phase == "fwd+bwd":
                (r.values.sum() + r.heatmaps.mean()).backward()
        return r

    benchmark.group = f"gpu {torch.cuda.get_device_name()} VC2 16x40x64 grouped {method}"
    benchmark.extra_info["impl"] = phase
    benchmark.pedantic(_timed(step), rounds=5, iterations=1, warmup_rounds=2)
    attn_mb = sum(a.numel() * a.element_size() for a in attn) / 2**20
    benchmark.extra_info["derived"] = f"{phase}: captured attention {attn_mb:.0f} MB on the GPU"
