r"""Fused batch standardisation of one or two (N, D) embedding matrices, with its backward.

Forward, per feature (column) d of z0 (and of z1 when PAIR):

    mean_d = (1/N) sum_n z_nd                  var_d = (1/(N - ddof)) sum_n (z_nd - mean_d)^2
    r_d    = (var_d + eps)^-1/2 if RESCALE else 1
    y_nd   = (z_nd - mean_d) * r_d             stored in the output's dtype

and, from the stored (rounded) outputs, the column sums the losses need instead of a D x D or
N x N matrix (rows of `stats`, fp32):

    stats[0] = sum_n y0^2    stats[1] = sum_n y1^2    stats[2] = sum_n y0 y1    stats[3] = sum_n (z0 - z1)^2

(the Barlow Twins diagonal c_dd = stats[2] / N, VICReg's variances stats[0:2] / (N - 1) and its
invariance sum(stats[3]) / (N D)). ddof = 0 is BatchNorm's biased variance, ddof = 1 the
unbiased one of VICReg and Mixed Barlow Twins.

Backward, with g_k = dL/dy_k and gs = dL/dstats, the gradient reaching y_k is

    h0 = g0 + 2 gs[0] y0 + gs[2] y1            h1 = g1 + 2 gs[1] y1 + gs[2] y0

and through the standardisation (Sum_n (z_n - mean) = 0 removes the mean's share of var's term):

    RESCALE:      dz = r (h - mean_n h) - r / (N - ddof) * (sum_n h y) * y
    centre only:  dz = h - mean_n h
    plus the invariance sum: dz0 += 2 gs[3] (z0 - z1), dz1 -= 2 gs[3] (z0 - z1).

Tiling: one program per BLOCK_D columns walks all N rows in BLOCK_N chunks, so every column
reduction stays in registers and needs no atomics: the forward reads z twice (moments, then
outputs) and writes y once; the backward reads g and z twice and writes dz once. y is
recomputed in fp32 from z, mean and r in the backward (more accurate than the rounded output).

Numerics: everything in fp32. The moments use Chan et al.'s pairwise update of (mean, M2) per
chunk, one pass and stable when |mean| >> std (no E[z^2] - E[z]^2 cancellation); eps > 0 keeps
r finite for a constant feature.
"""
import triton
import triton.language as tl

from ._configs import interpreter_configs

_GPU_CONFIGS = [
    triton.Config({"BLOCK_N": 64, "BLOCK_D": 64}, num_warps=4),
    triton.Config({"BLOCK_N": 128, "BLOCK_D": 32}, num_warps=4),
    triton.Config({"BLOCK_N": 32, "BLOCK_D": 128}, num_warps=4),
    triton.Config({"BLOCK_N": 128, "BLOCK_D": 64}, num_warps=8),
]
CONFIGS = interpreter_configs(_GPU_CONFIGS, triton.Config({"BLOCK_N": 64, "BLOCK_D": 64}, num_warps=4))


@triton.jit
def _column_moments(z_ptr, stride_n, cols, col_mask, N, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(mean, M2) of BLOCK_D columns over N rows, merging chunk moments (Chan et al., 1979)."""
    mean = tl.zeros((BLOCK_D,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        count = n0 * 1.0  # rows merged so far: every earlier chunk is full
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows < N)[:, None] & col_mask[None, :]
        z = tl.load(z_ptr + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        chunk_count = tl.minimum(N - n0, BLOCK_N).to(tl.float32)
        chunk_mean = tl.sum(z, axis=0) / chunk_count
        deviation = tl.where(mask, z - chunk_mean[None, :], 0.0)
        chunk_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + chunk_count
        delta = chunk_mean - mean
        mean += delta * (chunk_count / total)
        m2 += chunk_m2 + delta * delta * (count * chunk_count / total)
    return mean, m2


@triton.autotune(configs=CONFIGS, key=["N", "D", "PAIR", "RESCALE"])
@triton.jit
def standardize_fwd_kernel(
    z0_ptr, z1_ptr, y0_ptr, y1_ptr, stats_ptr, moments_ptr,
    N, D, stride_z0, stride_z1, stride_y0, stride_y1,
    inv_dof, eps,
    PAIR: tl.constexpr, RESCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D

    mean0, m2_0 = _column_moments(z0_ptr, stride_z0, cols, col_mask, N, BLOCK_N, BLOCK_D)
    r0 = tl.full((BLOCK_D,), 1.0, tl.float32)
    if RESCALE:
        r0 = tl.rsqrt(m2_0 * inv_dof + eps)
    # moments rows: mean0, r0, mean1, r1 (what the backward needs)
    tl.store(moments_ptr + cols, mean0, mask=col_mask)
    tl.store(moments_ptr + D + cols, r0, mask=col_mask)
    if PAIR:
        mean1, m2_1 = _column_moments(z1_ptr, stride_z1, cols, col_mask, N, BLOCK_N, BLOCK_D)
        r1 = tl.full((BLOCK_D,), 1.0, tl.float32)
        if RESCALE:
            r1 = tl.rsqrt(m2_1 * inv_dof + eps)
        tl.store(moments_ptr + 2 * D + cols, mean1, mask=col_mask)
        tl.store(moments_ptr + 3 * D + cols, r1, mask=col_mask)

    sq0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sq1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    cross = tl.zeros((BLOCK_D,), dtype=tl.float32)
    diff_sq = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows < N)[:, None] & col_mask[None, :]
        z0 = tl.load(z0_ptr + rows[:, None] * stride_z0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y0 = tl.where(mask, (z0 - mean0[None, :]) * r0[None, :], 0.0).to(y0_ptr.dtype.element_ty)
        tl.store(y0_ptr + rows[:, None] * stride_y0 + cols[None, :], y0, mask=mask)
        y0 = y0.to(tl.float32)  # the sums see exactly what the products will see
        sq0 += tl.sum(y0 * y0, axis=0)
        if PAIR:
            z1 = tl.load(z1_ptr + rows[:, None] * stride_z1 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y1 = tl.where(mask, (z1 - mean1[None, :]) * r1[None, :], 0.0).to(y1_ptr.dtype.element_ty)
            tl.store(y1_ptr + rows[:, None] * stride_y1 + cols[None, :], y1, mask=mask)
            y1 = y1.to(tl.float32)
            sq1 += tl.sum(y1 * y1, axis=0)
            cross += tl.sum(y0 * y1, axis=0)
            diff_sq += tl.sum((z0 - z1) * (z0 - z1), axis=0)
    tl.store(stats_ptr + cols, sq0, mask=col_mask)
    tl.store(stats_ptr + D + cols, sq1, mask=col_mask)
    tl.store(stats_ptr + 2 * D + cols, cross, mask=col_mask)
    tl.store(stats_ptr + 3 * D + cols, diff_sq, mask=col_mask)


@triton.jit
def _load_f32(ptr, stride_n, rows, cols, mask):
    return tl.load(ptr + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _reaching_gradient(g_ptr, z_ptr, stride_g, stride_z, rows, cols, mask, mean, r, g_sq):
    """(h, y, z) of one input before the pair term: h = g + 2 gs y, y recomputed in fp32 from z."""
    z = _load_f32(z_ptr, stride_z, rows, cols, mask)
    y = tl.where(mask, (z - mean[None, :]) * r[None, :], 0.0)
    h = _load_f32(g_ptr, stride_g, rows, cols, mask) + 2.0 * g_sq[None, :] * y
    return h, y, z


@triton.jit
def _standardize_backward(h, y, mean_h, coef, r, RESCALE: tl.constexpr):
    if RESCALE:
        return r[None, :] * (h - mean_h[None, :]) - coef[None, :] * y
    return h - mean_h[None, :]


@triton.autotune(configs=CONFIGS, key=["N", "D", "PAIR", "RESCALE"])
@triton.jit
def standardize_bwd_kernel(
    g0_ptr, g1_ptr, gstats_ptr, z0_ptr, z1_ptr, moments_ptr, dz0_ptr, dz1_ptr,
    N, D, stride_g0, stride_g1, stride_z0, stride_z1, stride_dz0, stride_dz1,
    inv_dof,
    PAIR: tl.constexpr, RESCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    mean0 = tl.load(moments_ptr + cols, mask=col_mask, other=0.0)
    r0 = tl.load(moments_ptr + D + cols, mask=col_mask, other=0.0)
    g_sq0 = tl.load(gstats_ptr + cols, mask=col_mask, other=0.0)
    if PAIR:
        mean1 = tl.load(moments_ptr + 2 * D + cols, mask=col_mask, other=0.0)
        r1 = tl.load(moments_ptr + 3 * D + cols, mask=col_mask, other=0.0)
        g_sq1 = tl.load(gstats_ptr + D + cols, mask=col_mask, other=0.0)
        g_cross = tl.load(gstats_ptr + 2 * D + cols, mask=col_mask, other=0.0)
        g_diff = tl.load(gstats_ptr + 3 * D + cols, mask=col_mask, other=0.0)

    # pass 1: sum_n h and sum_n h y per column
    sum_h0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_hy0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_h1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_hy1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows < N)[:, None] & col_mask[None, :]
        h0, y0, z0 = _reaching_gradient(g0_ptr, z0_ptr, stride_g0, stride_z0, rows, cols, mask, mean0, r0, g_sq0)
        if PAIR:
            h1, y1, z1 = _reaching_gradient(g1_ptr, z1_ptr, stride_g1, stride_z1, rows, cols, mask, mean1, r1, g_sq1)
            h0 += g_cross[None, :] * y1
            h1 += g_cross[None, :] * y0
            sum_h1 += tl.sum(h1, axis=0)
            sum_hy1 += tl.sum(h1 * y1, axis=0)
        sum_h0 += tl.sum(h0, axis=0)
        sum_hy0 += tl.sum(h0 * y0, axis=0)
    mean_h0 = sum_h0 / N
    coef0 = r0 * inv_dof * sum_hy0
    if PAIR:
        mean_h1 = sum_h1 / N
        coef1 = r1 * inv_dof * sum_hy1

    # pass 2: dz, recomputing h and y
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (rows < N)[:, None] & col_mask[None, :]
        h0, y0, z0 = _reaching_gradient(g0_ptr, z0_ptr, stride_g0, stride_z0, rows, cols, mask, mean0, r0, g_sq0)
        if PAIR:
            h1, y1, z1 = _reaching_gradient(g1_ptr, z1_ptr, stride_g1, stride_z1, rows, cols, mask, mean1, r1, g_sq1)
            h0 += g_cross[None, :] * y1
            h1 += g_cross[None, :] * y0
            invariance = 2.0 * g_diff[None, :] * (z0 - z1)
            dz1 = _standardize_backward(h1, y1, mean_h1, coef1, r1, RESCALE) - invariance
            tl.store(dz1_ptr + rows[:, None] * stride_dz1 + cols[None, :], dz1.to(dz1_ptr.dtype.element_ty),
                     mask=mask)
            dz0 = _standardize_backward(h0, y0, mean_h0, coef0, r0, RESCALE) + invariance
        else:
            dz0 = _standardize_backward(h0, y0, mean_h0, coef0, r0, RESCALE)
        tl.store(dz0_ptr + rows[:, None] * stride_dz0 + cols[None, :], dz0.to(dz0_ptr.dtype.element_ty), mask=mask)
