"""Flow graphs with random attention, shaped like real networks: for
benchmarks, tests and demos (no model weights needed).

Attention rows are softmax of Gaussian logits, head-averaged-looking and >= 0.
"""
from __future__ import annotations

import torch

from .graph import Cross, DenseSelf, FlowGraph, Grid, Merge, Resize, Save, SpatialSelf, TemporalSelf


def random_attention(*shape, sharpness: float = 3.0, generator=None, dtype=torch.float32) -> torch.Tensor:
    logits = torch.randn(*shape, generator=generator, dtype=torch.float32) * sharpness
    return torch.softmax(logits, dim=-1).to(dtype)


def dense_chain_graph(tokens: int, layers: int, num_text: int = 8, seed: int = 0, **graph_kw) -> FlowGraph:
    """One Cross layer then `layers - 1` dense self layers over `tokens` tokens
    (a transformer without block structure): the exact-oracle benchmark graph."""
    gen = torch.Generator().manual_seed(seed)
    grid = Grid(1, 1, tokens)
    ls = [Cross(random_attention(1, tokens, num_text, generator=gen))]
    ls += [DenseSelf(random_attention(tokens, tokens, generator=gen)) for _ in range(layers - 1)]
    graph_kw.setdefault("grouping", "chained")
    return FlowGraph(grid, num_text, ls, **graph_kw)


def unet3d_graph(
    frames: int = 16,
    height: int = 40,
    width: int = 64,
    num_text: int = 77,
    blocks_down=(2, 2, 2, 0),
    blocks_up=(3, 3, 3, 0),
    spatial: bool = False,
    seed: int = 0,
    dtype=torch.float32,
    **graph_kw,
) -> FlowGraph:
    """A VideoCrafter2 / ModelScope-shaped 3D UNet: four resolution levels
    (height x width halving; blocks_down / blocks_up give the transformer blocks
    of each level, top level first), per transformer block [SpatialSelf (if
    `spatial`), Cross, TemporalSelf, TemporalSelf], a mid block, skip merges
    between matching levels. The defaults give the VideoCrafter2 token counts
    (16 frames of a 40x64 latent, 77 text tokens)."""
    gen = torch.Generator().manual_seed(seed)
    levels = [Grid(frames, height >> i, width >> i) for i in range(len(blocks_down))]

    def block(g: Grid) -> list:
        out = []
        if spatial:
            out.append(SpatialSelf(random_attention(g.frames, g.pixels, g.pixels, generator=gen, dtype=dtype)))
        out.append(Cross(random_attention(g.frames, g.pixels, num_text, generator=gen, dtype=dtype)))
        out += [TemporalSelf(random_attention(g.pixels, g.frames, g.frames, generator=gen, dtype=dtype)) for _ in range(2)]
        return out

    layers = []
    for lvl, g in enumerate(levels):
        for _ in range(blocks_down[lvl]):
            layers += block(g)
        layers.append(Save(f"level{lvl}"))
        if lvl + 1 < len(levels):
            layers.append(Resize(levels[lvl + 1], "down"))
    layers += block(levels[-1])  # mid block
    for lvl in range(len(levels) - 1, -1, -1):
        layers.append(Merge(f"level{lvl}"))
        for _ in range(blocks_up[lvl]):
            layers += block(levels[lvl])
        if lvl > 0:
            layers.append(Resize(levels[lvl - 1], "up"))
    return FlowGraph(levels[0], num_text, layers, **graph_kw)
