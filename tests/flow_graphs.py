"""Random small flow graphs for the ST-Flow property tests (hypothesis)."""
import math

import torch
from hypothesis import strategies as st

from vico_flow.graph import (
    Cross,
    DenseSelf,
    FlowGraph,
    Grid,
    Joint,
    Merge,
    Resize,
    Save,
    SpatialSelf,
    TemporalSelf,
)


def softmax_attn(gen, *shape, sharpness=2.0, dtype=torch.float64):
    """Attention rows from softmax of random logits (sharper -> more peaked)."""
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * sharpness
    return torch.softmax(logits, dim=-1).to(dtype)


KINDS = ["spatial", "temporal", "cross", "dense", "resize", "skip"]


@st.composite
def flow_graphs(draw, max_layers=6, joint=None, dtype=torch.float64, allow_resize=True):
    """A FlowGraph of up to `max_layers` mixed layers, <= 32 tokens per layer."""
    F = draw(st.integers(1, 3))
    H = draw(st.sampled_from([1, 2, 4]))
    Wd = draw(st.sampled_from([1, 2, 4]))
    if F * H * Wd > 32:
        Wd = 1
    grid = Grid(F, H, Wd)
    L = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    sharp = draw(st.sampled_from([0.5, 2.0, 5.0]))
    gen = torch.Generator().manual_seed(seed)
    use_joint = draw(st.booleans()) if joint is None else joint
    layers = []
    cur = grid
    down_stack = []
    n_layers = draw(st.integers(1, max_layers))
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(n_layers)]
    # every graph needs an entry layer; put one first, another maybe later
    first = "joint" if use_joint else "cross"
    kinds = [first] + kinds
    for kind in kinds:
        N = cur.tokens
        if kind == "joint" or (kind == "cross" and use_joint):
            layers.append(Joint(softmax_attn(gen, L + N, L + N, sharpness=sharp, dtype=dtype)))
        elif kind == "cross":
            layers.append(Cross(softmax_attn(gen, cur.frames, cur.pixels, L, sharpness=sharp, dtype=dtype)))
        elif kind == "spatial":
            layers.append(SpatialSelf(softmax_attn(gen, cur.frames, cur.pixels, cur.pixels, sharpness=sharp, dtype=dtype)))
        elif kind == "temporal":
            layers.append(TemporalSelf(softmax_attn(gen, cur.pixels, cur.frames, cur.frames, sharpness=sharp, dtype=dtype)))
        elif kind == "dense":
            layers.append(DenseSelf(softmax_attn(gen, N, N, sharpness=sharp, dtype=dtype)))
        elif kind == "resize" and allow_resize:
            if down_stack:
                up = down_stack.pop()
                layers += [Resize(up, "up"), Merge(f"skip{len(down_stack)}")]
                cur = up
            elif cur.height % 2 == 0 and cur.width % 2 == 0:
                down_stack.append(cur)
                layers.append(Save(f"skip{len(down_stack) - 1}"))
                cur = Grid(cur.frames, cur.height // 2, cur.width // 2)
                layers.append(Resize(cur, "down"))
    while down_stack:
        up = down_stack.pop()
        layers += [Resize(up, "up"), Merge(f"skip{len(down_stack)}")]
        cur = up
    residual = draw(st.sampled_from(["add", "avg", "none"]))
    sink = draw(st.sampled_from([0.05, 0.3, 1.0, math.inf]))
    grouping = draw(st.sampled_from(["grouped", "chained"]))
    return FlowGraph(grid, L, layers, residual=residual, sink_capacity=sink, grouping=grouping)


def soft_deviation_bound(graph: FlowGraph, tau: float) -> float:
    """Largest |soft - hard| the soft relaxation can add up to on this graph.

    Every operation (max, min, the products) is monotone and 1-Lipschitz in the
    sup norm, and its soft version lies within [-tau log 2, tau log k] of the
    hard one (k = fan-in), so the deviations of a path of operations add up.
    """
    total = 0.0
    grids = graph.grids()
    for layer, grid in zip(graph.layers, grids):
        if isinstance(layer, (SpatialSelf, TemporalSelf, DenseSelf, Joint)):
            k = layer.attn.shape[-1]
            total += math.log(max(k, 2)) + math.log(2)
        elif isinstance(layer, Cross):
            total += 2 * math.log(2)
        elif isinstance(layer, Resize):
            total += math.log(max(grids[0].tokens, 2))
        elif isinstance(layer, Merge):
            total += math.log(2)
    total += math.log(max(graph.output_grid.tokens, 2)) + math.log(2)  # readout
    return tau * total
