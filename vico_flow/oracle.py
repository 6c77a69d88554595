"""Exact flow oracle: the FlowGraph as an explicit networkx.DiGraph.

Nodes are ("src",), ("sink",), and one copy of every token per layer boundary:
("v", b, q) for video token q and ("t", b, t) for text token t after b layers.
Edges carry the float capacity ("cap", exactly the values the propagation
uses: FlowGraph.self_capacity and the residual weights) and, for networkx, an
integer "capacity" = floor(cap * scale); unlimited edges have none, which
networkx reads as infinite. networkx's float capacities can make dinitz fail,
hence the integers: the exact flow returned is flow_value / scale, at most
(number of edges) / scale below the true max-flow.

Two independent answers per source and group:
    exact_st_flow      max-flow (networkx.algorithms.flow.dinitz)
    widest_path_st_flow  widest (bottleneck) path, by a max-heap Dijkstra
Hard ST-Flow must equal the widest path exactly and be <= the max-flow
(paper, Theorem 1). Groups aggregate as in vico_flow.st_flow (mean).
"""
from __future__ import annotations

import heapq
import math

import networkx as nx
import torch
from networkx.algorithms.flow import boykov_kolmogorov, dinitz, edmonds_karp, preflow_push, shortest_augmenting_path

from .graph import Cross, DenseSelf, FlowGraph, Joint, Merge, Resize, Save, SpatialSelf, TemporalSelf, resize_factors

SRC, SINK = ("src",), ("sink",)

# Dinic is the reference algorithm (and the default); the others give the same
# value and can be much faster on dense graphs (preflow-push: ~25x at 256 tokens).
ALGORITHMS = {
    "dinitz": dinitz,
    "preflow_push": preflow_push,
    "boykov_kolmogorov": boykov_kolmogorov,
    "edmonds_karp": edmonds_karp,
    "shortest_augmenting_path": shortest_augmenting_path,
}


class _Builder:
    def __init__(self, scale: float):
        self.G = nx.DiGraph()
        self.scale = scale

    def edge(self, u, v, cap: float) -> None:
        cap = float(cap)
        if cap <= 0 or cap == -math.inf:
            return  # carries nothing; keeps the network small
        if self.G.has_edge(u, v):  # every edge is made once; a second one would be a builder bug
            raise AssertionError(f"duplicate edge {u} -> {v}")
        attrs = {"cap": cap}
        if cap != math.inf:
            attrs["capacity"] = int(math.floor(cap * self.scale))
        self.G.add_edge(u, v, **attrs)


def build_network(graph: FlowGraph, source: int, group: tuple[int, int], scale: float = 1e6) -> nx.DiGraph:
    """The flow network of one group (layers[start:end]) for one source text token."""
    start, end = group
    a, s = graph.residual_weights()
    grids = graph.grids()
    L = graph.num_text
    b = _Builder(scale)
    inject_every_cross = graph.grouping == "chained"
    saved = {}
    text_alive = False
    for i in range(start, end):
        layer, grid = graph.layers[i], grids[i]
        N = grid.tokens
        if isinstance(layer, Cross):
            P = layer.attn.reshape(N, L)
            for q in range(N):
                if i != start:
                    b.edge(("v", i, q), ("v", i + 1, q), s)
                if i == start or inject_every_cross:
                    b.edge(SRC, ("v", i + 1, q), a * float(P[q, source]))
        elif isinstance(layer, Joint):
            if not text_alive or i == start:
                b.edge(SRC, ("t", i, source), math.inf)
                text_alive = True
            W = graph.self_capacity(layer.attn)  # W[q, k]: capacity k -> q
            names = [("t", t) for t in range(L)] + [("v", q) for q in range(N)]
            Wl = W.tolist()
            for qi, (kq, q) in enumerate(names):
                for ki, (kk, k) in enumerate(names):
                    b.edge((kk, i, k), (kq, i + 1, q), Wl[qi][ki])
        elif isinstance(layer, (SpatialSelf, TemporalSelf, DenseSelf)):
            Wl = graph.self_capacity(layer.attn).tolist()
            F, HW = grid.frames, grid.pixels
            if isinstance(layer, SpatialSelf):
                blocks = [[f * HW + p for p in range(HW)] for f in range(F)]
            elif isinstance(layer, TemporalSelf):
                blocks = [[f * HW + p for f in range(F)] for p in range(HW)]
            else:
                blocks = [list(range(N))]
            for bi, toks in enumerate(blocks):
                Wb = Wl if isinstance(layer, DenseSelf) else Wl[bi]
                for qi, q in enumerate(toks):
                    for ki, k in enumerate(toks):
                        b.edge(("v", i, k), ("v", i + 1, q), Wb[qi][ki])
            if text_alive:  # text tokens keep their flow across video-only layers
                for t in range(L):
                    b.edge(("t", i, t), ("t", i + 1, t), math.inf)
        elif isinstance(layer, Resize):
            dst = layer.grid
            ff, fh, fw = resize_factors(grid, dst, layer.mode)
            big = grid if layer.mode == "down" else dst
            for f in range(big.frames):
                for h in range(big.height):
                    for w in range(big.width):
                        child = (f * big.height + h) * big.width + w
                        parent = ((f // ff) * (big.height // fh) + h // fh) * (big.width // fw) + w // fw
                        if layer.mode == "down":
                            b.edge(("v", i, child), ("v", i + 1, parent), math.inf)
                        else:
                            b.edge(("v", i, parent), ("v", i + 1, child), math.inf)
        elif isinstance(layer, (Save, Merge)):
            for q in range(N):
                b.edge(("v", i, q), ("v", i + 1, q), math.inf)
            if isinstance(layer, Save):
                saved[layer.name] = i
            elif layer.name in saved:
                for q in range(N):
                    b.edge(("v", saved[layer.name], q), ("v", i + 1, q), math.inf)
        if text_alive and isinstance(layer, (Cross, Resize, Save, Merge)):
            for t in range(L):
                b.edge(("t", i, t), ("t", i + 1, t), math.inf)
    out = graph.grids()[end] if end < len(graph.layers) else graph.output_grid
    for q in range(out.tokens):
        b.edge(("v", end, q), SINK, graph.sink_value)
    b.G.add_node(SRC)
    b.G.add_node(SINK)
    return b.G


def max_flow_value(G: nx.DiGraph, scale: float = 1e6, algorithm: str = "dinitz") -> float:
    """Exact max-flow from SRC to SINK (Dinic's algorithm by default), in capacity units."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"max_flow_value: algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    if not nx.has_path(G, SRC, SINK):
        return 0.0
    try:
        R = ALGORITHMS[algorithm](G, SRC, SINK, capacity="capacity")
    except nx.NetworkXUnbounded:  # a path of unlimited edges (sink_capacity = inf)
        return math.inf
    return R.graph["flow_value"] / scale


def widest_path_value(G: nx.DiGraph) -> float:
    """Largest bottleneck capacity over SRC -> SINK paths (max-heap Dijkstra on "cap")."""
    best = {SRC: math.inf}
    heap = [(-math.inf, 0, SRC)]
    tie = 0
    done = set()
    while heap:
        neg, _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == SINK:
            return -neg
        for v, attrs in G[u].items():
            width = min(-neg, attrs["cap"])
            if width > best.get(v, -math.inf):
                best[v] = width
                tie += 1
                heapq.heappush(heap, (-width, tie, v))
    return 0.0


def _per_source(graph: FlowGraph, sources, fn, scale: float, per_group: bool) -> torch.Tensor:
    if isinstance(sources, int):
        sources = [sources]
    vals = torch.tensor(
        [[fn(build_network(graph, int(t), grp, scale)) for t in sources] for grp in graph.groups()],
        dtype=torch.float64,
    )  # [G, K]
    return vals if per_group else vals.mean(0)


def exact_st_flow(
    graph: FlowGraph, sources, scale: float = 1e6, per_group: bool = False, algorithm: str = "dinitz"
) -> torch.Tensor:
    """Exact max-flow of each source, float64: [K] (mean over groups, as
    vico_flow.st_flow's values) or [G, K] with per_group=True. `algorithm` names
    a networkx max-flow algorithm (ALGORITHMS); all give the same value."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"exact_st_flow: algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    return _per_source(graph, sources, lambda G: max_flow_value(G, scale, algorithm), scale, per_group)


def widest_path_st_flow(graph: FlowGraph, sources, per_group: bool = False) -> torch.Tensor:
    """Widest-path value of each source, float64 [K] (mean over groups) or
    [G, K]: what hard ST-Flow computes, found by an independent graph search."""
    return _per_source(graph, sources, widest_path_value, 1e6, per_group)
