"""The Triton and CUDA backends against the reference: bit-identical hard
products (winners included), soft products within tolerance and bounds,
gradients. Triton runs everywhere (through its interpreter on CPU tensors when
no GPU is present, so sizes stay small); the CUDA backend needs a GPU."""
import math

import pytest
import torch

import vico_flow
from vico_flow import _backends, reference

from .helpers import DTYPES, rand

HAS_GPU = torch.cuda.is_available()
CUDA_BUILT = bool(getattr(_backends.compiled_extension(), "cuda_built", False))
PARAMS = [
    pytest.param(("triton", "cuda" if HAS_GPU else "cpu"), id="triton"),
    pytest.param(
        ("cuda", "cuda"),
        id="cuda",
        marks=pytest.mark.skipif(not (HAS_GPU and CUDA_BUILT), reason="needs a CUDA GPU and the CUDA build"),
    ),
]
SHAPES = [(1, 1, 1), (5, 7, 3), (17, 33, 20), (40, 9, 35), (3, 0, 4), (0, 5, 6)]


@pytest.fixture(params=PARAMS)
def backend(request):
    return request.param


def _on(x, device):
    return x.to(device)


@pytest.mark.parametrize("kind", ["uniform", "ties", "inf"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_hard_bit_identical_with_winners(backend, m, k, n, kind):
    name, dev = backend
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    A, B = rand(2, m, k, kind=kind, gen=g), rand(2, k, n, kind=kind, gen=g)
    C, idx = vico_flow.minmax_matmul_with_argmax(_on(A, dev), _on(B, dev), backend=name)
    C_ref, idx_ref = reference.minmax_matmul_argmax(A, B)
    assert torch.equal(C.cpu(), C_ref) and torch.equal(idx.cpu().long(), idx_ref)
    assert torch.equal(vico_flow.minmax_matmul(_on(A, dev), _on(B, dev), backend=name).cpu(), C_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_dtypes_and_strides(backend, dtype):
    name, dev = backend
    g = torch.Generator().manual_seed(1)
    A = rand(3, 30, 20, dtype=dtype, kind="ties", gen=g).transpose(1, 2)  # [3, 20, 30], strided
    B = rand(30, 50, dtype=dtype, gen=g)[:, ::2]  # [30, 25], strided, broadcast over batch
    C = vico_flow.minmax_matmul(_on(A, dev), _on(B, dev), backend=name)
    assert C.dtype == dtype and torch.equal(C.cpu(), reference.minmax_matmul(A, B))


@pytest.mark.parametrize("tau", [0.01, 0.3])
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (17, 33, 20), (3, 0, 4)])
def test_soft_matches_reference(backend, m, k, n, tau):
    name, dev = backend
    g = torch.Generator().manual_seed(2)
    for kind in ("uniform", "wide", "inf"):
        A, B = rand(2, m, k, kind=kind, gen=g), rand(2, k, n, kind=kind, gen=g)
        S = vico_flow.soft_minmax_matmul(_on(A, dev), _on(B, dev), tau, backend=name).cpu()
        truth = reference.soft_minmax_matmul(A.double(), B.double(), tau)
        torch.testing.assert_close(S.double(), truth, rtol=1e-5, atol=1e-6)
        lo, hi = reference.soft_minmax_bounds(reference.minmax_matmul(A, B).double(), tau, k)
        ok = ((S.double() >= lo - 1e-6) | (S.double() == lo)) & ((S.double() <= hi + 1e-6) | (S.double() == hi))
        assert bool(ok.all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_dtypes(backend, dtype):
    name, dev = backend
    g = torch.Generator().manual_seed(3)
    A, B = rand(2, 9, 21, dtype=dtype, gen=g), rand(21, 11, dtype=dtype, gen=g)
    S = vico_flow.soft_minmax_matmul(_on(A, dev), _on(B, dev), 0.05, backend=name).cpu()
    assert S.dtype == dtype
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(S.double(), reference.soft_minmax_matmul(A.double(), B.double(), 0.05), rtol=tol, atol=tol)


def _grads(A, B, up, fn, dev):
    A = _on(A, dev).detach().clone().requires_grad_()
    B = _on(B, dev).detach().clone().requires_grad_()
    fn(A, B).backward(_on(up, dev))
    return A.grad.cpu(), B.grad.cpu()


@pytest.mark.parametrize("kind", ["uniform", "ties", "inf"])
def test_hard_gradient_routing(backend, kind):
    name, dev = backend
    g = torch.Generator().manual_seed(4)
    A, B = rand(2, 13, 19, dtype=torch.float64, kind=kind, gen=g), rand(2, 19, 17, dtype=torch.float64, kind=kind, gen=g)
    up = torch.randint(-3, 4, (2, 13, 17), generator=g).double()  # integer sums are exact in any order
    got = _grads(A, B, up, lambda a, b: vico_flow.minmax_matmul(a, b, backend=name), dev)
    want = _grads(A, B, up, lambda a, b: vico_flow.minmax_matmul(a, b, backend="reference"), "cpu")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("tau", [0.02, 0.3])
def test_soft_gradients(backend, tau):
    name, dev = backend
    g = torch.Generator().manual_seed(5)
    A, B = rand(2, 11, 23, gen=g), rand(2, 23, 13, gen=g)
    up = torch.randn(2, 11, 13, generator=g)
    got = _grads(A, B, up, lambda a, b: vico_flow.soft_minmax_matmul(a, b, tau, backend=name), dev)
    want = _grads(A.double(), B.double(), up.double(), lambda a, b: vico_flow.soft_minmax_matmul(a, b, tau, backend="reference"), "cpu")
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4 * y.abs().max().item() + 1e-7)


def test_gradcheck_and_opcheck(backend):
    name, dev = backend
    A = torch.rand(2, 4, 6, dtype=torch.float64, device=dev, requires_grad=True)
    B = torch.rand(6, 5, dtype=torch.float64, device=dev, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: vico_flow.soft_minmax_matmul(a, b, 0.2, backend=name), (A, B))
    assert torch.autograd.gradcheck(lambda a, b: vico_flow.minmax_matmul(a, b, backend=name), (A, B))
    A3, B3 = A.detach().clone(), B.detach()[None].expand(2, -1, -1).contiguous()
    torch.library.opcheck(torch.ops.vico_flow.minmax_mm.default, (A3, B3, name, True))
    torch.library.opcheck(torch.ops.vico_flow.soft_minmax_mm.default, (A3, B3, 0.2, name))


def test_nan_is_refused(backend):
    name, dev = backend
    A = torch.rand(3, 4, device=dev)
    A[1, 1] = math.nan
    with pytest.raises(ValueError, match="A contains NaN"):
        vico_flow.minmax_matmul(A, torch.rand(4, 2, device=dev), backend=name)


def test_auto_picks_compiled_cuda_then_triton():
    if HAS_GPU:
        expected = "cuda" if CUDA_BUILT else "triton"
        assert _backends.resolve("auto", torch.device("cuda"), "t") == expected
    else:
        assert _backends.resolve("auto", torch.device("cpu"), "t") == "cpu"
        with pytest.raises(ValueError, match="backend 'cuda' is not available"):
            _backends.resolve("cuda", torch.device("cpu"), "t")


def _map_attention(graph, fn):
    """The same FlowGraph with fn applied to every captured attention tensor."""
    import dataclasses

    from vico_flow import FlowGraph

    layers = [dataclasses.replace(l, attn=fn(l.attn)) if hasattr(l, "attn") else l for l in graph.layers]
    return FlowGraph(graph.grid, graph.num_text, layers, graph.residual, graph.sink_capacity, graph.grouping)


@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("grouping", ["grouped", "chained"])
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_st_flow_on_gpu_matches_cpu(mode, grouping):
    """ST-Flow on CUDA tensors ("auto" backend) against the CPU kernels:
    values, heatmaps and the gradient reaching every attention tensor."""
    from vico_flow import st_flow
    from vico_flow.synthetic import unet3d_graph

    base = unet3d_graph(frames=4, height=16, width=16, num_text=9, spatial=True, grouping=grouping, residual="avg",
                        sink_capacity=0.5)
    results = []
    for device in ("cpu", "cuda"):
        graph = _map_attention(base, lambda P: P.detach().to(device).clone().requires_grad_())
        attn = [l.attn for l in graph.layers if hasattr(l, "attn")]
        r = st_flow(graph, [1, 4], mode=mode)
        (r.values.sum() + r.heatmaps.mean()).backward()
        assert r.heatmaps.device.type == device
        results.append((r.values.cpu(), r.heatmaps.cpu(), [None if a.grad is None else a.grad.cpu() for a in attn]))
    (v0, h0, g0), (v1, h1, g1) = results
    assert v0.abs().max() > 0 and h0.abs().max() > 0  # the comparison is not of zeros
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-7)
    # layers before the first cross attention carry no text flow: no gradient on either device
    assert [g is None for g in g1] == [g is None for g in g0]
    assert any(g is not None and float(g.abs().max()) > 0 for g in g0)
    for x, y in zip(g1, g0):
        if y is None:
            continue
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5 * float(y.abs().max()) + 1e-9)
