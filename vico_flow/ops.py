"""The tropical (max, min) matrix products as torch custom ops.

Public functions take ``torch.matmul``-shaped operands (batch dims broadcast),
check them, expand the batch dims where A's and B's differ, and call one of
the custom ops. The product ops take ``A [*batch, m, k]`` and
``B [*batch, k, n]`` with the same batch dims (none for plain matrices) and
flatten them to the backends' 3-D operands in their bodies, where autograd
records nothing: an expand or reshape in the public function is a node of the
autograd graph, run again on every backward (they made a hard fwd+bwd at
1024^3 ~0.2-0.3 ms longer, run on caches the kernels had just flushed). The
ops carry fake kernels (torch.compile, meta tensors) and autograd formulas;
their bodies pick the backend named by a string argument.

Ops (namespace ``vico_flow``):
    minmax_mm(A, B, backend, with_argmax) -> (C, winners)
    minmax_mm_backward(grad, A, B, winners, backend) -> (dA, dB)
    soft_minmax_mm(A, B, tau, backend) -> C
    soft_minmax_mm_backward(grad, A, B, C, tau, backend) -> (dA, dB)
    minmax_chain(F, Ws, tau, soft, backend) -> F (max,min) W_0 (max,min) W_1 ...

and, defined by the compiled extension (csrc/cpu/dispatcher_ops.cpp) with
their autograd in C++, the CPU backend's own ops, which the public functions
call for that backend (no Python between the dispatcher and the kernels: on
caches the kernels had just flushed, the custom-op layers took ~0.25 ms of a
1024^3 hard forward and ~0.7 ms of its fwd+bwd):
    minmax_mm_cpu(A, B, with_argmax), minmax_mm_backward_cpu(grad, A, B, winners),
    soft_minmax_mm_cpu(A, B, tau), soft_minmax_mm_backward_cpu(grad, A, B, C, tau)
Their fake kernels are here; the autograd formulas of the generic ops call
the same backward ops for backend "cpu".

`winners` (int32 per output, empty when with_argmax is False) holds the first
r reaching the max, as r when the gradient goes to A and ~r when it goes to B
(reference.encode_winners); the hard backward reads nothing else.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _backends
from .reference import decode_winners
from ._checks import check_float_tensor, check_matmul_operands, check_no_nan, check_tau

__all__ = ["minmax_chain", "minmax_matmul", "minmax_matmul_with_argmax", "soft_minmax_matmul"]


def _check_values(A: Tensor, B: Tensor, fn: str) -> None:
    # Inside the op body (not the Python wrapper) so that torch.compile sees no
    # data-dependent branch; indices refer to the operand with its batch dims
    # broadcast.
    check_no_nan(A, "A", fn)
    check_no_nan(B, "B", fn)


def _as_3d(X: Tensor) -> Tensor:
    """``X [*batch, r, c]`` as ``[prod(batch), r, c]`` (a view where the strides allow)."""
    return X.reshape(math.prod(X.shape[:-2]), X.shape[-2], X.shape[-1])


def _product_shape(A: Tensor, B: Tensor) -> tuple[int, ...]:
    return (*A.shape[:-1], B.shape[-1])


def _hard_outputs_like(A: Tensor, B: Tensor, with_argmax: bool) -> tuple[Tensor, Tensor]:
    """Empty (C, winners) of the hard product: the body of its ops' fake kernels."""
    shape = _product_shape(A, B)
    return A.new_empty(shape), A.new_empty(shape if with_argmax else (0,), dtype=torch.int32)


def _soft_output_like(A: Tensor, B: Tensor) -> Tensor:
    """Empty C of the soft product: the body of its ops' fake kernels."""
    return A.new_empty(_product_shape(A, B))


def _grads_like(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Empty (dA, dB): the body of the backward ops' fake kernels."""
    return A.new_empty(A.shape), B.new_empty(B.shape)


def _refusing_nan(call, A: Tensor, B: Tensor, fn: str, refuses_nan: bool):
    """``call()`` on operands without NaN.

    Kernels that look for NaN themselves as they read the operands
    (``refuses_nan``: the CPU kernels check each packed block) skip the
    separate pass over A and B; when such a kernel refuses an operand, the
    scan runs to name it and the first NaN. The scan also runs when the
    output is empty, since the kernels then read nothing.
    """
    if not refuses_nan or A.shape[-2] == 0 or B.shape[-1] == 0:
        _check_values(A, B, fn)
        return call()
    try:
        return call()
    except ValueError:
        _check_values(A, B, fn)
        raise


def _forward(backend: str, kernel: str, A: Tensor, B: Tensor, fn: str, *args):
    """Runs a backend's forward kernel on operands without NaN, flattened to 3-D."""
    impl = _backends.get(backend)
    call = lambda: getattr(impl, kernel)(_as_3d(A), _as_3d(B), *args)  # noqa: E731
    return _refusing_nan(call, A, B, fn, getattr(impl, "refuses_nan", False))


# --------------------------------------------------------------------------- hard
@torch.library.custom_op("vico_flow::minmax_mm", mutates_args=())
def _minmax_mm(A: Tensor, B: Tensor, backend: str, with_argmax: bool) -> tuple[Tensor, Tensor]:
    C, winners = _forward(backend, "hard_forward", A, B, "minmax_matmul", with_argmax)
    shape = _product_shape(A, B)
    return C.reshape(shape), winners.reshape(shape) if with_argmax else winners


@_minmax_mm.register_fake
def _(A, B, backend, with_argmax):
    return _hard_outputs_like(A, B, with_argmax)


@torch.library.custom_op("vico_flow::minmax_mm_backward", mutates_args=())
def _minmax_mm_backward(grad: Tensor, A: Tensor, B: Tensor, argmax: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    dA, dB = _backends.get(backend).hard_backward(_as_3d(grad), _as_3d(A), _as_3d(B), _as_3d(argmax))
    return dA.reshape(A.shape), dB.reshape(B.shape)


@_minmax_mm_backward.register_fake
def _(grad, A, B, argmax, backend):
    return _grads_like(A, B)


def _minmax_setup(ctx, inputs, output):
    A, B, backend, with_argmax = inputs
    ctx.save_for_backward(A, B, output[1])
    ctx.backend = backend
    ctx.with_argmax = with_argmax
    # The winners output (int32) never has a gradient; without this, autograd
    # would allocate and zero one as large as C on every backward.
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _minmax_bwd(ctx, grad_c, _grad_argmax):
    if grad_c is None:  # C took no part in what was differentiated
        return None, None, None, None
    A, B, argmax = ctx.saved_tensors
    if not ctx.with_argmax:
        raise RuntimeError(
            "vico_flow::minmax_mm was called with with_argmax=False, so it kept no argmax to route "
            "gradients; call vico_flow.minmax_matmul (it asks for the argmax whenever an input requires grad)"
        )
    dA, dB = _hard_grads(grad_c, A, B, argmax, ctx.backend)
    return dA, dB, None, None


def _hard_grads(grad: Tensor, A: Tensor, B: Tensor, winners: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """(dA, dB) of the hard product through the backend's backward op."""
    if backend == "cpu":
        return torch.ops.vico_flow.minmax_mm_backward_cpu.default(grad, A, B, winners)
    return _minmax_mm_backward(grad.contiguous(), A, B, winners, backend)


_minmax_mm.register_autograd(_minmax_bwd, setup_context=_minmax_setup)


# --------------------------------------------------------------------------- soft
@torch.library.custom_op("vico_flow::soft_minmax_mm", mutates_args=())
def _soft_minmax_mm(A: Tensor, B: Tensor, tau: float, backend: str) -> Tensor:
    C = _forward(backend, "soft_forward", A, B, "soft_minmax_matmul", tau)
    return C.reshape(_product_shape(A, B))


@_soft_minmax_mm.register_fake
def _(A, B, tau, backend):
    return _soft_output_like(A, B)


@torch.library.custom_op("vico_flow::soft_minmax_mm_backward", mutates_args=())
def _soft_minmax_mm_backward(
    grad: Tensor, A: Tensor, B: Tensor, C: Tensor, tau: float, backend: str
) -> tuple[Tensor, Tensor]:
    dA, dB = _backends.get(backend).soft_backward(_as_3d(grad), _as_3d(A), _as_3d(B), _as_3d(C), tau)
    return dA.reshape(A.shape), dB.reshape(B.shape)


@_soft_minmax_mm_backward.register_fake
def _(grad, A, B, C, tau, backend):
    return _grads_like(A, B)


def _soft_setup(ctx, inputs, output):
    A, B, tau, backend = inputs
    ctx.save_for_backward(A, B, output)  # recompute from A, B, C: O(inputs + outputs)
    ctx.tau = tau
    ctx.backend = backend


def _soft_bwd(ctx, grad_c):
    A, B, C = ctx.saved_tensors
    dA, dB = _soft_grads(grad_c, A, B, C, ctx.tau, ctx.backend)
    return dA, dB, None, None


def _soft_grads(grad: Tensor, A: Tensor, B: Tensor, C: Tensor, tau: float, backend: str) -> tuple[Tensor, Tensor]:
    """(dA, dB) of the soft product through the backend's backward op."""
    if backend == "cpu":
        return torch.ops.vico_flow.soft_minmax_mm_backward_cpu.default(grad, A, B, C, tau)
    return _soft_minmax_mm_backward(grad.contiguous(), A, B, C, tau, backend)


_soft_minmax_mm.register_autograd(_soft_bwd, setup_context=_soft_setup)


# --------------------------------------------------------------------------- CPU backend ops
# Defined by the compiled extension (see the module docstring); their fake kernels.
if _backends.compiled_extension() is not None:

    @torch.library.register_fake("vico_flow::minmax_mm_cpu")
    def _(A, B, with_argmax):
        return _hard_outputs_like(A, B, with_argmax)

    @torch.library.register_fake("vico_flow::minmax_mm_backward_cpu")
    def _(grad, A, B, winners):
        return _grads_like(A, B)

    @torch.library.register_fake("vico_flow::soft_minmax_mm_cpu")
    def _(A, B, tau):
        return _soft_output_like(A, B)

    @torch.library.register_fake("vico_flow::soft_minmax_mm_backward_cpu")
    def _(grad, A, B, C, tau):
        return _grads_like(A, B)


def _hard_product(A: Tensor, B: Tensor, backend: str, with_argmax: bool, fn: str) -> tuple[Tensor, Tensor]:
    """(C, winners) of operands with equal batch dims, through the backend's op."""
    if backend != "cpu":
        return _minmax_mm(A, B, backend, with_argmax)
    op = torch.ops.vico_flow.minmax_mm_cpu.default
    return _refusing_nan(lambda: op(A, B, with_argmax), A, B, fn, refuses_nan=True)


def _soft_product(A: Tensor, B: Tensor, tau: float, backend: str, fn: str) -> Tensor:
    """The soft product of operands with equal batch dims, through the backend's op."""
    if backend != "cpu":
        return _soft_minmax_mm(A, B, tau, backend)
    op = torch.ops.vico_flow.soft_minmax_mm_cpu.default
    return _refusing_nan(lambda: op(A, B, tau), A, B, fn, refuses_nan=True)


# --------------------------------------------------------------------------- public API
def _broadcast(A: Tensor, B: Tensor, fn: str) -> tuple[Tensor, Tensor]:
    """Checks the operands and expands their batch dims to the common ones,
    only where they differ (see the module docstring)."""
    batch, m, k, n = check_matmul_operands(A, B, fn)
    if A.shape[:-2] != batch:
        A = A.expand(*batch, m, k)
    if B.shape[:-2] != batch:
        B = B.expand(*batch, k, n)
    return A, B


def minmax_matmul_with_argmax(A: Tensor, B: Tensor, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Like :func:`minmax_matmul`, also returning the winning inner index.

    Returns ``(C, argmax)`` with ``argmax[..., i, j]`` (int32) the first r with
    ``min(A[..., i, r], B[..., r, j]) == C[..., i, j]`` (0 when k == 0).
    """
    fn = "minmax_matmul_with_argmax"
    A, B = _broadcast(A, B, fn)
    backend = _backends.resolve(backend, A.device, fn)
    C, winners = _hard_product(A, B, backend, True, fn)
    return C, decode_winners(winners)


def minmax_matmul(A: Tensor, B: Tensor, *, backend: str = "auto") -> Tensor:
    """Tropical (max, min) product: ``C[..., i, j] = max_r min(A[..., i, r], B[..., r, j])``.

    Shapes follow ``torch.matmul`` for operands of 2 or more dims (batch dims
    broadcast); inner size 0 gives -inf. dtypes float16, bfloat16, float32,
    float64 (the same for A and B); the result is bit-identical to
    :func:`vico_flow.reference.minmax_matmul`. ``-inf`` means "no edge",
    ``+inf`` "unlimited"; NaN raises ValueError.

    Gradient: each output's gradient goes to one operand element: the first r
    reaching the max, then A[i, r] if A[i, r] <= B[r, j], else B[r, j].

    backend: "auto" (compiled kernels for the device, else the reference),
    "cpu", "cuda", "triton" or "reference".
    """
    fn = "minmax_matmul"
    A, B = _broadcast(A, B, fn)
    backend = _backends.resolve(backend, A.device, fn)
    with_argmax = torch.is_grad_enabled() and (A.requires_grad or B.requires_grad)
    C, _ = _hard_product(A, B, backend, with_argmax, fn)
    return C


def soft_minmax_matmul(A: Tensor, B: Tensor, tau: float = 0.01, *, backend: str = "auto") -> Tensor:
    """Soft (log-sum-exp) tropical product at temperature ``tau > 0``.

    ``C[i, j] = tau * log sum_r exp(softmin(A[i,r], B[r,j]) / tau)`` with
    ``softmin(a, b) = -tau * log(exp(-a/tau) + exp(-b/tau))``. Bounds:
    ``hard - tau*log(2) <= C <= hard + tau*log(k)``; tends to the hard product
    as tau -> 0. Numerically stable for any tau (shifted by the hard product).
    Half inputs compute in float32. Shapes, dtypes and backends as
    :func:`minmax_matmul`; the gradient is the smooth one (paper Eq. 6-7),
    recomputed in backward from A, B and C.
    """
    fn = "soft_minmax_matmul"
    tau = check_tau(tau, fn)
    A, B = _broadcast(A, B, fn)
    backend = _backends.resolve(backend, A.device, fn)
    return _soft_product(A, B, tau, backend, fn)


# --------------------------------------------------------------------------- chains
def _chain_layer(X: Tensor, W: Tensor, tau: float, soft: bool, backend: str, with_argmax: bool = False):
    if soft:
        return _soft_product(X, W, tau, backend, "minmax_chain"), None
    return _hard_product(X, W, backend, with_argmax, "minmax_chain")


@torch.library.custom_op("vico_flow::minmax_chain", mutates_args=())
def _minmax_chain(F: Tensor, Ws: list[Tensor], tau: float, soft: bool, backend: str) -> Tensor:
    fn = "minmax_chain"
    check_no_nan(F, "F", fn)
    for i, W in enumerate(Ws):
        check_no_nan(W, f"Ws[{i}]", fn)
    b, _, n = F.shape
    if backend == "cpu" and b >= 4 * torch.get_num_threads() and n <= 256:
        # Many small blocks (per-pixel temporal layers, per-frame spatial ones):
        # one task per block runs the whole chain in cache.
        return _backends.compiled_extension().chain_forward(F, Ws, soft, tau)
    X = F
    for W in Ws:  # few large blocks (parallel inside each product) or other backends
        X = _chain_layer(X, W, tau, soft, backend)[0]
    return X.clone() if X is F else X


@_minmax_chain.register_fake
def _(F, Ws, tau, soft, backend):
    return F.new_empty(F.shape)


def _chain_setup(ctx, inputs, output):
    F, Ws, tau, soft, backend = inputs
    ctx.save_for_backward(F, *Ws)
    ctx.tau, ctx.soft, ctx.backend = tau, soft, backend


def _chain_bwd(ctx, grad):
    F, *Ws = ctx.saved_tensors
    tau, soft, backend = ctx.tau, ctx.soft, ctx.backend
    # Recompute the intermediate flows (small: [b, K, n] each), then run the
    # per-layer backward ops from the last layer to the first.
    xs, winners = [F], []
    for W in Ws:
        X, win = _chain_layer(xs[-1], W, tau, soft, backend, with_argmax=True)
        xs.append(X)
        winners.append(win)
    dWs = [None] * len(Ws)
    g = grad
    for l in range(len(Ws) - 1, -1, -1):
        if soft:
            g, dWs[l] = _soft_grads(g, xs[l], Ws[l], xs[l + 1], tau, backend)
        else:
            g, dWs[l] = _hard_grads(g, xs[l], Ws[l], winners[l], backend)
    return g, dWs, None, None, None


_minmax_chain.register_autograd(_chain_bwd, setup_context=_chain_setup)


def minmax_chain(F: Tensor, Ws, *, tau: float | None = None, backend: str = "auto") -> Tensor:
    """``F (max,min) W_0 (max,min) W_1 ...`` for block-batched square layers.

    F is ``[b, K, n]`` (K flow rows per block), every W ``[b, n, n]``; hard when
    tau is None, soft at temperature tau otherwise. On the CPU backend, with
    many small blocks, the whole chain runs per block in one kernel call without
    writing the intermediate flows (few large blocks run layer by layer, each
    product parallel inside); the backward recomputes the intermediate flows:
    memory O(inputs). Equal to chaining
    :func:`minmax_matmul` / :func:`soft_minmax_matmul`, gradients included.
    """
    fn = "minmax_chain"
    soft = tau is not None
    tau = check_tau(tau, fn) if soft else 1.0
    check_float_tensor(F, "F", fn)
    if F.dim() != 3:
        raise ValueError(f"{fn}: F must be [b, K, n], got shape {tuple(F.shape)}")
    Ws = list(Ws)
    if not Ws:
        raise ValueError(f"{fn}: Ws is empty; give at least one layer")
    b, _, n = F.shape
    for i, W in enumerate(Ws):
        check_float_tensor(W, f"Ws[{i}]", fn)
        if tuple(W.shape) != (b, n, n):
            raise ValueError(f"{fn}: Ws[{i}] has shape {tuple(W.shape)}; expected ({b}, {n}, {n}) to match F {tuple(F.shape)}")
        if W.dtype != F.dtype or W.device != F.device:
            raise TypeError(f"{fn}: Ws[{i}] is {W.dtype} on {W.device}; F is {F.dtype} on {F.device}")
    backend = _backends.resolve(backend, F.device, fn)
    return _minmax_chain(F, Ws, tau, soft, backend)
