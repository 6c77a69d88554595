"""Argument checks shared by every public function of vico_flow.

Errors are part of the API: each message names the argument, what it got and
what was expected. Wrong types and dtypes raise TypeError; wrong values and
shapes raise ValueError.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "float16, bfloat16, float32 or float64"


def check_float_tensor(x, name: str, fn: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} has dtype {x.dtype}; expected {_DTYPE_NAMES}")


def check_no_nan(x: Tensor, name: str, fn: str) -> None:
    """NaN is no capacity: refuse it (-inf means 'no edge', +inf 'unlimited')."""
    # One reduction without a mask tensor: max propagates NaN (+-inf are fine).
    if x.numel() and bool(torch.isnan(x.amax())):
        where = tuple(int(v) for v in torch.nonzero(torch.isnan(x))[0])
        raise ValueError(
            f"{fn}: {name} contains NaN (first at index {where}); expected finite values or +-inf "
            "(-inf = no edge, +inf = unlimited capacity)"
        )


def check_tau(tau, fn: str) -> float:
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"{fn}: tau must be a real number, got {type(tau).__name__}")
    tau = float(tau)
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{fn}: tau must be a finite number > 0, got {tau}")
    return tau


def check_matmul_operands(A, B, fn: str) -> tuple[torch.Size, int, int, int]:
    """Checks ``A [..., m, k]`` and ``B [..., k, n]``; returns (batch shape, m, k, n)."""
    check_float_tensor(A, "A", fn)
    check_float_tensor(B, "B", fn)
    if A.dtype != B.dtype:
        raise TypeError(f"{fn}: A and B must have the same dtype, got A {A.dtype} and B {B.dtype}")
    if A.device != B.device:
        raise ValueError(f"{fn}: A and B must be on the same device, got A on {A.device} and B on {B.device}")
    for name, x, dims in (("A", A, "[..., m, k]"), ("B", B, "[..., k, n]")):
        if x.dim() < 2:
            raise ValueError(
                f"{fn}: {name} must have at least 2 dimensions {dims}, got shape {tuple(x.shape)} "
                "(for a vector, unsqueeze it to a 1-row or 1-column matrix)"
            )
    if A.shape[-1] != B.shape[-2]:
        raise ValueError(
            f"{fn}: inner dimensions differ: A is {tuple(A.shape)} (k={A.shape[-1]}) and B is "
            f"{tuple(B.shape)} (k={B.shape[-2]}); expected A [..., m, k] and B [..., k, n]"
        )
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{fn}: batch dimensions of A {tuple(A.shape[:-2])} and B {tuple(B.shape[:-2])} do not broadcast"
        ) from None
    return batch, A.shape[-2], A.shape[-1], B.shape[-1]
