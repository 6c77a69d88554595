"""vico_flow: tropical (max, min) matrix products and attention-flow attribution.

    import vico_flow
    C = vico_flow.minmax_matmul(A, B)             # max_r min(A[i,r], B[r,j]), exact
    S = vico_flow.soft_minmax_matmul(A, B, 0.01)  # log-sum-exp relaxation, differentiable
    r = vico_flow.st_flow(graph, sources=[2, 5])  # attention flow of text tokens (FlowGraph)
"""
from . import reference
from ._backends import available as available_backends
from ._backends import empty_cpu_cache
from .flow import FlowResult, attention_rollout, cross_attention_attribution, st_flow
from .graph import Cross, DenseSelf, FlowGraph, Grid, Joint, Merge, Resize, Save, SpatialSelf, TemporalSelf
from .ops import minmax_chain, minmax_matmul, minmax_matmul_with_argmax, soft_minmax_matmul

__version__ = "0.1.0"

__all__ = [
    "Cross",
    "DenseSelf",
    "FlowGraph",
    "FlowResult",
    "Grid",
    "Joint",
    "Merge",
    "Resize",
    "Save",
    "SpatialSelf",
    "TemporalSelf",
    "attention_rollout",
    "available_backends",
    "cross_attention_attribution",
    "empty_cpu_cache",
    "minmax_chain",
    "minmax_matmul",
    "minmax_matmul_with_argmax",
    "reference",
    "soft_minmax_matmul",
    "st_flow",
]
