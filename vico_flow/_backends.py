"""Backends of the tropical products and how "auto" picks one.

A backend is an object with four functions on checked, broadcast 3-D operands
``A [b, m, k]``, ``B [b, k, n]``:

    hard_forward(A, B, with_winners) -> (C, winners int32 or empty)
    hard_backward(grad, A, B, winners) -> (dA, dB)
    soft_forward(A, B, tau) -> C
    soft_backward(grad, A, B, C, tau) -> (dA, dB)

where `winners` is reference.encode_winners' format: the first r reaching the
max, stored as r when the gradient goes to A and as ~r when it goes to B.
A backend may set ``refuses_nan = True`` when its forward kernels raise
ValueError on NaN operands themselves (vico_flow.ops then skips its own scan).
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import torch

from . import reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


def _reference_backend():
    def hard_forward(A, B, with_argmax):
        C, idx = reference.minmax_matmul_argmax(A, B)
        if not with_argmax:
            return C, idx.new_empty((0,), dtype=torch.int32)
        return C, reference.encode_winners(A, B, idx)

    return SimpleNamespace(
        name="reference",
        devices=("cpu", "cuda"),
        hard_forward=hard_forward,
        hard_backward=reference.scatter_winners,
        soft_forward=reference.soft_minmax_matmul,
        soft_backward=reference.soft_minmax_matmul_backward,
    )


def compiled_extension():
    """The compiled module vico_flow._C, or None when the package was not built."""
    try:
        return importlib.import_module("vico_flow._C")
    except ImportError:
        return None


def empty_cpu_cache() -> int:
    """Frees the memory the CPU kernels keep for their next large outputs.

    Outputs of 1 MB or more (products, gradients) take the memory a dead output
    of about the same size left behind, already mapped, which spares a page
    fault per 4 KB on every call; up to 256 MB stay kept between calls. Returns
    the bytes freed (0 without the compiled extension).
    """
    ext = compiled_extension()
    return int(ext.release_cached_outputs()) if ext is not None else 0


def _cpu_backend():
    ext = compiled_extension()
    if ext is None:
        return None
    return SimpleNamespace(
        name="cpu",
        devices=("cpu",),
        refuses_nan=True,  # the kernels raise ValueError on NaN operands (checked as they are packed)
        hard_forward=ext.hard_forward,
        hard_backward=ext.hard_backward,
        soft_forward=ext.soft_forward,
        soft_backward=ext.soft_backward,
    )


def _cuda_backend():
    ext = compiled_extension()
    if ext is None or not getattr(ext, "cuda_built", False):
        return None
    return SimpleNamespace(
        name="cuda",
        devices=("cuda",),
        hard_forward=ext.hard_forward_cuda,
        hard_backward=ext.hard_backward_cuda,
        soft_forward=ext.soft_forward_cuda,
        soft_backward=ext.soft_backward_cuda,
    )


def _triton_backend():
    try:
        from .triton import backend as triton_backend
    except ImportError:
        return None
    return triton_backend.BACKEND


_LOADERS = {"reference": _reference_backend, "cpu": _cpu_backend, "cuda": _cuda_backend, "triton": _triton_backend}
_CACHE: dict = {}


def get(name: str):
    """The backend object for `name` (not "auto"), or None when it is not available here."""
    if name not in _CACHE:
        _CACHE[name] = _LOADERS[name]()
    return _CACHE[name]


def available() -> list[str]:
    """Names of the backends usable in this installation."""
    return [n for n in BACKENDS[1:] if get(n) is not None]


def resolve(backend, device: torch.device, fn: str) -> str:
    """Checks a backend name and turns "auto" into a concrete backend for `device`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        order = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}.get(device.type, ("reference",))
        for name in order:
            if get(name) is not None:
                return name
        raise ValueError(f"{fn}: no backend is available for tensors on {device}")
    impl = get(backend)
    if impl is None:
        hint = {
            "cpu": "the compiled extension vico_flow._C is missing: reinstall with `pip install --no-build-isolation -e .`",
            "cuda": "vico_flow was built without CUDA kernels (needs a CUDA build of torch and nvcc at install time)",
            "triton": "triton is not installed (`pip install triton`)",
        }[backend]
        raise ValueError(f"{fn}: backend {backend!r} is not available: {hint}")
    if device.type not in impl.devices:
        raise ValueError(
            f"{fn}: backend {backend!r} runs on {' or '.join(impl.devices)} tensors, but the operands are on {device}"
        )
    return backend
