"""The hard (max, min) product: bit-identical to the reference, gradient routed
by the documented tie rules, on every instruction set, dtype and layout."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vico_flow
from vico_flow import reference

from .helpers import DTYPES, rand

dims = st.integers(0, 130)


def check_exact(A, B, backend="cpu"):
    C, idx = vico_flow.minmax_matmul_with_argmax(A, B, backend=backend)
    C_ref, idx_ref = reference.minmax_matmul_argmax(A, B)
    assert C.dtype == A.dtype and C.shape == C_ref.shape
    assert torch.equal(C, C_ref)
    assert torch.equal(idx.long(), idx_ref)
    assert torch.equal(vico_flow.minmax_matmul(A, B, backend=backend), C_ref)


KINDS = ["uniform", "ties", "inf", "wide", "signed", "negative"]


@given(m=dims, k=dims, n=dims, kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_random_shapes_bit_identical(isa, m, k, n, kind, seed):
    g = torch.Generator().manual_seed(seed)
    check_exact(rand(m, k, kind=kind, gen=g), rand(k, n, kind=kind, gen=g))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes(isa, dtype, kind):
    g = torch.Generator().manual_seed(1)
    check_exact(rand(2, 37, 70, dtype=dtype, kind=kind, gen=g), rand(2, 70, 45, dtype=dtype, kind=kind, gen=g))


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((3, 1, 5, 7), (4, 7, 6)), ((5, 7), (2, 3, 7, 6)), ((2, 1, 5, 7), (1, 3, 7, 6)), ((0, 5, 7), (7, 6))],
)
def test_batch_broadcasting(a_shape, b_shape):
    g = torch.Generator().manual_seed(2)
    A, B = rand(*a_shape, gen=g), rand(*b_shape, gen=g)
    C = vico_flow.minmax_matmul(A, B)
    assert C.shape == torch.matmul(A, B).shape
    check_exact(A, B)


def test_noncontiguous_inputs(isa):
    g = torch.Generator().manual_seed(3)
    base_a, base_b = rand(90, 140, gen=g), rand(150, 80, gen=g)
    cases = [
        (base_a.t()[:, :70], base_b[:70, :]),  # transposed A: [140, 70]
        (base_a[:, :80], base_b.t()),  # transposed B: [80, 150]
        (base_a[::2, 1:101:2], base_b[::3, ::2][:50]),  # strided slices
        (base_a[None].expand(3, -1, -1)[:, :, :130], base_b[:130]),  # expanded batch
    ]
    for A, B in cases:
        assert not (A.is_contiguous() and B.is_contiguous())
        check_exact(A, B)


def test_empty_and_degenerate_shapes():
    for m, k, n in [(0, 4, 3), (4, 0, 3), (4, 3, 0), (0, 0, 0), (1, 1, 1)]:
        A, B = torch.rand(m, k), torch.rand(k, n)
        check_exact(A, B)
    C = vico_flow.minmax_matmul(torch.rand(2, 3, 0), torch.rand(2, 0, 4))
    assert C.shape == (2, 3, 4) and bool((C == -math.inf).all())


def test_infinities_are_edges():
    A = torch.tensor([[-math.inf, 1.0], [math.inf, math.inf]])
    B = torch.tensor([[5.0, math.inf], [0.5, -math.inf]])
    C = vico_flow.minmax_matmul(A, B)
    assert torch.equal(C, torch.tensor([[0.5, -math.inf], [5.0, math.inf]]))


def _grads(A, B, g, backend):
    A = A.detach().clone().requires_grad_()
    B = B.detach().clone().requires_grad_()
    vico_flow.minmax_matmul(A, B, backend=backend).backward(g)
    return A.grad, B.grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,n", [(torch.float64, 53), (torch.float32, 150)])
def test_gradient_routing_matches_reference(isa, kind, dtype, n):
    # Small-integer upstream gradients: every sum is exact, so the routing must
    # agree element for element. float32 runs the vector scatter (n = 150: two
    # whole 64-column dB tiles, then a tile of one vector and a scalar tail).
    g = torch.Generator().manual_seed(4)
    A, B = rand(3, 41, 77, dtype=dtype, kind=kind, gen=g), rand(77, n, dtype=dtype, kind=kind, gen=g)
    up = torch.randint(-3, 4, (3, 41, n)).to(dtype)
    for backend in ("cpu", "reference"):
        dA, dB = _grads(A, B, up, backend)
        C, idx = reference.minmax_matmul_argmax(A, B)
        rA, rB = reference.minmax_matmul_backward(up, A, B.expand(3, -1, -1), idx)
        assert torch.equal(dA, rA)
        assert torch.equal(dB, rB.sum(0))


# Gradients of 4 MB or more are written with non-temporal stores: rows of dA
# and dB that start on a cache line (k, n multiples of 16) and rows that do
# not, and a batch of products (B broadcast over it). So is the winner
# search's transposed copy of B from 4 MB with k a multiple of 16: the
# 64 x 1024 x 1024 product.
LARGE_GRAD_SHAPES = [
    ((512, 1024), (1024, 512)),
    ((520, 1030), (1030, 530)),
    ((3, 260, 1030), (1030, 530)),
    ((64, 1024), (1024, 1024)),
]


@pytest.fixture(scope="module")
def large_grad_case():
    cases = {}
    for a_shape, b_shape in LARGE_GRAD_SHAPES:
        g = torch.Generator().manual_seed(sum(a_shape) + sum(b_shape))
        A, B = rand(*a_shape, gen=g), rand(*b_shape, gen=g)
        A3 = A if A.dim() == 3 else A[None]
        B3 = B.expand(A3.shape[0], -1, -1)
        assert (A3.numel() + B3.numel()) * 4 >= 4 << 20  # past the kernels' streaming threshold
        up = torch.randint(-3, 4, (A3.shape[0], A3.shape[1], B3.shape[2]), generator=g).float()  # exact sums
        _, idx = reference.minmax_matmul_argmax(A3, B3)
        rA, rB = reference.minmax_matmul_backward(up, A3, B3, idx)
        cases[(a_shape, b_shape)] = (A, B, up.reshape(*A.shape[:-1], -1), rA.reshape(A.shape), rB.sum(0))
    return cases


@pytest.mark.parametrize("shapes", LARGE_GRAD_SHAPES, ids=str)
def test_large_gradients_match_reference(isa, large_grad_case, shapes):
    A, B, up, rA, rB = large_grad_case[shapes]
    for dtype in (torch.float32, torch.float64):
        dA, dB = _grads(A.to(dtype), B.to(dtype), up.to(dtype), "cpu")
        assert torch.equal(dA, rA.to(dtype)) and torch.equal(dB, rB.to(dtype))


# Products whose two gradients hold at most 4096 values, with at most 4096
# outputs, are scattered whole, several to a task (a video's per-pixel blocks);
# larger ones by rows of dA and column tiles of dB. Both sides of those bounds,
# float32 twice with float64 between (the second float32 call gets the first
# one's recycled memory, so every gradient must be written whole), with
# small-integer upstream gradients (exact sums).
WHOLE_BOUND_SHAPES = [
    ((2560, 4, 16), (2560, 16, 16)),  # 2560 whole products, 64 to a task
    ((300, 32, 64), (64, 32)),  # exactly at the bound: whole; B broadcast over the batch
    ((3, 32, 64), (64, 33)),  # one column past it: rows and column tiles
    ((2, 7, 1), (1, 9)),  # k = 1
    ((2, 300, 1), (1, 90)),  # k = 1, 27,000 outputs a product: past a task's worth, split
]


@pytest.mark.parametrize("shapes", WHOLE_BOUND_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["uniform", "ties", "inf"])
def test_small_product_gradients_match_reference(isa, shapes, kind):
    g = torch.Generator().manual_seed(sum(shapes[0]) + sum(shapes[1]))
    A, B = rand(*shapes[0], kind=kind, gen=g), rand(*shapes[1], kind=kind, gen=g)
    B3 = B.expand(A.shape[0], -1, -1)
    _, idx = reference.minmax_matmul_argmax(A, B3)
    for dtype in (torch.float32, torch.float64, torch.float32):
        up = torch.randint(-3, 4, (A.shape[0], A.shape[1], B.shape[-1]), generator=g).to(dtype)
        rA, rB = reference.minmax_matmul_backward(up, A.to(dtype), B3.to(dtype), idx)
        dA, dB = _grads(A.to(dtype), B.to(dtype), up, "cpu")
        assert torch.equal(dA, rA)
        assert torch.equal(dB, rB if B.dim() == 3 else rB.sum(0))


@pytest.mark.parametrize("batch,m,k,n", [(4, 3, 5, 6), (1, 40, 50, 70)], ids=["small products", "tiled"])
def test_maxima_that_stay_minus_inf_route_by_the_first_r(isa, batch, m, k, n):
    # Every min of rows 0 and 1 is -inf, so their maxima are -inf and the
    # winner is r = 0: row 0 has A = 5 > B = -inf there (the gradient goes to
    # B), row 1 has A = B = -inf (a tie: to A).
    g = torch.Generator().manual_seed(9)
    A, B = torch.rand(batch, m, k, generator=g), torch.rand(k, n, generator=g)
    B[0, :] = -math.inf
    A[:, 0, :] = -math.inf
    A[:, 0, 0] = 5.0
    A[:, 1, :] = -math.inf
    up = torch.randint(-3, 4, (batch, m, n), generator=g).float()
    C, idx = reference.minmax_matmul_argmax(A, B.expand(batch, -1, -1))
    assert bool((C[:, :2] == -math.inf).all()) and bool((idx[:, :2] == 0).all())
    rA, rB = reference.minmax_matmul_backward(up, A, B.expand(batch, -1, -1), idx)
    dA, dB = _grads(A, B, up, "cpu")
    assert torch.equal(dA, rA) and torch.equal(dB, rB.sum(0))
    assert bool((dB[0] != 0).any()) and bool((dA[:, 1, 0] != 0).any())  # both sides are exercised


def test_tie_rules_by_hand():
    # All mins equal 1: the gradient goes to r = 0, and to A because A <= B there.
    A = torch.tensor([[1.0, 1.0, 1.0]], requires_grad=True)
    B = torch.tensor([[1.0], [2.0], [1.0]], requires_grad=True)
    vico_flow.minmax_matmul(A, B).backward(torch.ones(1, 1))
    assert torch.equal(A.grad, torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.equal(B.grad, torch.zeros(3, 1))
    # B strictly smaller at the first maximal r: B gets it.
    A = torch.tensor([[3.0, 1.0]], requires_grad=True)
    B = torch.tensor([[1.0], [1.0]], requires_grad=True)
    vico_flow.minmax_matmul(A, B).backward(torch.ones(1, 1))
    assert torch.equal(A.grad, torch.zeros(1, 2)) and torch.equal(B.grad, torch.tensor([[1.0], [0.0]]))


# Depth of the CPU kernel's chunks: the tests below span several of them.
KC = vico_flow._backends.compiled_extension().hard_depth_chunk


@pytest.mark.parametrize("m", [4, 40])  # B searched in place / through its transposed copy
def test_ties_across_sub_chunks_and_chunks(isa, m):
    # The CPU kernel notes in which 16-deep sub-chunk each max was first reached
    # while it computes (in depth chunks of KC), then searches that sub-chunk.
    # Equal maxima later in the same sub-chunk, in later sub-chunks and in later
    # chunks must not move the argmax off the first r.
    k = 2 * KC + 88
    A = torch.zeros(m, k)
    B = torch.zeros(k, 70)
    ties = [5, 9, 64, 130, KC, KC + 43, 2 * KC + 87]
    A[:, ties] = 1.0
    B[ties, :] = 1.0
    for first in (5, 9, 64, 130, KC, KC + 43):
        C, idx = vico_flow.minmax_matmul_with_argmax(A, B)
        assert bool((C == 1).all()) and bool((idx == first).all()), first
        A[:, first] = 0.5  # no longer a maximum: the next tie wins
    A[:, 2 * KC + 8] = 2.0  # a strictly larger max in the third chunk, tied again at its end
    B[[2 * KC + 8, 2 * KC + 87], :] = 2.0
    A[:, 2 * KC + 87] = 2.0
    C, idx = vico_flow.minmax_matmul_with_argmax(A, B)
    assert bool((C == 2).all()) and bool((idx == 2 * KC + 8).all())


@pytest.mark.parametrize("m,k,n", [(50, 300, 301), (40, 513, 64), (33, KC + 6, 70), (24, 2 * KC + 52, 40)])
@pytest.mark.parametrize("kind", KINDS)
def test_deep_products_bit_identical(isa, m, k, n, kind):
    # Many sub-chunks, several depth chunks, a ragged last sub-chunk, and
    # enough rows for the winner search to go through the transposed copy of B.
    g = torch.Generator().manual_seed(k + n)
    check_exact(rand(m, k, kind=kind, gen=g), rand(k, n, kind=kind, gen=g))


@pytest.mark.parametrize("kind", KINDS)
def test_operands_packed_once_bit_identical(isa, kind):
    # Products with more than one column block of C (256 columns) pack A once
    # for all their tasks, and with more than one row block (48 to 192 rows,
    # by the work) pack B once: a parallel pass before the product, strips of
    # each depth chunk of each product. Here both, over a batch, two depth
    # chunks (the last one ragged), with and without the argmax, on contiguous,
    # transposed and sliced operands and B broadcast over the batch.
    g = torch.Generator().manual_seed(11 + KINDS.index(kind))
    k = KC + 40
    A = rand(2, 60, k, kind=kind, gen=g)
    B = rand(2, k, 290, kind=kind, gen=g)
    check_exact(A, B)
    check_exact(A.transpose(1, 2).contiguous().transpose(1, 2), B.transpose(1, 2).contiguous().transpose(1, 2))
    check_exact(rand(130, 2 * k, kind=kind, gen=g)[::2, ::2], rand(k, 600, kind=kind, gen=g)[:, 1::2])
    check_exact(A, B[0])


@pytest.mark.parametrize("k", [1024, 1030])
@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_search_through_large_copy_of_b(isa, k, kind):
    # The winner search reads a transposed copy of B made beside the product
    # (4 MB here: whole 16x16 vector blocks, then a ragged edge when k = 1030).
    g = torch.Generator().manual_seed(k)
    B = rand(k, 1024, kind=kind, gen=g)
    assert B.numel() * 4 >= 4 << 20
    check_exact(rand(40, k, kind=kind, gen=g), B)


@pytest.mark.parametrize("batch,m,k,n", [((), 1024, 48, 1024), ((), 1030, 40, 1030), ((2,), 1024, 40, 520)])
@pytest.mark.parametrize("kind", ["uniform", "ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_search_after_streamed_sub_chunk_ids(isa, batch, m, k, n, kind, dtype):
    # Products of one depth chunk with 1M outputs or more (over the batch)
    # write the sub-chunk of each output's max with non-temporal stores, a
    # tile row at a time where the row starts a cache line (every row when n
    # is a multiple of 16, some rows when not); the winner search reads them
    # back right after.
    g = torch.Generator().manual_seed(m + k)
    A, B = rand(*batch, m, k, dtype=dtype, kind=kind, gen=g), rand(k, n, dtype=dtype, kind=kind, gen=g)
    assert math.prod(batch) * m * n * 4 >= 4 << 20  # past the kernels' streaming threshold
    check_exact(A, B)


@pytest.fixture(scope="module")
def few_rows_case():
    """Operands of products with few rows against a wide B (the flow rows of
    ST-Flow), their reference winners and gradients, by (shapes, kind, dtype)."""
    cache = {}

    def get(a_shape, b_shape, kind, dtype):
        key = (a_shape, b_shape, kind, dtype)
        if key not in cache:
            g = torch.Generator().manual_seed(sum(a_shape) + sum(b_shape) + KINDS.index(kind))
            A, B = rand(*a_shape, dtype=dtype, kind=kind, gen=g), rand(*b_shape, dtype=dtype, kind=kind, gen=g)
            A3 = A if A.dim() == 3 else A[None]
            B3 = B.expand(A3.shape[0], -1, -1)
            up = torch.randint(-3, 4, (A3.shape[0], A3.shape[1], B3.shape[2]), generator=g).to(dtype)  # exact sums
            C, idx = reference.minmax_matmul_argmax(A3, B3)
            rA, rB = reference.minmax_matmul_backward(up, A3, B3, idx)
            shape = (*A.shape[:-1], B.shape[-1])
            cache[key] = (A, B, up.reshape(shape), C.reshape(shape), idx.reshape(shape), rA.reshape(A.shape), rB.sum(0))
        return cache[key]

    return get


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((4, 1030), (1030, 2050)), ((3, 5, 300), (300, 700))],
    ids=["thin, 8 MB dB", "batched thin"],
)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_few_rows_against_wide_b(isa, few_rows_case, a_shape, b_shape, kind, dtype):
    # A few rows of outputs: the winner search reads B in place, split into
    # column blocks so that every thread gets some (9 and 3 blocks here, the
    # last one ragged), and settles from A alone the outputs where one r of
    # the sub-chunk has A >= C (most of them on 'uniform'; the small integers
    # of 'ties' seldom allow it). The backward zeroes dB's column tiles in
    # place (with non-temporal stores in the 8 MB case) and adds the outputs
    # into dB itself. k = 1030 leaves a ragged last sub-chunk.
    A, B, up, C_ref, idx_ref, rA, rB = few_rows_case(a_shape, b_shape, kind, dtype)
    C, idx = vico_flow.minmax_matmul_with_argmax(A, B)
    assert torch.equal(C, C_ref) and torch.equal(idx.long(), idx_ref)
    dA, dB = _grads(A, B, up, "cpu")
    assert torch.equal(dA, rA) and torch.equal(dB, rB)


@pytest.mark.parametrize("kind", KINDS)
def test_small_products_read_b_in_place_or_gathered(isa, kind):
    # Many small products (n <= 32) take their own path, which reads B's rows
    # in place when they are whole vectors (contiguous rows, n a multiple of
    # the vector width) and gathers them into a padded buffer otherwise.
    g = torch.Generator().manual_seed(7)
    A = rand(40, 4, 20, kind=kind, gen=g)
    wide = rand(40, 20, 48, kind=kind, gen=g)
    for B in (wide[..., :16].contiguous(), wide[..., :32], wide[..., 3:19], wide[..., ::2][..., :16], wide[..., :7]):
        check_exact(A, B)


@pytest.mark.parametrize("batch,m,k,n", [(5, 64, 256, 30), (3, 17, 1, 32), (40, 3, 0, 5)])
def test_small_products_split_by_work(isa, batch, m, k, n):
    # The small-product path gives each task about the same number of triples
    # (several products when they are tiny, one each when they are large): a
    # few large products run one per task, and an empty depth still writes
    # every output (-inf, winner 0).
    g = torch.Generator().manual_seed(batch * 1000 + k)
    check_exact(rand(batch, m, k, gen=g), rand(batch, k, n, gen=g))


@pytest.mark.parametrize("with_argmax", [False, True])
@pytest.mark.parametrize("n", [150, 300])  # B packed once; both operands packed once (two column blocks)
def test_blocks_on_both_instruction_paths(isa, with_argmax, n):
    # Each cache block of the CPU kernel picks its min instruction from what
    # its packed operands hold: the integer min on the bits for values >= +0
    # or -inf, the float min otherwise (a negative value, -0.0). Here the
    # blocks behind one output differ, and the min of two negatives decides:
    # A has a negative row block (rows >= 150), B a negative depth chunk
    # (rows KC..2KC) that holds the max of columns < 100 (the other chunks
    # are -10 there), and a -0.0 in the last chunk.
    g = torch.Generator().manual_seed(7)
    m, k = 200, 2 * KC + 188
    A, B = rand(m, k, kind="ties", gen=g), rand(k, n, kind="ties", gen=g)
    A[150:] -= 3.0
    B[KC : 2 * KC] -= 5.0
    B[:KC, :100] = -10.0
    B[2 * KC :, :100] = -10.0
    B[2 * KC + 138, 140] = -0.0  # below -inf as an integer: its block must take the float min
    A[5] = -math.inf  # ... which keeps C[5, 140] = min(-inf, -0.0) = -inf
    if with_argmax:
        check_exact(A, B)
    else:
        assert torch.equal(vico_flow.minmax_matmul(A, B, backend="cpu"), reference.minmax_matmul(A, B))
    # the same values shifted so that every block is on the integer path: same winners
    C, idx = vico_flow.minmax_matmul_with_argmax(A + 3.0, B + 3.0)
    C_ref, idx_ref = reference.minmax_matmul_argmax(A + 3.0, B + 3.0)
    assert torch.equal(C, C_ref) and torch.equal(idx.long(), idx_ref)


@pytest.mark.parametrize("n", [100, 300])  # B packed once; both operands packed once
@pytest.mark.parametrize("minus_zero_in_a", [True, False])
def test_minus_zero_against_minus_inf_on_the_integer_path(isa, n, minus_zero_in_a):
    # As an integer, -0.0 is below every other value, -inf included: a block
    # holding it must take the float min, where min(-0.0, -inf) = -inf, even
    # when the other operand's block is all >= +0 or -inf. One output meets
    # only that pair; the rest of its row and column are -inf or >= +0.
    g = torch.Generator().manual_seed(n)
    m, k, r, j = 100, 40, 5, n - 50
    A, B = rand(m, k, gen=g), rand(k, n, gen=g)
    if minus_zero_in_a:
        A[7] = -math.inf
        A[7, r], B[r, j] = -0.0, -math.inf
    else:
        B[:, j] = -math.inf
        B[r, j], A[7, r] = -0.0, -math.inf
    check_exact(A, B)
    assert vico_flow.minmax_matmul(A, B)[7, j] == -math.inf


def test_half_precision_grads_match_reference(isa):
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float16, torch.bfloat16):
        A, B = rand(20, 30, dtype=dtype, kind="ties", gen=g), rand(30, 25, dtype=dtype, kind="ties", gen=g)
        up = torch.ones(20, 25, dtype=dtype)
        dA, dB = _grads(A, B, up, "cpu")
        rA, rB = _grads(A, B, up, "reference")
        assert dA.dtype == dtype and torch.equal(dA, rA) and torch.equal(dB, rB)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(6)
    A = rand(2, 6, 9, dtype=torch.float64, gen=g).requires_grad_()
    B = rand(9, 5, dtype=torch.float64, gen=g).requires_grad_()
    assert torch.autograd.gradcheck(vico_flow.minmax_matmul, (A, B))


def test_no_grad_needed_skips_argmax():
    A, B = torch.rand(8, 9), torch.rand(9, 7)
    C, idx = torch.ops.vico_flow.minmax_mm(A[None], B[None], "cpu", False)
    assert idx.numel() == 0 and torch.equal(C[0], reference.minmax_matmul(A, B))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,m,k", [(1, 4, 40960), (2, 5, 4097), (3, 1, 64), (1, 7, 100), (2, 3, 8192), (2, 150, 5000)])
def test_one_column_products_bit_identical(isa, dtype, b, m, k):
    # n == 1 from depth 64 on runs with vectors along r, in blocks of 4096
    # values of r and 64 rows (ColArgs): ragged tails, several blocks of
    # both, every value kind.
    g = torch.Generator().manual_seed(b * 100000 + k)
    for kind in ("uniform", "ties", "inf", "signed", "negative"):
        A, B = rand(b, m, k, dtype=dtype, kind=kind, gen=g), rand(b, k, 1, dtype=dtype, kind=kind, gen=g)
        assert torch.equal(vico_flow.minmax_matmul(A, B), reference.minmax_matmul(A, B)), kind
    # strided: A transposed (r not contiguous), B one column of a wider matrix, broadcast over the batch
    At = rand(b, k, m, dtype=dtype, gen=g).transpose(1, 2)
    Bw = rand(k, 3, dtype=dtype, gen=g)[:, 1:2]
    assert torch.equal(vico_flow.minmax_matmul(At, Bw), reference.minmax_matmul(At, Bw))
    # the soft product's shift H comes from the same path
    S = vico_flow.soft_minmax_matmul(At, Bw, 0.05).double()
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2  # half types: the output's rounding
    torch.testing.assert_close(S, reference.soft_minmax_matmul(At.double(), Bw.double(), 0.05), rtol=tol, atol=tol)
