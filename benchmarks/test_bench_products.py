"""Tropical products on the CPU against torch.matmul and the chunked reference.

Groups: "<shape> <product> <phase>", each with the kernel, torch.matmul on the
same shapes (fwd: one matmul; fwd+bwd: the matmul and its two gradient
matmuls) and the reference where it fits the default time budget
(--bench-large adds it everywhere). Inputs are uniform in [0, 1).
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

import vico_flow
from vico_flow import reference

from .memory import peak_rss_extra_mb

TAU = 0.01
# name -> (A shape, B shape); "thin" is flow propagation (K=4 source rows through
# a 4096-token layer), "batched" 2560 per-pixel temporal blocks of 16 frames.
SHAPES = {
    "256^3": ((256, 256), (256, 256)),
    "1024^3": ((1024, 1024), (1024, 1024)),
    "2048^3": ((2048, 2048), (2048, 2048)),
    "thin 4x4096x4096": ((4, 4096), (4096, 4096)),
    "batched 2560x[4x16x16]": ((2560, 4, 16), (2560, 16, 16)),
}
# The reference costs 100-4000x matmul: only where it stays in seconds by default.
REFERENCE_DEFAULT = {"256^3", "thin 4x4096x4096", "batched 2560x[4x16x16]"}


def _operands(shape, requires_grad=False):
    """A, B and the upstream gradient of their product (ones): the backward's
    input is made once, outside the timed calls, like A and B."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(SHAPES[shape][0], generator=g).requires_grad_(requires_grad)
    B = torch.rand(SHAPES[shape][1], generator=g).requires_grad_(requires_grad)
    return A, B, torch.ones(torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (A.shape[-2], B.shape[-1]))


def _fwd(f, A, B):
    with torch.no_grad():
        return f(A, B)


def _fwd_bwd(f, A, B, grad):
    A.grad = B.grad = None
    out = f(A, B)
    out.backward(grad)
    return out


PRODUCTS = {
    "hard": (vico_flow.minmax_matmul, reference.minmax_matmul),
    "soft": (lambda A, B: vico_flow.soft_minmax_matmul(A, B, TAU), lambda A, B: reference.soft_minmax_matmul(A, B, TAU)),
}


def _rounds(shape):
    # enough rounds that a median survives this shared machine's noisy spells
    return {"256^3": 30, "1024^3": 20, "2048^3": 5}.get(shape, 10)


def _iterations(shape):
    # Back-to-back calls per round where one call takes well under a
    # millisecond (the statistics are per call): with one call per round, the
    # wake-up of the thread pool between rounds counted as much as the call
    # (the batched hard forward's rounds ran from 0.26 to 2.9 ms on an Intel
    # Xeon, their median 0.75 ms).
    return {"256^3": 5, "batched 2560x[4x16x16]": 10}.get(shape, 1)


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("product", list(PRODUCTS))
@pytest.mark.parametrize("impl", ["kernel", "torch.matmul", "reference"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_product(benchmark, bench_large, shape, product, phase, impl):
    if impl == "reference" and (phase == "fwd+bwd" or (shape not in REFERENCE_DEFAULT and not bench_large)):
        pytest.skip("reference timed only for forward at the default sizes (--bench-large for more)")
    kernel, ref = PRODUCTS[product]
    f = {"kernel": kernel, "torch.matmul": torch.matmul, "reference": ref}[impl]
    A, B, grad = _operands(shape, requires_grad=phase == "fwd+bwd")
    run = (lambda: _fwd(f, A, B)) if phase == "fwd" else (lambda: _fwd_bwd(f, A, B, grad))
    benchmark.group = f"{shape} {product} {phase}"
    benchmark.extra_info["impl"] = impl
    if impl == "reference":
        # A median of 3 where the reference takes well under a second per call
        # (one call can land in a noisy spell and halve the speed-up column).
        rounds, iterations = (3 if shape in REFERENCE_DEFAULT else 1), 1
    else:
        rounds, iterations = _rounds(shape), _iterations(shape)
    benchmark.pedantic(run, rounds=rounds, iterations=iterations, warmup_rounds=1 if impl != "reference" else 0)
    if impl == "kernel" and phase == "fwd+bwd" and shape in ("1024^3", "2048^3"):
        # Peak beyond the inputs and the upstream gradient (resident before the
        # call) and what fwd+bwd must create anyway: the output and the two gradients.
        m, k, n = A.shape[0], A.shape[1], B.shape[1]
        must_mb = (m * n + m * k + k * n) * 4 / 2**20
        benchmark.extra_info["peak_extra_mb"] = peak_rss_extra_mb(run) - must_mb


@pytest.mark.parametrize("shape", ["1024^3", "2048^3"])
def test_hard_backward_overhead_interleaved(benchmark, shape):
    """Hard fwd+bwd / fwd with the two phases alternating round by round.

    The separate groups above time each phase in its own stretch of seconds, so
    on a shared machine a noisy spell can land on one phase only; alternating
    puts both under the same conditions. Each timed call follows an untimed
    call of the same phase, as in the groups: a forward right after a
    forward+backward ran ~0.3 ms slower at 1024^3 (caches and the kept output
    memory hold the other phase's data), which flattered the ratio. A round is
    a forward (no grad) and a forward+backward, each timed once; the ratio line
    gives the median of the per-round ratios and the ratio of the two phases'
    minima.
    """
    A, B, grad = _operands(shape, requires_grad=True)
    fwd_s, both_s = [], []

    def timed(f):
        f()  # the same phase first: each timed call starts from its own phase's state
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    def pair():
        fwd_s.append(timed(lambda: _fwd(vico_flow.minmax_matmul, A, B)))
        both_s.append(timed(lambda: _fwd_bwd(vico_flow.minmax_matmul, A, B, grad)))

    benchmark.group = f"{shape} hard fwd, fwd+bwd alternating"
    benchmark.extra_info["impl"] = "kernel"
    benchmark.pedantic(pair, rounds=_rounds(shape) + 5, iterations=1, warmup_rounds=1)
    fwd_s, both_s = fwd_s[1:], both_s[1:]  # the warm-up round
    per_round = statistics.median(b / f for f, b in zip(fwd_s, both_s))
    benchmark.extra_info["fwd_bwd_over_fwd"] = per_round
    benchmark.extra_info["derived"] = (f"{len(fwd_s)} alternating rounds: hard fwd+bwd / fwd = {per_round:.2f} "
                                       f"(median per round; minima {min(both_s) / min(fwd_s):.2f})")
