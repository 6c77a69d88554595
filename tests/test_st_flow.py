"""ST-Flow against the exact oracle and by its own properties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vico_flow.flow import attention_rollout, cross_attention_attribution, st_flow
from vico_flow.graph import Cross, DenseSelf, FlowGraph, Grid, Merge, Resize, Save, SpatialSelf, TemporalSelf
from vico_flow.oracle import build_network, exact_st_flow, widest_path_st_flow

from .flow_graphs import flow_graphs, soft_deviation_bound, softmax_attn

SCALE = 1e6


def all_sources(graph):
    return list(range(graph.num_text))


@settings(max_examples=60)
@given(graph=flow_graphs())
def test_hard_equals_widest_path_and_is_below_max_flow(graph):
    src = all_sources(graph)
    hard = st_flow(graph, src, mode="hard").group_values.clamp(min=0)
    widest = widest_path_st_flow(graph, src, per_group=True)
    assert torch.equal(hard, widest.to(hard.dtype))
    exact = exact_st_flow(graph, src, scale=SCALE, per_group=True)
    edges = max(build_network(graph, 0, g).number_of_edges() for g in graph.groups())
    assert bool((hard <= exact + edges / SCALE).all()), (hard, exact)


def test_oracle_is_not_trivial():
    # With competing paths and a generous sink, max-flow exceeds the best single
    # path: the inequality tests above compare two different numbers.
    gen = torch.Generator().manual_seed(0)
    g = Grid(2, 2, 2)
    graph = FlowGraph(
        g, 3,
        [Cross(softmax_attn(gen, 2, 4, 3)), SpatialSelf(softmax_attn(gen, 2, 4, 4)), TemporalSelf(softmax_attn(gen, 4, 2, 2))],
        residual="avg", sink_capacity=math.inf,
    )
    hard = st_flow(graph, [0, 1, 2], mode="hard").values
    exact = exact_st_flow(graph, [0, 1, 2])
    assert bool((exact > hard + 0.05).all())
    single = FlowGraph(g, 3, graph.layers, residual="avg", sink_capacity=1e-3)
    torch.testing.assert_close(exact_st_flow(single, [0]), torch.tensor([1e-3], dtype=torch.float64) * 8)


@settings(max_examples=30)
@given(graph=flow_graphs(dtype=torch.float32))
def test_hard_float32_equals_widest_path(graph):
    src = all_sources(graph)
    hard = st_flow(graph, src, mode="hard").group_values.clamp(min=0)
    assert torch.equal(hard.double(), widest_path_st_flow(graph, src, per_group=True))


@settings(max_examples=40)
@given(graph=flow_graphs(), tau=st.sampled_from([0.003, 0.03, 0.3]))
def test_soft_within_accumulated_bounds(graph, tau):
    src = all_sources(graph)
    hard = st_flow(graph, src, mode="hard")
    soft = st_flow(graph, src, mode="soft", tau=tau)
    bound = soft_deviation_bound(graph, tau) + 1e-9
    finite = torch.isfinite(hard.values)
    assert bool(((soft.values - hard.values).abs()[finite] <= bound).all())
    hm = torch.isfinite(hard.heatmaps)
    assert bool(((soft.heatmaps - hard.heatmaps).abs()[hm] <= bound).all())


@settings(max_examples=20)
@given(graph=flow_graphs())
def test_soft_converges_to_hard(graph):
    src = all_sources(graph)
    hard = st_flow(graph, src, mode="hard").values
    finite = torch.isfinite(hard)
    gaps = [(st_flow(graph, src, tau=t).values - hard).abs()[finite].max().item() for t in (0.1, 0.01, 0.001)]
    assert gaps[2] <= gaps[0] + 1e-12
    assert gaps[2] <= soft_deviation_bound(graph, 0.001) + 1e-9


def _attn_params(graph):
    return [l.attn for l in graph.layers if hasattr(l, "attn")]


def _with_attn(graph, tensors):
    it = iter(tensors)
    layers = [type(l)(next(it)) if hasattr(l, "attn") else l for l in graph.layers]
    return FlowGraph(graph.grid, graph.num_text, layers, graph.residual, graph.sink_capacity, graph.grouping)


@settings(max_examples=6)
@given(graph=flow_graphs(max_layers=3), mode=st.sampled_from(["soft", "hard"]))
def test_gradients_match_finite_differences(graph, mode):
    # + 0.05 keeps every entry clear of 0, so finite differences stay valid attention
    params = [(p.detach() + 0.05).requires_grad_() for p in _attn_params(graph)]

    def f(*ps):
        r = st_flow(_with_attn(graph, ps), all_sources(graph), mode=mode, tau=0.05)
        return r.values.clamp(min=-1e3), r.heatmaps.clamp(min=-1e3)

    assert torch.autograd.gradcheck(f, params, atol=1e-5)


def test_gradient_reaches_every_attention_tensor():
    gen = torch.Generator().manual_seed(1)
    g = Grid(2, 2, 2)
    layers = [Cross(softmax_attn(gen, 2, 4, 3)), SpatialSelf(softmax_attn(gen, 2, 4, 4)), TemporalSelf(softmax_attn(gen, 4, 2, 2)),
              DenseSelf(softmax_attn(gen, 8, 8))]
    for l in layers:
        l.attn.requires_grad_()
    for grouping in ("grouped", "chained"):
        graph = FlowGraph(g, 3, layers, sink_capacity=math.inf, residual="avg", grouping=grouping)
        for l in layers:
            l.attn.grad = None
        st_flow(graph, [0, 2]).values.sum().backward()
        for l in layers:
            assert l.attn.grad is not None and l.attn.grad.abs().sum() > 0



@pytest.mark.parametrize("cap", [0.3, math.inf])
def test_soft_readout_is_the_soft_product_with_a_constant_column(cap):
    # Off the CPU the soft readout is written elementwise (a [K, N] x [N, 1]
    # product runs on one GPU thread block); it must equal that product, and
    # rows whose value is not finite (no flow at all) pass no gradient, NaN
    # included.
    from vico_flow.flow import _Tropical
    from vico_flow.ops import soft_minmax_matmul

    gen = torch.Generator().manual_seed(5)
    F = torch.rand(3, 50, dtype=torch.float64, generator=gen) * 2 - 0.5
    F[1] = -math.inf  # a source with no flow
    F[2, :10] = -math.inf
    ring = _Tropical("soft", 0.05)
    x = F.clone().requires_grad_()
    got = ring.soft_readout_elementwise(x, cap)
    col = torch.full((50, 1), cap, dtype=torch.float64)
    want = soft_minmax_matmul(F, col, 0.05)[:, 0]
    assert got[1] == -math.inf
    # (the CPU kernel skips terms below 2^-(log2 k + 26) of the sum: tau * 2^-25 at most)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0.05 * 2.0**-25)
    got.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool((x.grad[1] == 0).all()) and bool((x.grad[2, :10] == 0).all())
    y = F.clone().requires_grad_()
    soft_minmax_matmul(y, col, 0.05)[:, 0].sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-8, atol=1e-8 * float(y.grad.abs().max()))

def test_graph_to_converts_every_layer_and_passes_gradients_back():
    gen = torch.Generator().manual_seed(2)
    layers = [Cross(softmax_attn(gen, 2, 4, 3)), TemporalSelf(softmax_attn(gen, 4, 2, 2)), Resize(Grid(2, 1, 2), "down"),
              DenseSelf(softmax_attn(gen, 4, 4))]
    for l in layers:
        if hasattr(l, "attn"):
            l.attn.requires_grad_()
    graph = FlowGraph(Grid(2, 2, 2), 3, layers, residual="avg", sink_capacity=0.5, grouping="chained")
    assert graph.dtype == torch.float64
    g32 = graph.to(dtype=torch.float32)
    assert g32.dtype == torch.float32 and all(l.attn.dtype == torch.float32 for l in g32.layers if hasattr(l, "attn"))
    assert (g32.residual, g32.sink_capacity, g32.grouping, g32.grid) == ("avg", 0.5, "chained", graph.grid)
    assert isinstance(g32.layers[2], Resize)
    r64, r32 = st_flow(graph, [0, 1], mode="soft"), st_flow(g32, [0, 1], mode="soft")
    torch.testing.assert_close(r32.values, r64.values.float(), rtol=1e-5, atol=1e-6)
    r32.values.sum().backward()
    assert all(l.attn.grad is not None for l in layers if hasattr(l, "attn"))
    with pytest.raises(TypeError, match="FlowGraph.to: dtype must be a floating"):
        graph.to(dtype=torch.int64)
    with pytest.raises(ValueError, match="FlowGraph.to: device must name a torch device"):
        graph.to("gpu0")

@settings(max_examples=25)
@given(graph=flow_graphs(joint=False, allow_resize=False), seed=st.integers(0, 1000), mode=st.sampled_from(["soft", "hard"]))
def test_permuting_pixels_permutes_heatmaps(graph, seed, mode):
    g = graph.grid
    perm = torch.randperm(g.pixels, generator=torch.Generator().manual_seed(seed))
    tok = (torch.arange(g.frames)[:, None] * g.pixels + perm[None, :]).reshape(-1)  # token permutation
    layers = []
    for l in graph.layers:
        if isinstance(l, SpatialSelf):
            layers.append(SpatialSelf(l.attn[:, perm][:, :, perm]))
        elif isinstance(l, TemporalSelf):
            layers.append(TemporalSelf(l.attn[perm]))
        elif isinstance(l, Cross):
            layers.append(Cross(l.attn[:, perm]))
        elif isinstance(l, DenseSelf):
            layers.append(DenseSelf(l.attn[tok][:, tok]))
        else:
            layers.append(l)
    permuted = FlowGraph(g, graph.num_text, layers, graph.residual, graph.sink_capacity, graph.grouping)
    src = all_sources(graph)
    a = st_flow(graph, src, mode=mode)
    b = st_flow(permuted, src, mode=mode)
    K = len(src)
    torch.testing.assert_close(b.heatmaps.reshape(K, -1), a.heatmaps.reshape(K, -1)[:, tok])
    torch.testing.assert_close(b.values, a.values)


def test_two_group_example_by_hand():
    # 1 frame, 2 pixels, 2 text tokens. Group 1: Cross then SpatialSelf; group 2: Cross.
    P1 = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]], dtype=torch.float64)  # [F, HW, L]
    S = torch.tensor([[[0.6, 0.4], [0.3, 0.7]]], dtype=torch.float64)  # [F, HW, HW]
    P2 = torch.tensor([[[0.5, 0.5], [0.1, 0.9]]], dtype=torch.float64)
    graph = FlowGraph(Grid(1, 1, 2), 2, [Cross(P1), SpatialSelf(S), Cross(P2)], residual="add", sink_capacity=1.0)
    r = st_flow(graph, [0, 1], mode="hard")
    # Group 1, token 0: F = (0.9, 0.2); capacities W[k->q] = S[q,k] + [q==k]:
    #   q0: max(min(.9, 1.6), min(.2, .4)) = .9 ;  q1: max(min(.9, .3), min(.2, 1.7)) = .3
    # Group 2, token 0: F = (0.5, 0.1). Heatmap = mean = (.7, .2); value = mean(min(max,1)) = (.9+.5)/2.
    torch.testing.assert_close(r.heatmaps[0].reshape(-1), torch.tensor([0.7, 0.2], dtype=torch.float64))
    torch.testing.assert_close(r.values[0], torch.tensor(0.7, dtype=torch.float64))
    # Token 1: group 1 F = (.1, .8) -> q0: max(min(.1,1.6), min(.8,.4)) = .4; q1: max(min(.1,.3), min(.8,1.7)) = .8
    # group 2: (.5, .9). Heatmap (.45, .85); values (.8 + .9) / 2.
    torch.testing.assert_close(r.heatmaps[1].reshape(-1), torch.tensor([0.45, 0.85], dtype=torch.float64))
    torch.testing.assert_close(r.values[1], torch.tensor(0.85, dtype=torch.float64))
    chained = FlowGraph(Grid(1, 1, 2), 2, graph.layers, residual="add", sink_capacity=1.0, grouping="chained")
    # Chained, token 0: after group 1 (.9, .3); Cross 2 keeps min(F, 1) and adds P2: max -> (.9, .3) vs (.5, .1).
    torch.testing.assert_close(st_flow(chained, [0], mode="hard").heatmaps.reshape(-1), torch.tensor([0.9, 0.3], dtype=torch.float64))


def test_rollout_is_the_matrix_product():
    gen = torch.Generator().manual_seed(2)
    P1, D1, D2 = softmax_attn(gen, 1, 3, 2), softmax_attn(gen, 3, 3), softmax_attn(gen, 3, 3)
    graph = FlowGraph(Grid(1, 1, 3), 2, [Cross(P1), DenseSelf(D1), DenseSelf(D2)], residual="avg", grouping="chained")
    r = attention_rollout(graph, [1])
    W = lambda D: ((D + torch.eye(3, dtype=D.dtype)) / 2).T  # noqa: E731
    expected = (0.5 * P1[0, :, 1]) @ W(D1) @ W(D2)
    torch.testing.assert_close(r.heatmaps.reshape(-1), expected)
    torch.testing.assert_close(r.values, expected.sum()[None])


def test_cross_attention_attribution_averages_maps():
    gen = torch.Generator().manual_seed(3)
    P1, P2 = softmax_attn(gen, 2, 4, 3), softmax_attn(gen, 2, 1, 3)
    graph = FlowGraph(Grid(2, 2, 2), 3, [Cross(P1), Resize(Grid(2, 1, 1), "down"), Cross(P2), Resize(Grid(2, 2, 2), "up")])
    r = cross_attention_attribution(graph, [2])
    m2 = P2[:, 0, 2][:, None].expand(2, 4).reshape(-1)
    torch.testing.assert_close(r.heatmaps.reshape(-1), (P1[..., 2].reshape(-1) + m2) / 2)


def test_graph_errors_name_the_layer():
    gen = torch.Generator().manual_seed(4)
    g = Grid(2, 2, 2)
    good = Cross(softmax_attn(gen, 2, 4, 3))
    with pytest.raises(ValueError, match=r"layer 1 \(TemporalSelf\): attention has shape \(4, 3, 3\); expected \(4, 2, 2\)"):
        FlowGraph(g, 3, [good, TemporalSelf(torch.rand(4, 3, 3, dtype=torch.float64))])
    with pytest.raises(ValueError, match=r"layer 1 \(SpatialSelf\): attention must be >= 0"):
        FlowGraph(g, 3, [good, SpatialSelf(-torch.rand(2, 4, 4, dtype=torch.float64))])
    bad = torch.rand(2, 4, 4, dtype=torch.float64)
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"layer 1 \(SpatialSelf\): attention must be finite"):
        FlowGraph(g, 3, [good, SpatialSelf(bad)])
    with pytest.raises(ValueError, match=r"at least one Cross or Joint"):
        FlowGraph(g, 3, [SpatialSelf(torch.rand(2, 4, 4))])
    with pytest.raises(ValueError, match=r"layer 2 \(Resize\): Resize down from grid 2x2x2 to 2x3x1: height 2 is not a multiple of 3"):
        FlowGraph(g, 3, [good, Save("a"), Resize(Grid(2, 3, 1), "down")])
    with pytest.raises(ValueError, match=r"layer 3 \(Merge\): Save 'a' has grid 2x2x2, but the flow here is on 2x1x1"):
        FlowGraph(g, 3, [good, Save("a"), Resize(Grid(2, 1, 1), "down"), Merge("a")])
    with pytest.raises(ValueError, match=r"no earlier Save named 'b'"):
        FlowGraph(g, 3, [good, Merge("b")])
    with pytest.raises(ValueError, match=r"residual must be one of"):
        FlowGraph(g, 3, [good], residual="sum")
    with pytest.raises(ValueError, match=r"sink_capacity must be a number > 0"):
        FlowGraph(g, 3, [good], sink_capacity=0)
    with pytest.raises(TypeError, match=r"attn has dtype torch.int64"):
        FlowGraph(g, 3, [Cross(torch.ones(2, 4, 3, dtype=torch.long))])
    graph = FlowGraph(g, 3, [good])
    with pytest.raises(ValueError, match=r"source token\(s\) \[3\] out of range: the graph has 3 text tokens"):
        st_flow(graph, [0, 3])
    with pytest.raises(ValueError, match=r"mode must be 'soft' or 'hard'"):
        st_flow(graph, [0], mode="exact")
    with pytest.raises(ValueError, match=r"tau must be a finite number > 0"):
        st_flow(graph, [0], tau=0)


@pytest.mark.parametrize("tau", [None, 0.05])
@pytest.mark.parametrize("blocks", [1, 40])
def test_chain_equals_layer_by_layer(isa, tau, blocks):
    import vico_flow

    gen = torch.Generator().manual_seed(5)
    F = torch.rand(blocks, 4, 16, generator=gen)
    F[:, 0, 3] = -math.inf  # "no flow" entries pass through unchanged semantics
    Ws = [torch.rand(blocks, 16, 16, generator=gen).transpose(1, 2) for _ in range(3)]
    X = F
    for W in Ws:
        X = vico_flow.minmax_matmul(X, W) if tau is None else vico_flow.soft_minmax_matmul(X, W, tau)
    out = vico_flow.minmax_chain(F, Ws, tau=tau)
    if tau is None:
        assert torch.equal(out, X)
    else:
        torch.testing.assert_close(out, X, rtol=1e-6, atol=1e-6)
    ref = vico_flow.minmax_chain(F.double(), [W.double() for W in Ws], tau=tau, backend="reference")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [None, 0.1])
def test_chain_gradcheck_and_opcheck(tau):
    import vico_flow

    gen = torch.Generator().manual_seed(6)
    F = torch.rand(12, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    Ws = [torch.rand(12, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda f, *w: vico_flow.minmax_chain(f, w, tau=tau), (F, *Ws))
    torch.library.opcheck(torch.ops.vico_flow.minmax_chain.default, (F, Ws, tau or 1.0, tau is not None, "cpu"))


def test_chain_errors():
    import vico_flow

    F = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match=r"Ws\[1\] has shape \(2, 4, 5\); expected \(2, 4, 4\)"):
        vico_flow.minmax_chain(F, [torch.rand(2, 4, 4), torch.rand(2, 4, 5)])
    with pytest.raises(ValueError, match=r"Ws is empty"):
        vico_flow.minmax_chain(F, [])
    with pytest.raises(ValueError, match=r"F must be \[b, K, n\]"):
        vico_flow.minmax_chain(F[0], [torch.rand(2, 4, 4)])
    bad = torch.rand(2, 4, 4)
    bad[1, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"Ws\[0\] contains NaN"):
        vico_flow.minmax_chain(F, [bad])


def test_max_flow_algorithms_agree():
    from vico_flow.synthetic import dense_chain_graph

    graph = dense_chain_graph(12, 3, num_text=3, residual="avg", sink_capacity=0.2)
    values = {a: exact_st_flow(graph, [0, 1], algorithm=a) for a in ("dinitz", "preflow_push", "boykov_kolmogorov")}
    assert torch.equal(values["dinitz"], values["preflow_push"]) and torch.equal(values["dinitz"], values["boykov_kolmogorov"])
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        exact_st_flow(graph, [0], algorithm="simplex")
