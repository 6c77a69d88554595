"""Attention capture for diffusers models.

`capture_attention(model)` is a context manager that records, for every
attention call inside `model`, the head-averaged attention map
``mean_h softmax(q_h k_h^T * scale + mask)`` of shape [batch, queries, keys],
in call order, as `AttentionRecord`s.

How: every diffusers `Attention` module found by walking `model.modules()` gets
forward hooks that mark it as "running"; while the context is active,
`torch.nn.functional.scaled_dot_product_attention` (what diffusers' 2.0
processors call, whatever the model: UNet, motion module, DiT, MM-DiT) is
wrapped so that a call made by a marked module (1) returns exactly what the
original function returns, computed by it, so model outputs are unchanged,
and (2) additionally computes the head-averaged map from the same q, k, mask
and scale, in query chunks (never a full per-head map of a long sequence).
Processors that compute scores with `Attention.get_attention_scores` instead
are covered by wrapping that method. The map stays differentiable with
respect to everything q and k depend on (the latent), so flows computed from
it can be backpropagated. Hooks and wrappers are removed on exit, errors
included; the model's processors are never replaced.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

_LOCAL = threading.local()


@dataclass
class AttentionRecord:
    """One attention call: `probs` [batch, queries, keys], head-averaged."""

    name: str
    probs: Tensor
    heads: int
    call_index: int

    @property
    def batch(self) -> int:
        return self.probs.shape[0]

    @property
    def queries(self) -> int:
        return self.probs.shape[1]

    @property
    def keys(self) -> int:
        return self.probs.shape[2]


@dataclass
class AttentionStore:
    """The records of one capture, in call order; `select(name) -> bool`
    filters which modules are recorded (all by default)."""

    select: Optional[Callable[[str], bool]] = None
    query_chunk: int = 1024
    records: list = field(default_factory=list)
    enabled: bool = True

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)


def is_attention_module(module) -> bool:
    """diffusers' Attention (and subclasses such as its joint variants)."""
    return any(c.__name__ == "Attention" and "diffusers" in c.__module__ for c in type(module).__mro__)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32  # half types: float32


def _chunk_logits(q, k, attn_mask, scale, is_causal, s, e):
    """Scaled logits of queries s:e against all keys, masked: [B, H, e-s, Lk] (float32, or float64)."""
    Lq, Lk = q.shape[2], k.shape[2]
    ct = _compute_dtype(q)
    logits = torch.matmul(q[:, :, s:e].to(ct), k.to(ct).transpose(-1, -2)) * scale
    if is_causal:
        causal = torch.ones(e - s, Lk, dtype=torch.bool, device=q.device).tril(diagonal=s)
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        m = attn_mask
        if m.dim() >= 2 and m.shape[-2] == Lq:
            m = m[..., s:e, :]
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.to(ct)
    return logits


class _HeadAveragedAttention(torch.autograd.Function):
    """mean_h softmax(q k^T scale + mask), computed per query chunk; the
    backward recomputes each chunk's per-head softmax (flash-attention style),
    so only q and k are saved: no [B, H, Lq, Lk] tensor is ever kept."""

    @staticmethod
    def forward(ctx, q, k, attn_mask, scale, is_causal, chunk):
        H = q.shape[1]
        out = q.new_empty((q.shape[0], q.shape[2], k.shape[2]))
        for s in range(0, q.shape[2], chunk):
            e = min(q.shape[2], s + chunk)
            out[:, s:e] = torch.softmax(_chunk_logits(q, k, attn_mask, scale, is_causal, s, e), -1).sum(1).div_(H).to(out.dtype)
        ctx.save_for_backward(q, k)
        ctx.attn_mask, ctx.scale, ctx.is_causal, ctx.chunk = attn_mask, scale, is_causal, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k = ctx.saved_tensors
        H = q.shape[1]
        ct = _compute_dtype(q)
        dq = torch.zeros_like(q, dtype=ct) if ctx.needs_input_grad[0] else None
        dk = torch.zeros_like(k, dtype=ct) if ctx.needs_input_grad[1] else None
        kf, qf = k.to(ct), q.to(ct)
        for s in range(0, q.shape[2], ctx.chunk):
            e = min(q.shape[2], s + ctx.chunk)
            p = torch.softmax(_chunk_logits(q, k, ctx.attn_mask, ctx.scale, ctx.is_causal, s, e), -1)
            g = grad[:, None, s:e].to(ct) / H  # the mean over heads spreads g equally
            dlogits = p * (g - (p * g).sum(-1, keepdim=True))  # softmax backward
            dlogits = torch.nan_to_num(dlogits) * ctx.scale
            if dq is not None:
                dq[:, :, s:e] = torch.matmul(dlogits, kf)
            if dk is not None:
                dk += torch.matmul(dlogits.transpose(-1, -2), qf[:, :, s:e])
        return (dq.to(q.dtype) if dq is not None else None, dk.to(k.dtype) if dk is not None else None,
                None, None, None, None)


def head_averaged_attention(
    q: Tensor, k: Tensor, attn_mask=None, scale=None, is_causal: bool = False, query_chunk: int = 1024
) -> Tensor:
    """``mean_h softmax(q k^T * scale + mask)`` for q [B, H, Lq, D], k [B, H(kv), Lk, D];
    computed over chunks of queries, differentiable with memory O(q, k, output);
    returns [B, Lq, Lk] in q's dtype."""
    H, D = q.shape[1], q.shape[3]
    if k.shape[1] != H:  # grouped-query attention: repeat key heads
        k = k.repeat_interleave(H // k.shape[1], dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    return _HeadAveragedAttention.apply(q, k, attn_mask, scale, is_causal, query_chunk)


def _store() -> Optional[AttentionStore]:
    return getattr(_LOCAL, "store", None)


def _current() -> Optional[tuple]:
    stack = getattr(_LOCAL, "running", None)
    return stack[-1] if stack else None


def _record(probs: Tensor, heads: int) -> None:
    store, cur = _store(), _current()
    if store is None or cur is None or not store.enabled:
        return
    name = cur[0]
    store.records.append(AttentionRecord(name=name, probs=probs, heads=heads, call_index=len(store.records)))


def _make_sdpa(original):
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        out = original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                       **kwargs)
        store, cur = _store(), _current()
        if store is not None and cur is not None and store.enabled and not cur[1]:
            cur[1] = True  # one record per module call (some processors call SDPA twice)
            probs = head_averaged_attention(query, key, attn_mask, scale, is_causal, store.query_chunk)
            _record(probs, query.shape[1])
        return out

    sdpa.__wrapped__ = original
    return sdpa


@contextlib.contextmanager
def capture_attention(model: torch.nn.Module, select: Optional[Callable[[str], bool]] = None, query_chunk: int = 1024):
    """Records the head-averaged attention of every attention call in `model`.

    Yields an AttentionStore; its `records` fill as the model runs (several
    forward passes append in order; `store.clear()` between them if needed).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"capture_attention: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(query_chunk, int) or query_chunk < 1:
        raise ValueError(f"capture_attention: query_chunk must be a positive int, got {query_chunk!r}")
    modules = [(n, m) for n, m in model.named_modules() if is_attention_module(m)]
    if not modules:
        raise ValueError(
            f"capture_attention: {type(model).__name__} has no diffusers Attention modules to capture"
        )
    if _store() is not None:
        raise RuntimeError("capture_attention: captures do not nest")
    store = AttentionStore(select=select, query_chunk=query_chunk)
    handles, wrapped = [], []

    def pre_hook(name):
        def hook(module, args, kwargs=None):
            stack = getattr(_LOCAL, "running", None)
            if stack is None:
                stack = _LOCAL.running = []
            stack.append([name, select is not None and not select(name)])  # [name, done-or-skipped]

        return hook

    def post_hook(module, args, output):
        _LOCAL.running.pop()

    for name, m in modules:
        handles.append(m.register_forward_pre_hook(pre_hook(name)))
        handles.append(m.register_forward_hook(post_hook))
        if hasattr(m, "get_attention_scores"):  # processors without SDPA
            original = m.get_attention_scores

            def scores(query, key, attention_mask=None, _orig=original, _m=m):
                probs = _orig(query, key, attention_mask)
                cur = _current()
                if cur is not None and not cur[1] and store.enabled:
                    cur[1] = True
                    h = _m.heads
                    _record(probs.reshape(-1, h, *probs.shape[1:]).mean(1), h)
                return probs

            m.get_attention_scores = scores
            wrapped.append(m)
    original_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _make_sdpa(original_sdpa)
    _LOCAL.store, _LOCAL.running = store, []
    try:
        yield store
    finally:
        F.scaled_dot_product_attention = original_sdpa
        for h in handles:
            h.remove()
        for m in wrapped:
            del m.get_attention_scores  # back to the class method
        _LOCAL.store, _LOCAL.running = None, []
