"""Reference tropical products: slow, obvious, and the truth for every kernel.

Each function is the formula of shared/design.md section 2 written with plain
torch broadcasting (min of all triples, then max; soft via logaddexp and
logsumexp), chunked over rows so that no call materialises more than
`max_bytes` of triples. Operands are checked, broadcast ``[..., m, k] x
[..., k, n]`` tensors (vico_flow.ops does the checking for the public API).

Half types compute in float32 and return the input dtype, like the kernels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_MAX_BYTES = 256 * 2**20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_3d(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    m, k = A.shape[-2:]
    n = B.shape[-1]
    A3 = A.expand(*batch, m, k).reshape(math.prod(batch), m, k)
    B3 = B.expand(*batch, k, n).reshape(math.prod(batch), k, n)
    return A3, B3, tuple(batch)


def _row_chunks(batch: int, m: int, k: int, n: int, itemsize: int, max_bytes: int):
    """Yields (b0, b1, i0, i1) blocks whose [b, rows, k, n] triple tensor fits max_bytes."""
    per_row = max(1, k * n * itemsize)
    rows = max(1, max_bytes // per_row)
    if rows >= m:
        per_batch = max(1, rows // max(m, 1))
        for b0 in range(0, batch, per_batch):
            yield b0, min(batch, b0 + per_batch), 0, m
    else:
        for b0 in range(batch):
            for i0 in range(0, m, rows):
                yield b0, b0 + 1, i0, min(m, i0 + rows)


def minmax_matmul_argmax(A: Tensor, B: Tensor, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Tensor, Tensor]:
    """``C[..., i, j] = max_r min(A[..., i, r], B[..., r, j])`` and the winning r.

    The winning r is the first r reaching the max (``torch.max`` over a dim
    returns the first maximal index). Inner size 0 gives -inf and index 0.
    """
    A3, B3, batch = _as_3d(A, B)
    nb, m, k = A3.shape
    n = B3.shape[-1]
    C = torch.full((nb, m, n), -math.inf, dtype=A.dtype, device=A.device)
    idx = torch.zeros((nb, m, n), dtype=torch.int64, device=A.device)
    if k > 0:
        for b0, b1, i0, i1 in _row_chunks(nb, m, k, n, A.element_size(), max_bytes):
            triples = torch.minimum(A3[b0:b1, i0:i1, :, None], B3[b0:b1, None, :, :])
            C[b0:b1, i0:i1], idx[b0:b1, i0:i1] = triples.max(dim=-2)
    return C.reshape(*batch, m, n), idx.reshape(*batch, m, n)


def minmax_matmul(A: Tensor, B: Tensor, max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """The hard tropical product (values only)."""
    return minmax_matmul_argmax(A, B, max_bytes)[0]


def encode_winners(A: Tensor, B: Tensor, argmax: Tensor) -> Tensor:
    """What the hard op saves for backward: int32 ``r`` where the gradient of
    output (i, j) goes to A[i, r] (A <= B there), ``~r = -r-1`` where it goes to
    B[r, j]. Operands are broadcast 3-D ``[b, m, k] x [b, k, n]``."""
    idx = argmax.long()
    if A.shape[-1] == 0:
        return torch.zeros(idx.shape, dtype=torch.int32, device=idx.device)
    a_sel = A.expand(idx.shape[0], -1, -1).gather(2, idx)
    b_sel = B.expand(idx.shape[0], -1, -1).gather(1, idx)
    return torch.where(a_sel <= b_sel, idx, ~idx).to(torch.int32)


def decode_winners(winners: Tensor) -> Tensor:
    """The winning r of each output from :func:`encode_winners`' format."""
    return torch.where(winners < 0, ~winners, winners)


def scatter_winners(grad: Tensor, A: Tensor, B: Tensor, winners: Tensor) -> tuple[Tensor, Tensor]:
    """Hard gradients from :func:`encode_winners`' output, for broadcast 3-D
    operands ``[b, m, k] x [b, k, n]``: each output's gradient is added to the
    one element its winner names."""
    ct = _compute_dtype(A.dtype)
    g = grad.to(ct)
    dA = torch.zeros(A.shape, dtype=ct, device=A.device)
    dB = torch.zeros(B.shape, dtype=ct, device=B.device)
    if A.shape[-1] > 0 and winners.numel() > 0:
        to_a = winners >= 0
        idx = decode_winners(winners).long()
        dA.scatter_add_(2, idx, torch.where(to_a, g, 0))
        dB.scatter_add_(1, idx, torch.where(to_a, 0, g))
    return dA.to(A.dtype), dB.to(B.dtype)


def minmax_matmul_backward(grad: Tensor, A: Tensor, B: Tensor, argmax: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the hard product for broadcast 3-D operands ``[b, m, k] x [b, k, n]``.

    Output (i, j) sends its gradient to A[i, r] if A[i, r] <= B[r, j] (A wins
    ties), else to B[r, j], where r = argmax[i, j].
    """
    return scatter_winners(grad, A, B, encode_winners(A, B, argmax))


def _softmin(a: Tensor, b: Tensor, tau: float) -> Tensor:
    return -tau * torch.logaddexp(-a / tau, -b / tau)


def soft_minmax_matmul(A: Tensor, B: Tensor, tau: float = 0.01, max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """``C = tau * log sum_r exp(softmin(A[i,r], B[r,j]) / tau)``, ``softmin = -tau log(e^{-a/tau} + e^{-b/tau})``."""
    ct = _compute_dtype(A.dtype)
    A3, B3, batch = _as_3d(A.to(ct), B.to(ct))
    nb, m, k = A3.shape
    n = B3.shape[-1]
    C = torch.full((nb, m, n), -math.inf, dtype=ct, device=A.device)
    if k > 0:
        # logaddexp/logsumexp keep several [rows, k, n] temporaries alive.
        for b0, b1, i0, i1 in _row_chunks(nb, m, k, n, 4 * A3.element_size(), max_bytes):
            s = _softmin(A3[b0:b1, i0:i1, :, None], B3[b0:b1, None, :, :], tau)
            C[b0:b1, i0:i1] = tau * torch.logsumexp(s / tau, dim=-2)
    return C.reshape(*batch, m, n).to(A.dtype)


def soft_minmax_matmul_backward(
    grad: Tensor, A: Tensor, B: Tensor, C: Tensor, tau: float, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of the soft product for 3-D ``[b, m, k] x [b, k, n]`` operands.

    ``dA[i,r] = sum_j g p q``, ``dB[r,j] = sum_i g p (1 - q)`` with
    ``p = exp((softmin - C)/tau)`` and ``q = sigmoid((B - A)/tau)``. Outputs
    with a non-finite C pass no gradient.
    """
    ct = _compute_dtype(A.dtype)
    A_, B_, C_, g = A.to(ct), B.to(ct), C.to(ct), grad.to(ct)
    nb, m, k = A_.shape
    n = B_.shape[-1]
    finite = torch.isfinite(C_)
    g = torch.where(finite, g, 0)
    C_ = torch.where(finite, C_, 0)
    dA = torch.zeros((nb, m, k), dtype=ct, device=A.device)
    dB = torch.zeros((nb, k, n), dtype=ct, device=A.device)
    if k > 0:
        for b0, b1, i0, i1 in _row_chunks(nb, m, k, n, 6 * A_.element_size(), max_bytes):
            a = A_[b0:b1, i0:i1, :, None]
            b = B_[b0:b1, None, :, :]
            c = C_[b0:b1, i0:i1, None, :]
            gg = g[b0:b1, i0:i1, None, :]
            p = torch.exp((_softmin(a, b, tau) - c) / tau)
            q = torch.where(a == b, 0.5, torch.sigmoid((b - a) / tau))
            w = torch.nan_to_num(gg * p, nan=0.0)
            dA[b0:b1, i0:i1] += (w * q).sum(-1)
            dB[b0:b1] += (w * (1 - q)).sum(-3)
    return dA.to(A.dtype), dB.to(B.dtype)


def soft_minmax_bounds(hard: Tensor, tau: float, k: int) -> tuple[Tensor, Tensor]:
    """The bounds every soft product satisfies: ``hard - tau log 2 <= soft <= hard + tau log k``."""
    return hard - tau * math.log(2.0), hard + tau * math.log(max(k, 1))
