"""ST-Flow: the best-path (max over paths of the min capacity) flow from text
tokens to the output video tokens, through every layer of a FlowGraph.

The flow of K source tokens is a [K, N] tensor of per-token values (plus a
[K, L] text part inside Joint layers). Each attention layer maps it with one
batched tropical product over its block structure (one block per frame for
spatial layers, per pixel for temporal layers):

    F_new[q] = max_k min(F[k], W[k, q]),   W = (a P + s I)^T,   i.e.  F_new = F (max,min) W

so no [N, N] capacity matrix and no [L, N, N] tensor is ever formed. "soft"
replaces every max and min by its log-sum-exp relaxation at temperature tau
(vico_flow.soft_minmax_matmul and friends), making the flow differentiable in
every attention tensor.

Companions on the same graph: attention rollout (the same traversal in the
(+, x) semiring) and cross-attention-only attribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_tau
from .graph import (
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
    resize_factors,
)
from .ops import minmax_chain, minmax_matmul, soft_minmax_matmul

MODES = ("soft", "hard")


@dataclass
class FlowResult:
    """values: [K] flow of each source into the sink (mean of group_values);
    group_values: [G, K] the flow of each group; heatmaps: [K, F, H, W] flow
    reaching each output video token (before the sink edge), on the output grid."""

    values: Tensor
    heatmaps: Tensor
    sources: list
    group_values: Tensor


# ----------------------------------------------------------------------- semirings
class _Tropical:
    """(max, min), hard or soft. `neutral` is the flow of 'no path'."""

    neutral = -math.inf

    def __init__(self, mode: str, tau: float):
        self.soft = mode == "soft"
        self.tau = tau

    def mm(self, F: Tensor, W: Tensor) -> Tensor:
        return soft_minmax_matmul(F, W, self.tau) if self.soft else minmax_matmul(F, W)

    def chain(self, F: Tensor, Ws: list) -> Tensor:
        """F through several block-batched layers in one fused call."""
        if len(Ws) == 1:
            return self.mm(F, Ws[0])
        return minmax_chain(F, Ws, tau=self.tau if self.soft else None)

    def add(self, x: Tensor, y: Tensor) -> Tensor:  # "max"
        return self.tau * torch.logaddexp(x / self.tau, y / self.tau) if self.soft else torch.maximum(x, y)

    def scale(self, x: Tensor, c: float) -> Tensor:  # "min" with a constant capacity
        if c == math.inf:
            return x
        if self.soft:
            return -self.tau * torch.logaddexp(-x / self.tau, torch.full_like(x, -c / self.tau))
        return torch.clamp(x, max=c)

    def reduce(self, x: Tensor, dims) -> Tensor:  # "max" over dims
        return self.tau * torch.logsumexp(x / self.tau, dim=dims) if self.soft else torch.amax(x, dim=dims)

    def readout(self, Fv: Tensor, cap: float) -> Tensor:
        """Flow into the sink: max over output tokens of min(F[q], cap)."""
        if not self.soft:
            return torch.clamp(Fv, max=cap).amax(-1)
        if Fv.device.type == "cpu":  # the CPU kernels run this long, thin product fast
            col = torch.full((Fv.shape[-1], 1), float(cap), dtype=Fv.dtype, device=Fv.device)
            return soft_minmax_matmul(Fv, col, self.tau)[..., 0]
        return self.soft_readout_elementwise(Fv, cap)

    def soft_readout_elementwise(self, Fv: Tensor, cap: float) -> Tensor:
        """The soft readout without the product: soft min with cap, then the
        soft max, elementwise. On GPUs the [K, N] x [N, 1] product would run in
        a single thread block; on the CPU this form is slower than the kernel
        (VideoCrafter2-sized graph, soft fwd: 87 against 69 ms). Like the
        product, a value that comes out infinite passes no gradient."""
        terms = self.scale(Fv, cap)
        out = self.reduce(terms, -1)
        finite = torch.isfinite(out)
        if bool(finite.all()):
            return out
        masked = self.reduce(torch.where(finite[..., None], terms, torch.zeros_like(terms)), -1)
        return torch.where(finite, masked, out.detach())


class _SumProduct:
    """(+, x): attention rollout. Down-resizing and merges average."""

    neutral = 0.0

    def mm(self, F: Tensor, W: Tensor) -> Tensor:
        return F @ W

    def chain(self, F: Tensor, Ws: list) -> Tensor:
        for W in Ws:
            F = F @ W
        return F

    def add(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y

    def scale(self, x: Tensor, c: float) -> Tensor:
        return x * c

    def reduce(self, x: Tensor, dims) -> Tensor:
        return x.mean(dim=dims)

    def readout(self, Fv: Tensor, cap: float) -> Tensor:
        return Fv.sum(-1)


# ----------------------------------------------------------------------- propagation
def _resize(ring, Fv: Tensor, src: Grid, dst: Grid, mode: str) -> Tensor:
    ff, fh, fw = resize_factors(src, dst, mode)
    K = Fv.shape[0]
    if mode == "down":
        x = Fv.reshape(K, dst.frames, ff, dst.height, fh, dst.width, fw)
        return ring.reduce(x, (2, 4, 6)).reshape(K, dst.tokens)
    x = Fv.reshape(K, src.frames, 1, src.height, 1, src.width, 1)
    x = x.expand(K, src.frames, ff, src.height, fh, src.width, fw)
    return x.reshape(K, dst.tokens)


def _resize_to(ring, Fv: Tensor, src: Grid, dst: Grid) -> Tensor:
    """Maps a flow map onto another grid: max over children where it shrinks,
    nearest copy where it grows (per axis)."""
    K = Fv.shape[0]
    x = Fv.reshape(K, src.frames, src.height, src.width)
    for axis, (a, b) in enumerate(((src.frames, dst.frames), (src.height, dst.height), (src.width, dst.width))):
        d = axis + 1
        if a > b:
            if a % b:
                raise ValueError(f"cannot map grid {src} onto {dst}: sizes must divide")
            shape = list(x.shape)
            x = ring.reduce(x.reshape(*shape[:d], b, a // b, *shape[d + 1 :]), d + 1)
        elif b > a:
            if b % a:
                raise ValueError(f"cannot map grid {src} onto {dst}: sizes must divide")
            x = x.repeat_interleave(b // a, dim=d)
    return x.reshape(K, dst.tokens)


def _self_layers(ring, graph: FlowGraph, layers: list, Fv: Tensor, grid: Grid) -> Tensor:
    """A run of consecutive self layers of one kind: one batched (and, for
    several layers, fused) tropical product over their shared block structure."""
    K = Fv.shape[0]
    Ws = [graph.self_capacity(l.attn).transpose(-1, -2) for l in layers]  # W[k, q] = capacity k -> q
    kind = type(layers[0])
    if kind is SpatialSelf:  # blocks: frames; flow [F, K, HW]
        x = Fv.reshape(K, grid.frames, grid.pixels).transpose(0, 1)
        return ring.chain(x, Ws).transpose(0, 1).reshape(K, grid.tokens)
    if kind is TemporalSelf:  # blocks: pixels; flow [HW, K, F]
        x = Fv.reshape(K, grid.frames, grid.pixels).permute(2, 0, 1)
        return ring.chain(x, Ws).permute(1, 2, 0).reshape(K, grid.tokens)
    return ring.chain(Fv[None], [W[None] for W in Ws])[0]  # DenseSelf: one block


def _propagate(ring, graph: FlowGraph, sources: list[int], start: int, end: int, inject_every_cross: bool):
    """Runs layers[start:end] from a fresh source at layers[start]; returns (Fv, grid)."""
    a, s = graph.residual_weights()
    grids = graph.grids()
    dtype, device = graph.dtype, graph.device
    K = len(sources)
    src = torch.tensor(sources, device=device)
    grid = grids[start]
    Fv = torch.full((K, grid.tokens), ring.neutral, dtype=dtype, device=device)
    Ft = None  # text part of the flow, alive from the first Joint layer on
    saved: dict[str, tuple[Tensor, Grid]] = {}
    i = start
    while i < end:
        layer = graph.layers[i]
        i += 1
        if isinstance(layer, (SpatialSelf, TemporalSelf, DenseSelf)):
            run = [layer]
            while i < end and type(graph.layers[i]) is type(layer):
                run.append(graph.layers[i])
                i += 1
            Fv = _self_layers(ring, graph, run, Fv, grid)
            continue
        first = i - 1 == start
        if isinstance(layer, Cross):
            if first or inject_every_cross:
                inj = layer.attn.reshape(grid.tokens, graph.num_text)[:, src].T  # [K, N]: P[q, t]
                inj = inj * a if a != 1.0 else inj
                Fv = inj if first else ring.add(ring.scale(Fv, s), inj)
            else:
                Fv = ring.scale(Fv, s)
        elif isinstance(layer, Joint):
            if Ft is None or first:
                Ft = torch.full((K, graph.num_text), ring.neutral, dtype=dtype, device=device)
                Ft[torch.arange(K, device=device), src] = math.inf if ring.neutral == -math.inf else 1.0
            W = graph.self_capacity(layer.attn).transpose(0, 1)
            out = ring.mm(torch.cat([Ft, Fv], dim=1), W)
            Ft, Fv = out[:, : graph.num_text], out[:, graph.num_text :]
        elif isinstance(layer, Resize):
            Fv = _resize(ring, Fv, grid, layer.grid, layer.mode)
            grid = layer.grid
        elif isinstance(layer, Save):
            saved[layer.name] = (Fv, grid)
        elif isinstance(layer, Merge):
            if layer.name in saved:  # a Save before this group's start has no flow to merge
                Fv = ring.add(Fv, saved[layer.name][0])
    return Fv, grid


def _check_sources(graph: FlowGraph, sources, fn: str) -> list[int]:
    if isinstance(sources, int):
        sources = [sources]
    try:
        sources = [int(t) for t in sources]
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: sources must be text token indices (ints), got {sources!r}") from None
    if not sources:
        raise ValueError(f"{fn}: sources is empty; give at least one text token index")
    bad = [t for t in sources if not 0 <= t < graph.num_text]
    if bad:
        raise ValueError(f"{fn}: source token(s) {bad} out of range: the graph has {graph.num_text} text tokens")
    return sources


def _run(ring, graph: FlowGraph, sources: list[int]) -> FlowResult:
    out = graph.output_grid
    maps, values = [], []
    for start, end in graph.groups():
        Fv, grid = _propagate(ring, graph, sources, start, end, inject_every_cross=graph.grouping == "chained")
        values.append(ring.readout(Fv, graph.sink_value))
        maps.append(_resize_to(ring, Fv, grid, out))
    group_values = torch.stack(values)
    heat = torch.stack(maps).mean(0).reshape(len(sources), out.frames, out.height, out.width)
    return FlowResult(values=group_values.mean(0), heatmaps=heat, sources=sources, group_values=group_values)


def st_flow(graph: FlowGraph, sources, mode: str = "soft", tau: float = 0.01) -> FlowResult:
    """ST-Flow of each source text token through `graph`.

    Args:
        graph: the FlowGraph (its residual, sink capacity and grouping apply).
        sources: text token index or list of K indices.
        mode: "soft" (default, differentiable, log-sum-exp at `tau`) or "hard"
            (exact best-path flow; equals the widest-path value of the graph).
        tau: soft temperature (> 0).

    Returns FlowResult: values [K] (the flow into the sink; in "grouped" mode the
    mean over groups) and heatmaps [K, F, H, W] on the output grid (in
    "grouped" mode each group's map is mapped onto the output grid, then averaged).
    """
    fn = "st_flow"
    if not isinstance(graph, FlowGraph):
        raise TypeError(f"{fn}: graph must be a FlowGraph, got {type(graph).__name__}")
    if mode not in MODES:
        raise ValueError(f"{fn}: mode must be 'soft' or 'hard', got {mode!r}")
    tau = check_tau(tau, fn)
    return _run(_Tropical(mode, tau), graph, _check_sources(graph, sources, fn))


def attention_rollout(graph: FlowGraph, sources) -> FlowResult:
    """Attention rollout (Abnar & Zuidema) on the same graph: products of the
    capacity matrices in the (+, x) semiring, with the graph's residual
    convention ("avg" is theirs). Down-resizing and merges average; values are
    the total rollout mass on the output tokens."""
    fn = "attention_rollout"
    if not isinstance(graph, FlowGraph):
        raise TypeError(f"{fn}: graph must be a FlowGraph, got {type(graph).__name__}")
    return _run(_SumProduct(), graph, _check_sources(graph, sources, fn))


def cross_attention_attribution(graph: FlowGraph, sources) -> FlowResult:
    """Cross-attention-only attribution: each Cross layer's map P[:, t] (the
    video-to-text block for Joint layers) mapped onto the output grid and
    averaged over layers; values are the maps' maxima."""
    fn = "cross_attention_attribution"
    if not isinstance(graph, FlowGraph):
        raise TypeError(f"{fn}: graph must be a FlowGraph, got {type(graph).__name__}")
    sources = _check_sources(graph, sources, fn)
    src = torch.tensor(sources, device=graph.device)
    out, L = graph.output_grid, graph.num_text
    maps = []
    for layer, grid in zip(graph.layers, graph.grids()):
        if isinstance(layer, Cross):
            m = layer.attn.reshape(grid.tokens, L)[:, src].T
        elif isinstance(layer, Joint):
            m = layer.attn[L:, :L][:, src].T
        else:
            continue
        maps.append(_resize_to(_SumProduct(), m, grid, out))
    heat = torch.stack(maps).mean(0)
    values = heat.amax(-1)
    return FlowResult(
        values=values,
        heatmaps=heat.reshape(len(sources), out.frames, out.height, out.width),
        sources=sources,
        group_values=values[None],
    )
