"""From captured attention records to a vico_flow FlowGraph.

A family (one module per model class) says which attention modules are
spatial, temporal, cross or joint, and what the full token grid is for a
given latent; `assemble` does the rest for all of them: picks one sample out
of the batch (classifier-free guidance runs several), reshapes each map to
its layer kind's layout, works out each layer's grid from its token count
(the latent grid divided by a power-of-two factor) and inserts Resize layers
where consecutive layers differ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from vico_flow.graph import Cross, FlowGraph, Grid, Joint, Resize, SpatialSelf, TemporalSelf

KINDS = ("spatial", "temporal", "cross", "joint", "skip")


@dataclass(frozen=True)
class Family:
    """How one diffusers model class maps to a flow graph."""

    name: str
    classify: Callable[[str], str]  # module name -> one of KINDS
    token_grid: Callable[[object, tuple], Grid]  # (model, latent shape) -> full-resolution token grid
    text_tokens: Callable[[object, list], int]  # (model, records) -> number of text tokens


def level_grid(full: Grid, pixels: int, where: str) -> Grid:
    """The grid of a layer with `pixels` tokens per frame: full H x W shrunk by an integer factor."""
    if pixels <= 0 or (full.pixels % pixels):
        raise ValueError(f"{where}: {pixels} tokens per frame do not divide the {full.height}x{full.width} latent grid")
    f = math.isqrt(full.pixels // pixels)
    if f * f * pixels != full.pixels or full.height % f or full.width % f:
        raise ValueError(f"{where}: {pixels} tokens per frame are not the {full.height}x{full.width} grid shrunk evenly")
    return Grid(full.frames, full.height // f, full.width // f)


def assemble(family: Family, model, records: list, latent_shape: tuple, sample_index: int = -1, **graph_kw) -> FlowGraph:
    """The FlowGraph of one sample of one captured forward pass."""
    full = family.token_grid(model, tuple(latent_shape))
    B = latent_shape[0]  # every family's latent is batch-first
    s = sample_index % B
    L = family.text_tokens(model, records)
    layers, grid, first_grid = [], None, None
    for rec in records:
        kind = family.classify(rec.name)
        if kind == "skip":
            continue
        P = rec.probs
        where = f"{family.name} attention {rec.name} (probs {tuple(P.shape)})"
        if kind in ("spatial", "cross"):
            if P.shape[0] % B:
                raise ValueError(f"{where}: batch {P.shape[0]} is not a multiple of the latent batch {B}")
            F = P.shape[0] // B
            g = level_grid(Grid(F, full.height, full.width), P.shape[1], where)
            P = P.reshape(B, F, P.shape[1], P.shape[2])[s]
            if kind == "cross" and P.shape[-1] != L:
                raise ValueError(f"{where}: {P.shape[-1]} keys, expected the {L} text tokens")
            layer = SpatialSelf(P) if kind == "spatial" else Cross(P)
        elif kind == "temporal":
            if P.shape[0] % B:
                raise ValueError(f"{where}: batch {P.shape[0]} is not a multiple of the latent batch {B}")
            g = level_grid(Grid(P.shape[1], full.height, full.width), P.shape[0] // B, where)
            layer = TemporalSelf(P.reshape(B, g.pixels, g.frames, g.frames)[s])
        else:  # joint, text first
            N = P.shape[1] - L
            if N <= 0 or N % full.pixels:
                raise ValueError(f"{where}: {P.shape[1]} tokens are not {L} text tokens + whole frames of {full.pixels}")
            g = Grid(N // full.pixels, full.height, full.width)
            layer = Joint(P[s])
        if grid is not None and g != grid:
            if g.frames != grid.frames:
                raise ValueError(f"{where}: frame count changes from {grid.frames} to {g.frames} between layers")
            layers.append(Resize(g, "down" if g.tokens < grid.tokens else "up"))
        first_grid = first_grid or g
        grid = g
        layers.append(layer)
    if not layers:
        raise ValueError(f"{family.name}: no attention layer was captured; did the model run inside capture_attention?")
    if grid != first_grid:  # the heatmaps live on the output grid: bring it back to the input's
        layers.append(Resize(first_grid, "up" if first_grid.tokens > grid.tokens else "down"))
    return FlowGraph(first_grid, L, layers, **graph_kw)


def leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def text_tokens_from_cross(classify: Callable[[str], str]) -> Callable[[object, list], int]:
    """Number of text tokens = the key count of the cross-attention layers."""

    def text_tokens(model, records) -> int:
        keys = {r.keys for r in records if classify(r.name) == "cross"}
        if len(keys) != 1:
            raise ValueError(f"cannot tell the number of text tokens from the cross-attention key counts {sorted(keys)}")
        return keys.pop()

    return text_tokens


def bcfhw_grid(model, shape) -> Grid:
    """Token grid of a UNet latent [B, C, F, H, W]: one token per latent pixel."""
    return Grid(shape[2], shape[3], shape[4])
