"""The soft (log-sum-exp) product: close to the float64 reference, within its
bounds, stable at small tau, with gradients that match the closed form."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vico_flow
from vico_flow import reference

from .conftest import CPU_ISAS, cpu_isa
from .helpers import DTYPES, rand


def soft_ref64(A, B, tau):
    return reference.soft_minmax_matmul(A.double(), B.double(), tau)


@given(
    m=st.integers(0, 70),
    k=st.integers(0, 130),
    n=st.integers(0, 70),
    tau=st.sampled_from([0.01, 0.1, 1.0]),
    kind=st.sampled_from(["uniform", "wide"]),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_reference(isa, m, k, n, tau, kind, seed):
    g = torch.Generator().manual_seed(seed)
    A, B = rand(m, k, kind=kind, gen=g), rand(k, n, kind=kind, gen=g)
    S = vico_flow.soft_minmax_matmul(A, B, tau, backend="cpu")
    truth = soft_ref64(A, B, tau)
    assert S.dtype == torch.float32
    torch.testing.assert_close(S.double(), truth, rtol=1e-5, atol=1e-6 * max(1.0, tau))


def test_error_at_most_twice_the_float32_reference(isa):
    # flash-attention style: the kernel may not be less accurate than the
    # obvious float32 formula (up to 2x and a rounding-level floor).
    g = torch.Generator().manual_seed(7)
    for tau in (0.01, 0.3):
        A, B = rand(4, 50, 200, gen=g), rand(4, 200, 60, gen=g)
        truth = soft_ref64(A, B, tau)
        kernel_err = (vico_flow.soft_minmax_matmul(A, B, tau).double() - truth).abs().max()
        ref_err = (reference.soft_minmax_matmul(A, B, tau).double() - truth).abs().max()
        assert kernel_err <= 2 * ref_err + 1e-7


@pytest.mark.parametrize("tau", [0.005, 0.01, 0.1, 2.0])
def test_bounds(isa, tau):
    g = torch.Generator().manual_seed(8)
    for kind in ("uniform", "wide", "inf"):
        A, B = rand(3, 33, 150, kind=kind, gen=g), rand(150, 40, kind=kind, gen=g)
        S = vico_flow.soft_minmax_matmul(A, B, tau).double()
        lo, hi = reference.soft_minmax_bounds(reference.minmax_matmul(A, B).double(), tau, 150)
        slack = 1e-6 * (1 + lo.abs().nan_to_num(posinf=0, neginf=0))
        assert bool(((S >= lo - slack) | (S == lo)).all()) and bool(((S <= hi + slack) | (S == hi)).all())


def test_converges_to_hard_as_tau_shrinks(isa):
    g = torch.Generator().manual_seed(9)
    A, B = rand(20, 64, gen=g), rand(64, 30, gen=g)
    H = reference.minmax_matmul(A, B)
    gaps = [(vico_flow.soft_minmax_matmul(A, B, tau) - H).abs().max().item() for tau in (1.0, 0.1, 0.01, 0.001)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] <= 0.001 * math.log(64) + 1e-6


@pytest.mark.parametrize("scale", [2.0, 100.0, 1e4])
def test_stable_at_small_tau_and_large_values(isa, scale):
    g = torch.Generator().manual_seed(10)
    A, B = torch.rand(30, 257, generator=g) * scale, torch.rand(257, 31, generator=g) * scale
    for tau in (0.01, 1e-4):
        S = vico_flow.soft_minmax_matmul(A, B, tau)
        assert bool(torch.isfinite(S).all())
        torch.testing.assert_close(S.double(), soft_ref64(A, B, tau), rtol=1e-5, atol=1e-6)
        A_ = A.clone().requires_grad_()
        vico_flow.soft_minmax_matmul(A_, B, tau).sum().backward()
        assert bool(torch.isfinite(A_.grad).all())


def test_infinities_match_reference(isa):
    g = torch.Generator().manual_seed(11)
    A, B = rand(17, 40, kind="inf", gen=g), rand(40, 19, kind="inf", gen=g)
    A[0] = -math.inf  # a row with no edge at all
    B[:, 0] = math.inf
    S = vico_flow.soft_minmax_matmul(A, B, 0.05)
    torch.testing.assert_close(S.double(), soft_ref64(A, B, 0.05), rtol=1e-5, atol=1e-6)
    assert bool((S[0] == -math.inf).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(dtype):
    g = torch.Generator().manual_seed(12)
    A, B = rand(2, 21, 70, dtype=dtype, gen=g), rand(70, 23, dtype=dtype, gen=g)
    S = vico_flow.soft_minmax_matmul(A, B, 0.02)
    assert S.dtype == dtype
    expected = reference.soft_minmax_matmul(A, B, 0.02)  # same dtype policy: float32 inside
    torch.testing.assert_close(S, expected, rtol=1e-5, atol=1e-6) if dtype in (
        torch.float32,
        torch.float64,
    ) else torch.testing.assert_close(S.float(), expected.float(), rtol=0, atol=0.01)


def test_broadcast_and_noncontiguous(isa):
    g = torch.Generator().manual_seed(13)
    A = rand(3, 1, 80, 40, gen=g).transpose(-1, -2)[..., :33, :]  # [3, 1, 33, 80] strided
    B = rand(2, 80, 50, gen=g)[:, :, ::2]  # [2, 80, 25] strided
    S = vico_flow.soft_minmax_matmul(A, B, 0.05)
    assert S.shape == (3, 2, 33, 25)
    torch.testing.assert_close(S.double(), soft_ref64(A, B, 0.05), rtol=1e-5, atol=1e-6)


def _grads(A, B, up, tau, backend):
    A = A.detach().clone().requires_grad_()
    B = B.detach().clone().requires_grad_()
    vico_flow.soft_minmax_matmul(A, B, tau, backend=backend).backward(up)
    return A.grad, B.grad


@pytest.mark.parametrize("tau", [0.01, 0.2])
@pytest.mark.parametrize("kind", ["uniform", "wide", "inf"])
def test_gradients_match_reference(isa, tau, kind):
    g = torch.Generator().manual_seed(14)
    A, B = rand(2, 45, 150, kind=kind, gen=g), rand(150, 70, kind=kind, gen=g)
    up = torch.randn(2, 45, 70, generator=g)
    dA, dB = _grads(A, B, up, tau, "cpu")
    rA, rB = _grads(A.double(), B.double(), up.double(), tau, "reference")
    for got, want in ((dA, rA), (dB, rB)):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item() + 1e-7)


def test_gradient_error_at_most_twice_the_float32_reference(isa):
    # The float32 gradients against float64 ones, beside the obvious float32
    # formula's (as the forward's test above). The kernels take each
    # exponent's difference before scaling it by 1/tau: scaled first
    # (c*s - a*s), they erred 2.4-2.8x the reference's error here; now ~1.4x.
    worst = 0.0
    for seed in range(3):
        for tau in (0.01, 0.002):
            for m, k, n in ((64, 256, 80), (40, 700, 48), (130, 96, 130)):
                g = torch.Generator().manual_seed(seed)
                A, B, up = rand(m, k, gen=g), rand(k, n, gen=g), torch.randn(m, n, generator=g)
                truth = _grads(A.double(), B.double(), up.double(), tau, "reference")
                kernel = _grads(A, B, up, tau, "cpu")
                ref32 = _grads(A, B, up, tau, "reference")
                for got, ref, want in zip(kernel, ref32, truth):
                    worst = max(worst, float((got.double() - want).abs().max() / (ref.double() - want).abs().max()))
    assert worst <= 2.0


def _two_level_operands(layout, g):
    """Operands whose outputs sit at two levels ~10 apart: per row of C
    ("rows": rows 0-19 low, 20-39 high) or per column ("columns": 0-149 low,
    150-299 high), with some -inf, and +inf in the operand that sets no level
    (elsewhere it would lift the low one). At tau <= 0.05 a level's scaled
    outputs lie far more than 64 apart from the other's, so in a tile holding
    both, the low rows of C (of C^T for dA) take the kernels' factored terms
    and the high ones the direct terms."""
    low, high = rand(20, 70, gen=g) / 2, 10 + rand(20, 70, gen=g) / 2
    wide = rand(70, 300, gen=g) * 6
    if layout == "rows":
        wide[torch.rand(wide.shape, generator=g) > 0.98] = torch.inf
        A, B = torch.cat([low, high]), wide
    else:
        A = wide.T.contiguous()[:40]
        A[torch.rand(A.shape, generator=g) > 0.98] = torch.inf
        B = torch.cat([low.T] * 7 + [low.T[:, :10]] + [high.T] * 7 + [high.T[:, :10]], 1)
    for X in (A, B):
        X[torch.rand(X.shape, generator=g) < 0.03] = -torch.inf
    return A, B


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("tau", [0.01, 0.05])
@pytest.mark.parametrize("up_scale", [1.0, 1e-36])
def test_factored_and_direct_terms_agree(isa, layout, tau, up_scale):
    # 40 rows (two forward tasks of 32), 300 columns (two 256-wide tiles).
    g = torch.Generator().manual_seed(21)
    A, B = _two_level_operands(layout, g)
    assert A.shape == (40, 70) and B.shape == (70, 300)
    H = reference.minmax_matmul(A.double(), B.double())
    lo, hi = (H[:20], H[20:]) if layout == "rows" else (H[:, :150], H[:, 150:])
    spread = (hi[hi.isfinite()].min() - lo[lo.isfinite()].max()).item() * math.log2(math.e) / tau
    assert spread > 64  # the two levels cannot share the factored terms
    S = vico_flow.soft_minmax_matmul(A, B, tau, backend="cpu")
    torch.testing.assert_close(S.double(), soft_ref64(A, B, tau), rtol=1e-5, atol=1e-6)
    # Upstream gradients of 1e-36 (gradients near float32's smallest normal) make
    # the terms that count denormal unless the kernel scales them first.
    up = torch.randn(40, 300, generator=g) * up_scale
    dA, dB = _grads(A, B, up, tau, "cpu")
    rA, rB = _grads(A.double(), B.double(), up.double(), tau, "reference")
    for got, want in ((dA, rA), (dB, rB)):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


LARGE_ROWS = [1024, 1030]


@pytest.fixture(scope="module")
def large_gradient_case():
    # The float64 reference gradients once per module, for every ISA's run.
    cases = {}
    for m in LARGE_ROWS:
        g = torch.Generator().manual_seed(m)
        A, B = rand(m, 1024, gen=g), rand(1024, 24, gen=g)
        up = torch.randn(m, 24, generator=g)
        cases[m] = (A, B, up, _grads(A.double(), B.double(), up.double(), 0.05, "reference"))
    return cases


@pytest.mark.parametrize("m", LARGE_ROWS)
def test_gradients_through_large_transposed_copies(isa, large_gradient_case, m):
    # The tiled backward works on a transposed copy of A. Copies of 4 MB or
    # more are written with non-temporal stores where each row of the copy
    # starts a cache line (m a multiple of 16), with ordinary ones where not.
    A, B, up, (rA, rB) = large_gradient_case[m]
    assert A.numel() * 4 >= 4 << 20  # past the kernels' streaming threshold
    dA, dB = _grads(A, B, up, 0.05, "cpu")
    for got, want in ((dA, rA), (dB, rB)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item() + 1e-7)


# Products whose operands and output hold at most 4096 values together get
# both gradients from one pass (a video's per-pixel blocks); larger ones take
# the tiled path. Both sides of that bound, B broadcast over the batch or not.
SMALL_SOFT_SHAPES = [
    ((2560, 4, 16), (2560, 16, 16)),
    ((3, 20, 50), (50, 33)),  # 3310 values: one pass, a partial vector of columns
    ((3, 30, 50), (50, 40)),  # 4700 values: tiled
    ((2, 7, 1), (1, 9)),  # k = 1
]


@pytest.mark.parametrize("shapes", SMALL_SOFT_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["uniform", "wide", "inf"])
@pytest.mark.parametrize("up_scale", [1.0, 1e-36])  # 1e-36: terms that count are denormal unless scaled first
def test_small_product_gradients_match_reference(isa, shapes, kind, up_scale):
    g = torch.Generator().manual_seed(sum(shapes[0]) + sum(shapes[1]))
    A, B = rand(*shapes[0], kind=kind, gen=g), rand(*shapes[1], kind=kind, gen=g)
    up = torch.randn(A.shape[0], A.shape[1], B.shape[-1], generator=g) * up_scale
    for tau in (0.01, 0.2):
        dA, dB = _grads(A, B, up, tau, "cpu")
        rA, rB = _grads(A.double(), B.double(), up.double(), tau, "reference")
        # The kernels take exponents as differences of float32 values scaled
        # by log2(e)/tau: each is off by up to an ulp of the largest, which
        # bounds the relative error of a term (the tiled path has the same).
        finite = torch.cat([A[A.isfinite()], B[B.isfinite()]]).abs().max().item()
        rtol = max(1e-4, 4 * 2.0**-24 * finite * math.log2(math.e) / tau)
        for got, want in ((dA, rA), (dB, rB)):
            assert bool(torch.isfinite(got).all())
            atol = rtol * want.abs().max().item() + 1e-7 * up_scale
            torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


# float64 operands through every path of the kernels (a batch with B
# broadcast, one pass for small products, tiles with partial vector groups),
# on every kind of values, forward and gradients.
FLOAT64_SHAPES = [((2, 45, 150), (150, 70)), ((3, 20, 50), (50, 33)), ((70, 300), (300, 130))]


def _soft_float64(shapes, kind, tau):
    g = torch.Generator().manual_seed(sum(shapes[0]) + sum(shapes[1]))
    A = rand(*shapes[0], dtype=torch.float64, kind=kind, gen=g)
    B = rand(*shapes[1], dtype=torch.float64, kind=kind, gen=g)
    up = torch.randn(*A.shape[:-1], B.shape[-1], generator=g, dtype=torch.float64)
    S = vico_flow.soft_minmax_matmul(A, B, tau)
    return A, B, up, S, _grads(A, B, up, tau, "cpu")


@pytest.mark.parametrize("shapes", FLOAT64_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["uniform", "wide", "inf"])
@pytest.mark.parametrize("tau", [0.01, 0.2])
def test_float64_matches_reference_to_its_cutoff(isa, shapes, kind, tau):
    # float64 is computed in float64: the only error left is the skipped
    # terms (each < 2^-(log2 k + 26) of the sum, so C moves by < tau * 2^-25),
    # far inside the float32 tolerances of the tests above.
    A, B, up, S, (dA, dB) = _soft_float64(shapes, kind, tau)
    R = reference.soft_minmax_matmul(A, B, tau)
    assert torch.equal(S.isfinite(), R.isfinite()) and torch.equal(S[~S.isfinite()], R[~R.isfinite()])
    torch.testing.assert_close(S, R, rtol=1e-12, atol=tau * 2.0**-25)
    rA, rB = _grads(A, B, up, tau, "reference")
    for got, want in ((dA, rA), (dB, rB)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8 * want.abs().max().item())


@pytest.mark.parametrize("vector_isa", [i for i in CPU_ISAS if i != "scalar"])
@pytest.mark.parametrize("shapes", FLOAT64_SHAPES, ids=str)
def test_float64_vector_kernels_agree_with_scalar_ones(shapes, vector_isa):
    # The float64 vector kernels (their exp2 a polynomial; the reciprocal
    # Newton steps on AVX-512, a division on AVX2) against the scalar ones
    # (std::exp2, a division): the same terms skipped, so only rounding and
    # summation order may differ.
    results = {}
    for name in (vector_isa, "scalar"):
        with cpu_isa(name):
            assert vico_flow._C.cpu_isa_float64() == name
            results[name] = _soft_float64(shapes, "wide", 0.01)[3:]
    (S, (dA, dB)), (sS, (sA, sB)) = results[vector_isa], results["scalar"]
    torch.testing.assert_close(S, sS, rtol=1e-12, atol=0)
    for got, want in ((dA, sA), (dB, sB)):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12 * want.abs().max().item())


def test_reference_backward_is_the_autograd_of_the_reference():
    g = torch.Generator().manual_seed(15)
    A = rand(1, 7, 11, dtype=torch.float64, gen=g).requires_grad_()
    B = rand(1, 11, 6, dtype=torch.float64, gen=g).requires_grad_()
    up = torch.randn(1, 7, 6, dtype=torch.float64, generator=g)
    C = reference.soft_minmax_matmul(A, B, 0.1)
    C.backward(up)
    dA, dB = reference.soft_minmax_matmul_backward(up, A.detach(), B.detach(), C.detach(), 0.1)
    torch.testing.assert_close(dA, A.grad)
    torch.testing.assert_close(dB, B.grad)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    g = torch.Generator().manual_seed(16)
    A = rand(2, 5, 8, dtype=torch.float64, gen=g).requires_grad_()
    B = rand(8, 6, dtype=torch.float64, gen=g).requires_grad_()
    for tau in (0.05, 0.5):
        assert torch.autograd.gradcheck(lambda a, b: vico_flow.soft_minmax_matmul(a, b, tau, backend=backend), (A, B))


def test_backward_memory_is_inputs_plus_outputs():
    # The saved state of the soft op is A, B and C: no [m, k, n] tensor.
    A = torch.rand(64, 96, requires_grad=True)
    B = torch.rand(96, 80, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        vico_flow.soft_minmax_matmul(A, B)
    assert sum(saved) <= 64 * 96 + 96 * 80 + 64 * 80



@pytest.mark.parametrize("tau", [0.01, 0.2])
@pytest.mark.parametrize("kind", ["uniform", "wide", "inf", "negative"])
@pytest.mark.parametrize("b,m,k", [(1, 4, 40960), (2, 5, 4097), (3, 2, 2100), (1, 3, 64), (2, 150, 5000)])
def test_one_column_products(isa, b, m, k, kind, tau):
    # n == 1 from depth 64 on (ST-Flow's soft readout): vectors along r in
    # blocks of 4096 (ColArgs), forward and both gradients; +-inf operands
    # give outputs at +-inf, which pass no gradient.
    g = torch.Generator().manual_seed(b * 100000 + k + int(tau * 100))
    A, B = rand(b, m, k, kind=kind, gen=g), rand(k, 1, kind=kind, gen=g)  # B broadcast over the batch
    if kind == "inf":
        A[0, 0] = -torch.inf  # an output at -inf
    S = vico_flow.soft_minmax_matmul(A, B, tau)
    R = reference.soft_minmax_matmul(A.double(), B.double(), tau)
    assert torch.equal(S.isfinite(), R.isfinite()) and torch.equal(S[~S.isfinite()].double(), R[~R.isfinite()])
    torch.testing.assert_close(S.double(), R, rtol=1e-5, atol=1e-6)
    H = reference.minmax_matmul(A, B).double()
    lo, hi = reference.soft_minmax_bounds(H, tau, k)
    assert bool((((S.double() >= lo - 1e-5) & (S.double() <= hi + 1e-5)) | ~S.isfinite()).all())
    up = torch.randn(b, m, 1, generator=g)
    dA, dB = _grads(A, B, up, tau, "cpu")
    rA, rB = _grads(A.double(), B.double(), up.double(), tau, "reference")
    fA, fB = _grads(A, B, up, tau, "reference")  # the float32 reference
    # the tiled kernels on the same column twice (n = 2): each half of the gradient
    tA, tB = _grads(A, torch.cat([B, B], 1), torch.cat([up, up], 2), tau, "cpu")
    for got, want, ref32, tiled in ((dA, rA, fA, tA / 2), (dB, rB, fB, tB[:, :1])):
        assert bool(torch.isfinite(got).all())
        # The kernels' gradient weights 2^((C - a) s) carry s times C's float32
        # rounding (~1e-4 relative at tau = 0.01 and |C| ~ 50): the error is
        # bounded by twice the larger of the tiled kernels' and the float32
        # reference's.
        err = (got.double() - want).abs().max().item()
        bound = max((ref32.double() - want).abs().max().item(), (tiled.double() - want).abs().max().item())
        assert err <= 2 * bound + 1e-5 * want.abs().max().item() + 1e-7, (err, bound)


def test_one_column_gradcheck_float64():
    g = torch.Generator().manual_seed(21)
    A = rand(2, 2100, dtype=torch.float64, gen=g).requires_grad_()  # m*k + k > 4096: not a small product
    B = rand(2100, 1, dtype=torch.float64, gen=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: vico_flow.soft_minmax_matmul(a, b, 0.2), (A, B))
