"""Graph builders, one module per diffusers model family.

`build_flow_graph(model, records, latent_shape, ...)` turns the attention
captured from one forward pass of `model` into a vico_flow.FlowGraph.
"""
from __future__ import annotations

from vico_flow.graph import FlowGraph

from . import cogvideox, latte, motion, unet3d
from .common import Family, assemble

FAMILIES = {f.FAMILY.name: f.FAMILY for f in (unet3d, motion, cogvideox, latte)}


def family_of(model) -> Family:
    """The family of a diffusers model (by class, subclasses included)."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(
        f"{type(model).__name__} is not supported; supported models: {', '.join(sorted(FAMILIES))}"
    )


def build_flow_graph(model, records, latent_shape, sample_index: int = -1, **graph_kw) -> FlowGraph:
    """FlowGraph of sample `sample_index` (default: the last, the conditional one
    under classifier-free guidance) of the captured forward pass. graph_kw:
    residual, sink_capacity, grouping (see vico_flow.FlowGraph)."""
    return assemble(family_of(model), model, list(records), tuple(latent_shape), sample_index, **graph_kw)


__all__ = ["FAMILIES", "build_flow_graph", "family_of"]
