"""vico_flow: tropical (max, min) matrix products and attention-flow attribution.

    import vico_flow
    C = vico_flow.minmax_matmul(A, B)             # max_r min(A[i,r], B[r,j]), exact
    S = vico_flow.soft_minmax_matmul(A, B, 0.01)  # log-sum-exp relaxation, differentiable
"""
from . import reference
from ._backends import available as available_backends
from .ops import minmax_matmul, minmax_matmul_with_argmax, soft_minmax_matmul

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "minmax_matmul",
    "minmax_matmul_with_argmax",
    "reference",
    "soft_minmax_matmul",
]
