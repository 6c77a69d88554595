"""Typed description of an attention-flow graph (shared/design.md section 3).

Tokens are nodes, one copy per layer. A layer holds its head-averaged
attention exactly as captured (row = query, column = key); the big capacity
matrix W is never built. Video tokens live on a grid (frames, height, width),
indexed frame-major: ``token = f * H * W + h * W + w``.

Layer kinds:

=================  ============================  ===============================
kind               attention shape               meaning
=================  ============================  ===============================
SpatialSelf        [F, HW, HW]                   self-attention inside each frame
TemporalSelf       [HW, F, F]                    self-attention along time, per pixel
Cross              [F, HW, L]                    video queries attend to L text keys
Joint              [L + N, L + N] (text first)   MM-DiT attention over text and video
DenseSelf          [N, N]                        full self-attention over the N tokens
Resize             (a target grid)               down: max over children; up: nearest copy
Save / Merge       (a name)                      UNet skip: Merge takes the max with a Save
=================  ============================  ===============================

Capacities: with ``residual`` "add" (paper, ``P + I``), "avg" (Abnar &
Zuidema, ``(P + I) / 2``) or "none" (``P``), a self layer's edge from key k to
query q has capacity ``a * P[q, k] + s * [q == k]`` with ``(a, s)`` = (1, 1),
(0.5, 0.5) or (1, 0); a Cross layer connects the source text token t to video
token q with ``a * P[q, t]`` and keeps each video token's own flow through a
skip edge of capacity s.

Grouping: "grouped" (the paper, appendix H) starts a group at every Cross or
Joint layer, runs it to the next one, resizes each group's map to the output
grid and averages; "chained" follows one path through the whole network.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor

RESIDUALS = {"add": (1.0, 1.0), "avg": (0.5, 0.5), "none": (1.0, 0.0)}
GROUPINGS = ("grouped", "chained")


@dataclass(frozen=True)
class Grid:
    """Video token layout of a layer: frames x height x width."""

    frames: int
    height: int
    width: int

    def __post_init__(self):
        for name in ("frames", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Grid.{name} must be a positive int, got {v!r}")

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


@dataclass(frozen=True)
class SpatialSelf:
    attn: Tensor  # [F, HW, HW]


@dataclass(frozen=True)
class TemporalSelf:
    attn: Tensor  # [HW, F, F]


@dataclass(frozen=True)
class Cross:
    attn: Tensor  # [F, HW, L]


@dataclass(frozen=True)
class Joint:
    attn: Tensor  # [L + N, L + N], text first


@dataclass(frozen=True)
class DenseSelf:
    attn: Tensor  # [N, N]


@dataclass(frozen=True)
class Resize:
    grid: Grid
    mode: str  # "down" | "up"


@dataclass(frozen=True)
class Save:
    name: str


@dataclass(frozen=True)
class Merge:
    name: str


Layer = Union[SpatialSelf, TemporalSelf, Cross, Joint, DenseSelf, Resize, Save, Merge]
ATTENTION_LAYERS = (SpatialSelf, TemporalSelf, Cross, Joint, DenseSelf)


def _expected_shape(layer, grid: Grid, num_text: int) -> tuple[int, ...]:
    if isinstance(layer, SpatialSelf):
        return (grid.frames, grid.pixels, grid.pixels)
    if isinstance(layer, TemporalSelf):
        return (grid.pixels, grid.frames, grid.frames)
    if isinstance(layer, Cross):
        return (grid.frames, grid.pixels, num_text)
    if isinstance(layer, Joint):
        return (num_text + grid.tokens, num_text + grid.tokens)
    return (grid.tokens, grid.tokens)


def resize_factors(src: Grid, dst: Grid, mode: str) -> tuple[int, int, int]:
    """Integer (frames, height, width) factors between two grids, checked."""
    big, small = (src, dst) if mode == "down" else (dst, src)
    factors = []
    for name in ("frames", "height", "width"):
        b, s = getattr(big, name), getattr(small, name)
        if b % s:
            raise ValueError(
                f"Resize {mode} from grid {src} to {dst}: {name} {b} is not a multiple of {s}"
            )
        factors.append(b // s)
    return tuple(factors)


@dataclass
class FlowGraph:
    """An attention-flow graph: layers in execution order over an input grid.

    Args:
        grid: video token grid seen by the first layer.
        num_text: number of text tokens L (the possible flow sources).
        layers: the layers, in the order the network runs them.
        residual: "add" (default, paper), "avg" or "none" (see module doc).
        sink_capacity: capacity of the edge from every output video token to the sink.
        grouping: "grouped" (default, paper) or "chained".
    """

    grid: Grid
    num_text: int
    layers: list = field(default_factory=list)
    residual: str = "add"
    sink_capacity: float = 1.0
    grouping: str = "grouped"

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------ checks
    def validate(self) -> None:
        """Checks that shapes chain and attention is finite and >= 0; errors name the layer."""
        if not isinstance(self.grid, Grid):
            raise TypeError(f"FlowGraph.grid must be a Grid, got {type(self.grid).__name__}")
        if not isinstance(self.num_text, int) or isinstance(self.num_text, bool) or self.num_text < 1:
            raise ValueError(f"FlowGraph.num_text must be a positive int, got {self.num_text!r}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"FlowGraph.residual must be one of {sorted(RESIDUALS)}, got {self.residual!r}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"FlowGraph.grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        cap = self.sink_capacity
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or math.isnan(cap) or cap <= 0:
            raise ValueError(f"FlowGraph.sink_capacity must be a number > 0 (inf allowed), got {cap!r}")
        if not any(isinstance(l, (Cross, Joint)) for l in self.layers):
            raise ValueError("FlowGraph needs at least one Cross or Joint layer: text flow enters the video there")
        grid, saved, dtype, device = self.grid, {}, None, None
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({type(layer).__name__})"
            if isinstance(layer, ATTENTION_LAYERS):
                P = layer.attn
                if not isinstance(P, Tensor):
                    raise TypeError(f"{where}: attn must be a torch.Tensor, got {type(P).__name__}")
                if not P.is_floating_point():
                    raise TypeError(f"{where}: attn has dtype {P.dtype}; expected a floating dtype")
                want = _expected_shape(layer, grid, self.num_text)
                if tuple(P.shape) != want:
                    raise ValueError(
                        f"{where}: attention has shape {tuple(P.shape)}; expected {want} for grid {grid} "
                        f"and {self.num_text} text tokens"
                    )
                if dtype is None:
                    dtype, device = P.dtype, P.device
                elif P.dtype != dtype or P.device != device:
                    raise ValueError(
                        f"{where}: attn is {P.dtype} on {P.device}, but earlier layers are {dtype} on {device}"
                    )
                if P.numel():
                    if not bool(torch.isfinite(P).all()):
                        raise ValueError(f"{where}: attention must be finite (no NaN or inf)")
                    if bool((P < 0).any()):
                        raise ValueError(f"{where}: attention must be >= 0 (it is a probability), got {P.min().item()}")
            elif isinstance(layer, Resize):
                if layer.mode not in ("down", "up"):
                    raise ValueError(f"{where}: mode must be 'down' or 'up', got {layer.mode!r}")
                if not isinstance(layer.grid, Grid):
                    raise TypeError(f"{where}: grid must be a Grid, got {type(layer.grid).__name__}")
                try:
                    resize_factors(grid, layer.grid, layer.mode)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                grid = layer.grid
            elif isinstance(layer, Save):
                saved[layer.name] = grid
            elif isinstance(layer, Merge):
                if layer.name not in saved:
                    raise ValueError(f"{where}: no earlier Save named {layer.name!r}")
                if saved[layer.name] != grid:
                    raise ValueError(
                        f"{where}: Save {layer.name!r} has grid {saved[layer.name]}, but the flow here is on {grid}"
                    )
            else:
                raise TypeError(f"{where}: not a flow-graph layer")
        self._dtype, self._device = dtype, device

    # ------------------------------------------------------------ derived facts
    @property
    def output_grid(self) -> Grid:
        grid = self.grid
        for layer in self.layers:
            if isinstance(layer, Resize):
                grid = layer.grid
        return grid

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device=None, dtype=None) -> "FlowGraph":
        """The same graph with every attention tensor moved by ``Tensor.to(device,
        dtype)``, e.g. ``graph.to("cuda")`` to propagate on the GPU. Differentiable:
        gradients of the new graph's attention reach the original tensors."""
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"FlowGraph.to: dtype must be a floating torch.dtype, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"FlowGraph.to: device must name a torch device (e.g. 'cuda'), got {device!r}") from e
        layers = [
            dataclasses.replace(l, attn=l.attn.to(device=device, dtype=dtype)) if hasattr(l, "attn") else l
            for l in self.layers
        ]
        return dataclasses.replace(self, layers=layers)

    def grids(self) -> list[Grid]:
        """The grid each layer sees at its input."""
        out, grid = [], self.grid
        for layer in self.layers:
            out.append(grid)
            if isinstance(layer, Resize):
                grid = layer.grid
        return out

    @property
    def sink_value(self) -> float:
        """The sink capacity as the graph's dtype represents it (0.05 in float32 is
        not the double 0.05); what both the propagation and the oracle use."""
        return float(torch.tensor(self.sink_capacity, dtype=self._dtype))

    def residual_weights(self) -> tuple[float, float]:
        """(attention weight a, skip weight s) of the residual convention."""
        return RESIDUALS[self.residual]

    def self_capacity(self, P: Tensor) -> Tensor:
        """Capacities ``a * P + s * I`` of a self layer (last two dims square); one
        source of truth for the propagation and the exact oracle."""
        a, s = self.residual_weights()
        W = P * a if a != 1.0 else P
        if s:
            eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
            W = W + s * eye
        return W

    def groups(self) -> list[tuple[int, int]]:
        """(start, end) layer ranges of the groups: each starts at a Cross or Joint
        layer and runs to the next one; "chained" has one group from the first."""
        starts = [i for i, l in enumerate(self.layers) if isinstance(l, (Cross, Joint))]
        if self.grouping == "chained":
            return [(starts[0], len(self.layers))]
        return [(s, e) for s, e in zip(starts, starts[1:] + [len(self.layers)])]
