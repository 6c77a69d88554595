"""Host side of the Triton backend: tile choice, launches, dtype handling.

Same contract as every backend (vico_flow/_backends.py): checked, broadcast
3-D operands A [b, m, k], B [b, k, n] of one floating dtype.
"""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import torch
import triton

from . import kernels

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


def _compute(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tiles(m: int, n: int, soft: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_K): thin flow rows (m <= 16) get a short, wide
    tile; the [BM, BK, BN] triple block stays within the register budget."""
    if INTERPRETED:  # every program step costs ms there: few, small programs
        return 16, 16, 8
    bm = 16 if m <= 16 else (32 if soft else 64)
    bn = 64 if (soft or m <= 16) else 64
    bk = 4 if soft else 8
    return bm, bn, bk


def _grid(m, n, batch, bm, bn):
    return (triton.cdiv(m, bm) * triton.cdiv(n, bn), batch)


def hard_forward(A, B, with_winners: bool):
    batch, m, k = A.shape
    n = B.shape[2]
    ct = _compute(A.dtype)
    C = torch.empty((batch, m, n), dtype=ct, device=A.device)
    win = torch.empty((batch, m, n) if with_winners else (0,), dtype=torch.int32, device=A.device)
    if k == 0:  # empty max: -inf, winner index 0 by convention
        C.fill_(-math.inf)
        win.zero_()
    elif C.numel():
        bm, bn, bk = _tiles(m, n, soft=False)
        kernels.hard_fwd_kernel[_grid(m, n, batch, bm, bn)](
            A, B, C, win, m, n, k,
            *A.stride(), *B.stride(), *C.stride(),
            WITH_WINNERS=with_winners, F64=ct == torch.float64,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        )
    return C.to(A.dtype), win


def hard_backward(grad, A, B, winners):
    batch, m, k = A.shape
    n = B.shape[2]
    ct = _compute(A.dtype)
    dA = torch.zeros((batch, m, k), dtype=ct, device=A.device)
    dB = torch.zeros((batch, k, n), dtype=ct, device=A.device)
    if grad.numel() and k > 0:
        bm, bn = (16, 16) if INTERPRETED else (32, 64)
        kernels.hard_bwd_kernel[(triton.cdiv(m, bm), batch, triton.cdiv(n, bn))](
            grad.to(ct).contiguous(), winners.contiguous(), dA, dB, m, n, k, BLOCK_M=bm, BLOCK_N=bn
        )
    return dA.to(A.dtype), dB.to(B.dtype)


def soft_forward(A, B, tau: float):
    batch, m, k = A.shape
    n = B.shape[2]
    H, _ = hard_forward(A.to(_compute(A.dtype)), B.to(_compute(A.dtype)), False)
    C = torch.empty((batch, m, n), dtype=A.dtype, device=A.device)
    if C.numel() and k > 0:
        bm, bn, bk = _tiles(m, n, soft=True)
        kernels.soft_fwd_kernel[_grid(m, n, batch, bm, bn)](
            A, B, H.contiguous(), C, m, n, k, *A.stride(), *B.stride(),
            LOG2E / tau, tau, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        )
    elif C.numel():
        C.fill_(-math.inf)
    return C


def _grad_rhs(A, B, C, G, tau: float, out):
    """out[b, r, j] = dC/dB for C = A (soft max,min) B; any strides everywhere."""
    batch, m, k = A.shape
    n = B.shape[2]
    if out.numel() == 0:
        return
    if m == 0:
        out.zero_()
        return
    bm, bn, bk = _tiles(k, n, soft=True)
    kernels.soft_grad_rhs_kernel[_grid(k, n, batch, bm, bn)](
        A, B, C, G, out, m, n, k,
        *A.stride(), *B.stride(), *C.stride(), *G.stride(), *out.stride(),
        LOG2E / tau, F64=_compute(A.dtype) == torch.float64,
        BLOCK_R=bm, BLOCK_N=bn, BLOCK_I=bk, GROUP_M=8,
    )


def soft_backward(grad, A, B, C, tau: float):
    ct = _compute(A.dtype)
    dA = torch.empty(A.shape, dtype=ct, device=A.device)
    dB = torch.empty(B.shape, dtype=ct, device=A.device)
    _grad_rhs(A, B, C, grad, tau, dB)
    # C^T = B^T (max,min) A^T: dA^T is its right-hand gradient, written through a view.
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    _grad_rhs(t(B), t(A), t(C), t(grad), tau, t(dA))
    return dA.to(A.dtype), dB.to(B.dtype)


BACKEND = SimpleNamespace(
    name="triton",
    devices=("cpu",) if INTERPRETED else ("cuda",),
    hard_forward=hard_forward,
    hard_backward=hard_backward,
    soft_forward=soft_forward,
    soft_backward=soft_backward,
)
