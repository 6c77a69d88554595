"""Triton kernels: the same semantics as csrc/tropical_common.h.

Every kernel works on one [BLOCK_M, BLOCK_N] tile of outputs of one batch
entry (program axis 1) and walks the inner dimension in BLOCK_K chunks,
forming the [BLOCK_M, BLOCK_K, BLOCK_N] triples of a chunk in registers (no
tensor cores apply to min/max). Program ids along axis 0 are swizzled in
groups of GROUP_M row tiles (Triton matmul tutorial) so that neighbouring
programs share B tiles in L2.

Soft products are computed in base 2 on operands scaled by s = log2(e)/tau
and shifted by the hard product H (C = H + tau ln sum_r 1/(2^((H-a)s) +
2^((H-b)s))), with exponents clamped to +-EXP2_CLAMP: the sum lies in [1/2, k],
so nothing overflows at any tau. Half types compute in float32.
"""
import triton
import triton.language as tl

# kExp2Clamp in csrc/tropical_common.h; a constexpr, since compiled kernels may read
# only constexpr globals (the interpreter reads any).
EXP2_CLAMP = tl.constexpr(100.0)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    group = pid // per_group
    first_m = group * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.jit
def _k_slab(A, B, rm, rn, kk, M, N, K, sam, sak, sbk, sbn):
    """A[rm, kk] and B[kk, rn], -inf outside the matrices (the identity of max)."""
    a = tl.load(A + rm[:, None] * sam + kk[None, :] * sak, mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=float("-inf"))
    b = tl.load(B + kk[:, None] * sbk + rn[None, :] * sbn, mask=(kk[:, None] < K) & (rn[None, :] < N),
                other=float("-inf"))
    return a, b


@triton.jit
def _exp2_clamped(x):
    """2^x with x clamped to [-EXP2_CLAMP, EXP2_CLAMP], as the CPU and CUDA kernels."""
    return tl.exp2(tl.minimum(tl.maximum(x, -EXP2_CLAMP), EXP2_CLAMP))


@triton.jit
def hard_fwd_kernel(
    A, B, C, Win,
    M, N, K,
    sab, sam, sak,
    sbb, sbk, sbn,
    scb, scm, scn,
    WITH_WINNERS: tl.constexpr, F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = A (max,min) B; with WITH_WINNERS also the encoded winner of each
    output: the first r reaching the max, r if A <= B there else ~r."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    bid = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    A += bid * sab
    B += bid * sbb
    acc = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float64 if F64 else tl.float32)
    arg = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a, b = _k_slab(A, B, rm, rn, kk, M, N, K, sam, sak, sbk, sbn)
        a = a.to(acc.dtype)
        b = b.to(acc.dtype)
        t = tl.minimum(a[:, :, None], b[None, :, :])  # [BM, BK, BN]
        cmax = tl.max(t, axis=1)
        if WITH_WINNERS:
            # first r of the chunk reaching its max (ties -> lowest r)
            hit = t == cmax[:, None, :]
            first = tl.min(tl.where(hit, kk[None, :, None], K + BLOCK_K), axis=1)
            better = cmax > acc  # strict: an earlier chunk keeps ties
            arg = tl.where(better, first, arg)
            acc = tl.where(better, cmax, acc)
        else:
            acc = tl.maximum(acc, cmax)
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(C + bid * scb + rm[:, None] * scm + rn[None, :] * scn, acc, mask=cmask)
    if WITH_WINNERS:
        # (K > 0 here: the host handles empty inner dimensions)
        av = tl.load(A + rm[:, None] * sam + arg * sak, mask=cmask, other=0.0)
        bv = tl.load(B + arg * sbk + rn[None, :] * sbn, mask=cmask, other=0.0)
        win = tl.where(av <= bv, arg, -arg - 1)
        tl.store(Win + bid * M * N + rm[:, None] * N + rn[None, :], win, mask=cmask)


@triton.jit
def soft_fwd_kernel(
    A, B, H, C,
    M, N, K,
    sab, sam, sak,
    sbb, sbk, sbn,
    scale, tau,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = H + tau ln sum_r 1/(2^((H-a)s) + 2^((H-b)s)), H the hard product
    (contiguous [b, M, N], the compute dtype); C contiguous, output dtype."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    bid = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    A += bid * sab
    B += bid * sbb
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    h = tl.load(H + bid * M * N + rm[:, None] * N + rn[None, :], mask=cmask, other=0.0)
    finite = (h == h) & (tl.abs(h) < float("inf"))
    hs = tl.where(finite, h, 0.0) * scale
    total = tl.zeros((BLOCK_M, BLOCK_N), h.dtype)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        # padding -inf: 2^(hs - (-inf)) clamps to 2^100, its term is ~0
        a, b = _k_slab(A, B, rm, rn, kk, M, N, K, sam, sak, sbk, sbn)
        a = a.to(h.dtype) * scale
        b = b.to(h.dtype) * scale
        ea = _exp2_clamped(hs[:, None, :] - a[:, :, None])
        eb = _exp2_clamped(hs[:, None, :] - b[None, :, :])
        total += tl.sum(1.0 / (ea + eb), axis=1)
    out = tl.where(finite, h + tau * tl.log(total), h)
    tl.store(C + bid * M * N + rm[:, None] * N + rn[None, :], out, mask=cmask)


@triton.jit
def soft_grad_rhs_kernel(
    A, B, C, G, D,
    M, N, K,
    sab, sam, sak,
    sbb, sbk, sbn,
    scb, scm, scn,
    sgb, sgm, sgn,
    sdb, sdk, sdn,
    scale,
    F64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, GROUP_M: tl.constexpr,
):
    """D = dC/dB: D[r, j] = sum_i g[i,j] v p^2 with u = 2^((c-a)s), v = 2^((c-b)s),
    p = 1/(u+v); outputs whose C is not finite pass nothing. dC/dA is this
    kernel on the transposed problem (strides make transposes free)."""
    pid_r, pid_n = _tile_ids(K, N, BLOCK_R, BLOCK_N, GROUP_M)
    bid = tl.program_id(1)
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ri = tl.arange(0, BLOCK_I)
    A += bid * sab
    B += bid * sbb
    C += bid * scb
    G += bid * sgb
    bmask = (rr[:, None] < K) & (rn[None, :] < N)
    ct = tl.float64 if F64 else tl.float32
    b = tl.load(B + rr[:, None] * sbk + rn[None, :] * sbn, mask=bmask, other=0.0).to(ct)
    total = tl.zeros((BLOCK_R, BLOCK_N), ct)
    for i0 in range(0, M, BLOCK_I):
        ii = i0 + ri
        a = tl.load(A + ii[:, None] * sam + rr[None, :] * sak, mask=(ii[:, None] < M) & (rr[None, :] < K),
                    other=0.0).to(ct)  # [BI, BR]
        cmask = (ii[:, None] < M) & (rn[None, :] < N)
        c = tl.load(C + ii[:, None] * scm + rn[None, :] * scn, mask=cmask, other=0.0).to(ct)
        g = tl.load(G + ii[:, None] * sgm + rn[None, :] * sgn, mask=cmask, other=0.0).to(ct)
        live = (c == c) & (tl.abs(c) < float("inf"))
        g = tl.where(live, g, 0.0)
        c = tl.where(live, c, 0.0)  # [BI, BN]
        # Each difference before the scaling: c*s - a*s rounds two products
        # at ~s times the values' size (the CPU kernels' col_terms).
        u = _exp2_clamped((c[:, None, :] - a[:, :, None]) * scale)
        v = _exp2_clamped((c[:, None, :] - b[None, :, :]) * scale)
        p = 1.0 / (u + v)
        total += tl.sum(g[:, None, :] * v * p * p, axis=0)
    tl.store(D + bid * sdb + rr[:, None] * sdk + rn[None, :] * sdn, total, mask=bmask)


@triton.jit
def hard_bwd_kernel(
    G, Win, DA, DB,
    M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Scatter of the hard gradient: output (i, j) adds g to DA[i, r] (winner r)
    or DB[r, j] (winner ~r). All contiguous [b, ., .] float32/64 buffers."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(2)
    bid = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    off = bid * M * N + rm[:, None] * N + rn[None, :]
    g = tl.load(G + off, mask=mask, other=0.0)
    w = tl.load(Win + off, mask=mask, other=0)
    to_a = w >= 0
    r = tl.where(to_a, w, -w - 1)
    tl.atomic_add(DA + bid * M * K + rm[:, None] * K + r, g, mask=mask & to_a)
    tl.atomic_add(DB + bid * K * N + r * N + rn[None, :], g, mask=mask & (w < 0))
