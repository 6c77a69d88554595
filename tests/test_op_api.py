"""The public API of the products: custom-op registration (opcheck, compile),
backends, and a clear error for every bad input."""
import math
import re
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vico_flow
from vico_flow import reference

FUNCS = {
    "minmax_matmul": lambda A, B, **kw: vico_flow.minmax_matmul(A, B, **kw),
    "soft_minmax_matmul": lambda A, B, **kw: vico_flow.soft_minmax_matmul(A, B, 0.1, **kw),
}


# The product ops take operands with the same batch dims, none to several.
OP_BATCHES = [(), (2,), (2, 1)]


@pytest.mark.parametrize("batch", OP_BATCHES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_opcheck(backend, batch):
    A = torch.rand(*batch, 5, 7, dtype=torch.float64, requires_grad=True)
    B = torch.rand(*batch, 7, 3, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.vico_flow
    torch.library.opcheck(ops.minmax_mm.default, (A, B, backend, True))
    torch.library.opcheck(ops.minmax_mm.default, (A.detach(), B.detach(), backend, False))
    torch.library.opcheck(ops.soft_minmax_mm.default, (A, B, 0.1, backend))
    g = torch.rand(*batch, 5, 3, dtype=torch.float64)
    _, idx = ops.minmax_mm(A.detach(), B.detach(), backend, True)
    C = ops.soft_minmax_mm(A.detach(), B.detach(), 0.1, backend)
    torch.library.opcheck(ops.minmax_mm_backward.default, (g, A.detach(), B.detach(), idx, backend))
    torch.library.opcheck(ops.soft_minmax_mm_backward.default, (g, A.detach(), B.detach(), C, 0.1, backend))
    if backend == "cpu":  # the CPU backend's own ops (what the public functions call; autograd in C++)
        torch.library.opcheck(ops.minmax_mm_cpu.default, (A, B, True))
        torch.library.opcheck(ops.minmax_mm_cpu.default, (A.detach(), B.detach(), False))
        torch.library.opcheck(ops.soft_minmax_mm_cpu.default, (A, B, 0.1))
        args = (g, A.detach(), B.detach())
        torch.library.opcheck(ops.minmax_mm_backward_cpu.default, (*args, idx))
        torch.library.opcheck(ops.soft_minmax_mm_backward_cpu.default, (*args, C, 0.1))
        for native, generic in ((ops.minmax_mm_cpu(A, B, True), ops.minmax_mm(A, B, "cpu", True)),
                                ((ops.soft_minmax_mm_cpu(A, B, 0.1),), (ops.soft_minmax_mm(A, B, 0.1, "cpu"),)),
                                (ops.minmax_mm_backward_cpu(*args, idx), ops.minmax_mm_backward(*args, idx, "cpu")),
                                (ops.soft_minmax_mm_backward_cpu(*args, C, 0.1),
                                 ops.soft_minmax_mm_backward(*args, C, 0.1, "cpu"))):
            assert all(torch.equal(x, y) for x, y in zip(native, generic))


@pytest.mark.parametrize("product", ["hard", "soft"])
def test_cpu_ops_and_generic_ops_give_the_same_gradients(product):
    # The public functions reach the CPU kernels through the extension's ops
    # (autograd in C++); the generic custom ops reach them through Python
    # autograd formulas. Both must route every gradient alike, ties included.
    ops = torch.ops.vico_flow
    g = torch.Generator().manual_seed(5)
    A = torch.randint(0, 4, (2, 9, 13), generator=g).double().requires_grad_()  # many ties
    B = torch.randint(0, 4, (2, 13, 6), generator=g).double().requires_grad_()
    up = torch.rand(2, 9, 6, generator=g, dtype=torch.float64)
    if product == "hard":
        outs = (ops.minmax_mm_cpu(A, B, True)[0], ops.minmax_mm(A, B, "cpu", True)[0])
    else:
        outs = (ops.soft_minmax_mm_cpu(A, B, 0.1), ops.soft_minmax_mm(A, B, 0.1, "cpu"))
    (nA, nB), (gA, gB) = (torch.autograd.grad(out, (A, B), up) for out in outs)
    assert torch.equal(outs[0], outs[1]) and torch.equal(nA, gA) and torch.equal(nB, gB)
    assert "cpu" in outs[0].grad_fn.name().lower()


def test_cpu_op_without_argmax_refuses_backward():
    A = torch.rand(4, 5, requires_grad=True)
    C, winners = torch.ops.vico_flow.minmax_mm_cpu(A, torch.rand(5, 3), False)
    assert winners.numel() == 0
    with pytest.raises(RuntimeError, match="with_argmax=False, so it kept no argmax"):
        C.sum().backward()


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_no_autograd_nodes_beside_the_op(name):
    # Operands whose batch dims already agree reach the op as they are: an
    # expand or reshape in the public function would be one more node for
    # every backward to run. Broadcast batch dims need (and get) an expand.
    A = torch.rand(5, 7, requires_grad=True)
    B = torch.rand(7, 3, requires_grad=True)
    C = FUNCS[name](A, B)
    assert "minmaxmm" in C.grad_fn.name().lower()
    assert {type(f).__name__ for f, _ in C.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}
    C = FUNCS[name](torch.rand(2, 5, 7), B)
    assert "minmaxmm" in C.grad_fn.name().lower()
    assert [type(f).__name__ for f, _ in C.grad_fn.next_functions if f is not None] == ["ExpandBackward0"]


def test_torch_compile_forward_and_backward():
    def f(A, B, F):
        return vico_flow.soft_minmax_matmul(vico_flow.minmax_matmul(A, B) * 0.5, F, 0.05).sum()

    A = torch.rand(3, 9, 11, requires_grad=True)
    B = torch.rand(11, 8, requires_grad=True)
    F = torch.rand(8, 4)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(A, B, F)
    out.backward()
    gA, gB = A.grad.clone(), B.grad.clone()
    A.grad = B.grad = None
    f(A, B, F).backward()
    torch.testing.assert_close(out, f(A, B, F))
    torch.testing.assert_close(gA, A.grad)
    torch.testing.assert_close(gB, B.grad)


def test_meta_tensors_give_shapes():
    A = torch.empty(4, 1, 5, 7, device="meta")
    B = torch.empty(3, 7, 2, device="meta")
    assert vico_flow.minmax_matmul(A, B).shape == (4, 3, 5, 2)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_backends_agree(backend):
    A, B = torch.rand(3, 20, 30), torch.rand(30, 10)
    assert torch.equal(vico_flow.minmax_matmul(A, B, backend=backend), reference.minmax_matmul(A, B))
    assert "cpu" in vico_flow.available_backends() and "reference" in vico_flow.available_backends()


def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize("name", FUNCS)
def test_bad_inputs_raise_clear_errors(name):
    f = FUNCS[name]
    A, B = torch.rand(3, 4), torch.rand(4, 5)
    _raises(ValueError, r"inner dimensions differ.*k=4.*k=3", f, A, torch.rand(3, 5))
    _raises(TypeError, r"same dtype.*float32.*float64", f, A, B.double())
    _raises(TypeError, r"A has dtype torch.int64; expected float16", f, A.long(), B.long())
    _raises(TypeError, r"B has dtype torch.complex64", f, A, B.to(torch.complex64))
    _raises(TypeError, r"A must be a torch.Tensor, got list", f, [[1.0]], B)
    _raises(ValueError, r"A must have at least 2 dimensions.*\(4,\)", f, torch.rand(4), B)
    _raises(ValueError, r"B must have at least 2 dimensions.*\(\)", f, A, torch.tensor(1.0))
    _raises(ValueError, r"same device.*meta", f, A, B.to("meta"))
    _raises(ValueError, r"batch dimensions.*\(2,\).*\(3,\).*do not broadcast", f, torch.rand(2, 3, 4), torch.rand(3, 4, 5))
    A_nan = A.clone()
    A_nan[1, 2] = math.nan
    _raises(ValueError, r"A contains NaN \(first at index \(1, 2\)\)", f, A_nan, B)  # the caller's index
    B_nan = B.clone()
    B_nan[0, 0] = math.nan
    _raises(ValueError, r"B contains NaN", f, A, B_nan)
    _raises(ValueError, r"backend must be one of", f, A, B, backend="gpu")
    if not torch.cuda.is_available():
        _raises(ValueError, r"backend 'cuda' is not available", f, A, B, backend="cuda")


# (m, k, n) reaching each CPU kernel path: the small-product path (B gathered,
# and B's rows read in place), the cache-
# tiled path with several depth chunks and ragged edges, rows enough for the
# winner search to use its transposed copy of B, and both operands packed once
# before the product's tasks (more than one row block and column block; two
# depth chunks).
# (the last two: one-column products, read with vectors along r in blocks of 4096)
NAN_SHAPES = [(5, 9, 7), (4, 16, 16), (64, 256, 32), (70, 300, 90), (33, 513, 40), (50, 1040, 300), (3, 70, 1),
              (4, 5000, 1)]


@given(
    shape=st.sampled_from(NAN_SHAPES),
    in_a=st.booleans(),
    where=st.floats(0, 1, exclude_max=True),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    name=st.sampled_from(sorted(FUNCS)),
    grad=st.booleans(),
)
def test_cpu_kernels_refuse_nan_anywhere(isa, shape, in_a, where, dtype, name, grad):
    # The CPU backend skips the separate NaN scan: its kernels look for NaN as
    # they pack the operands. A NaN at any position, on any path, ISA and dtype,
    # must still raise the API's error naming the operand and the first NaN.
    m, k, n = shape
    A, B = torch.rand(2, m, k).to(dtype), torch.rand(k, n).to(dtype)
    target = A if in_a else B
    flat = int(where * target.numel())
    target.view(-1)[flat] = math.nan
    # indices name the operand with its batch dims broadcast (B expanded to A's)
    index = tuple(int(v) for v in torch.nonzero(torch.isnan(A if in_a else B.expand(2, k, n)))[0])
    A.requires_grad_(grad)
    B.requires_grad_(grad)
    message = f"{'A' if in_a else 'B'} contains NaN (first at index {index})"
    _raises(ValueError, re.escape(message), FUNCS[name], A, B, backend="cpu")


def test_cpu_kernels_refuse_nan_in_empty_outputs():
    # No output, so the kernels read nothing: the scan still refuses the operand.
    A = torch.rand(4, 6)
    A[2, 3] = math.nan
    for f in FUNCS.values():
        _raises(ValueError, r"A contains NaN", f, A, torch.rand(6, 0), backend="cpu")


def test_bad_tau():
    A, B = torch.rand(3, 4), torch.rand(4, 5)
    for tau in (0.0, -1.0, math.inf, math.nan):
        _raises(ValueError, r"tau must be a finite number > 0", vico_flow.soft_minmax_matmul, A, B, tau)
    _raises(TypeError, r"tau must be a real number, got str", vico_flow.soft_minmax_matmul, A, B, "0.1")
    _raises(TypeError, r"tau must be a real number", vico_flow.soft_minmax_matmul, A, B, torch.tensor(0.1))


def test_isa_selection_errors():
    from vico_flow import _backends

    ext = _backends.compiled_extension()
    _raises(ValueError, r"isa must be 'auto', 'avx512', 'avx2' or 'scalar'", ext.set_cpu_isa, "sse9")
    assert ext.cpu_isa() in ext.available_cpu_isas()


def test_hard_backward_does_not_build_a_gradient_for_the_winners():
    # The forward's second output (int32 winners) never receives a gradient;
    # autograd must not allocate and zero one the size of C on every backward.
    A = torch.rand(64, 48, requires_grad=True)
    B = torch.rand(48, 80, requires_grad=True)
    out = vico_flow.minmax_matmul(A, B)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out.backward(torch.ones_like(out))
    names = {e.key for e in prof.key_averages()}
    assert "vico_flow::minmax_mm_backward_cpu" in names  # the CPU backend's backward op
    assert not names & {"aten::zeros", "aten::zero_", "aten::zeros_like"}, sorted(names)
    rA, rB = torch.autograd.grad(reference.minmax_matmul(A, B).sum(), (A, B))
    assert torch.equal(A.grad, rA) and torch.equal(B.grad, rB)


def test_large_outputs_reuse_the_memory_of_dead_outputs():
    # Outputs of 1 MB or more come from memory the CPU kernels keep, so that a
    # repeated call meets no page faults; a live output is never handed out.
    vico_flow.empty_cpu_cache()
    A, B = torch.rand(512, 40), torch.rand(40, 512)  # C: 512 x 512 float32 = 1 MB
    C = vico_flow.minmax_matmul(A, B)
    ptr = C.data_ptr()
    other = vico_flow.minmax_matmul(A + 1.0, B)  # C is alive: another block
    assert other.data_ptr() != ptr
    del C
    kept = vico_flow._backends.compiled_extension().cached_output_bytes
    assert kept() >= 512 * 512 * 4  # C's block, waiting for the next output
    again = vico_flow.minmax_matmul(A, B)
    assert again.data_ptr() == ptr and kept() == 0
    assert torch.equal(again, reference.minmax_matmul(A, B))
    assert torch.equal(other, reference.minmax_matmul(A + 1.0, B))
    del again, other
    assert vico_flow.empty_cpu_cache() >= 2 * 512 * 512 * 4
    assert vico_flow.empty_cpu_cache() == 0


def test_the_last_freed_block_is_reused_first():
    # Of two kept blocks of one size, the next output takes the one freed
    # last: its lines are the likeliest to still be in cache.
    vico_flow.empty_cpu_cache()
    A, B = torch.rand(512, 40), torch.rand(40, 512)
    first, second = vico_flow.minmax_matmul(A, B), vico_flow.minmax_matmul(A, B)
    ptrs = (first.data_ptr(), second.data_ptr())
    del first, second  # `second` is freed last
    assert vico_flow.minmax_matmul(A, B).data_ptr() == ptrs[1]
    vico_flow.empty_cpu_cache()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts page faults (getrusage)")
@pytest.mark.parametrize("product", ["hard", "soft"])
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def test_warm_calls_touch_no_fresh_memory(product, phase):
    # A repeated call meets no page faults: its outputs, gradients and
    # scratch copies come from memory kept between calls. The soft forward's
    # copy of B scaled by s went through the Scalar overload of mul_out,
    # which made a temporary and copied it: a fresh B-sized buffer per call,
    # every page a fault ([4 x 4096] x [4096 x 4096] took 39 ms instead of
    # 19). A warm call may fault on a few pages, not on B's 16384. B is
    # larger than the C library ever serves from its heap (32 MB), so that
    # such a temporary is a fresh mapping every time; the fewest faults of
    # three calls are counted, as the library now and then hands pages of its
    # heap back to the system.
    import resource

    f = vico_flow.minmax_matmul if product == "hard" else vico_flow.soft_minmax_matmul
    A = torch.rand(4, 4096, requires_grad=phase == "fwd+bwd")
    B = torch.rand(4096, 4096, requires_grad=phase == "fwd+bwd")  # 64 MB: 16384 pages
    up = torch.ones(4, 4096)

    def call():
        A.grad = B.grad = None
        C = f(A, B)
        if phase == "fwd+bwd":
            C.backward(up)

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(2):  # warm: the kept memory and the threads' buffers exist
        call()
    fewest = min(faults() for _ in range(3))
    assert fewest < B.numel() * 4 // 4096 // 8, fewest


def _mapping_of(addr: int) -> tuple[int, int, str, int]:
    """(start, end, name, AnonHugePages KiB) of the mapping holding addr (/proc/self/smaps)."""
    found = None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        head = fields[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = (lo, hi, fields[5] if len(fields) > 5 else "") if lo <= addr < hi else None
        elif found and head == "AnonHugePages:":
            return (*found, int(fields[1]))
    raise AssertionError(f"no mapping holds {addr:#x}")


def _transparent_huge_pages() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_whole_huge_page_outputs_are_fresh_mappings():
    # An output of whole 2 MB pages gets its own fresh, aligned mapping, asked
    # for huge pages. Taken from the C library, it came from heap pages already
    # faulted in as 4 KB ones once large blocks had been freed (the library then
    # serves blocks of that size from its heap), and lost its huge pages.
    big = torch.empty(4 << 20)  # 16 MB: its free raises the C library's mmap threshold
    del big
    vico_flow.empty_cpu_cache()
    C = vico_flow.minmax_matmul(torch.rand(1024, 8), torch.rand(8, 1024))  # 4 MB: two huge pages
    start, end, name, huge_kib = _mapping_of(C.data_ptr())
    assert C.data_ptr() % (2 << 20) == 0 and name == "", (hex(start), hex(end), name)
    if _transparent_huge_pages() in ("always", "madvise"):
        assert huge_kib >= 2048, huge_kib
    del C
    vico_flow.empty_cpu_cache()


@pytest.mark.parametrize("product", ["hard", "soft"])
def test_recycled_outputs_are_ordinary_tensors(product):
    # Gradients accumulate into .grad across calls, outputs resize and take
    # in-place ops, and a recycled block holds no stale values that leak out.
    f = vico_flow.minmax_matmul if product == "hard" else (lambda a, b: vico_flow.soft_minmax_matmul(a, b, 0.1))
    ref = reference.minmax_matmul if product == "hard" else (lambda a, b: reference.soft_minmax_matmul(a, b, 0.1))
    g = torch.Generator().manual_seed(3)
    A0, B0 = torch.rand(520, 600, generator=g, dtype=torch.float64), torch.rand(600, 530, generator=g, dtype=torch.float64)
    grads = []
    for _ in range(2):
        A = A0.clone().requires_grad_()
        B = B0.clone().requires_grad_()
        for _ in range(2):
            f(A, B).sum().backward()
        grads.append((A.grad, B.grad))
    A = A0.clone().requires_grad_()
    B = B0.clone().requires_grad_()
    ref(A, B).sum().backward()
    for dA, dB in grads:
        torch.testing.assert_close(dA, 2 * A.grad)
        torch.testing.assert_close(dB, 2 * B.grad)
    C = f(A0, B0)
    torch.testing.assert_close(C, ref(A0, B0))
    C.mul_(2).resize_(1000, 1000).fill_(1.5)
    assert C.shape == (1000, 1000) and bool((C == 1.5).all())
