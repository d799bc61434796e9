r"""One tiled matmul for every product of the cross-correlation losses.

    C = scale * op(A) @ B          (M x N, reduced over K), op(A) = A, or A + A^T (SYMMETRIZE_A)

A and B are *logical* matrices given by a base pointer and two strides, so a transpose or a
column block of an (N, D) embedding matrix costs nothing: the host passes swapped strides or an
offset view. The products the losses need (sslfast/ops/crosscorr_gram.py, crosscorr_cross_sq.py):

    Gram rows       P = X[r0:r1] X^T                    A = X rows, B = X^T (strides swapped)
                    symmetric when all rows: SYMMETRIC_OUT computes the tiles on and above the
                    diagonal only (half the FLOPs) and stores each off-diagonal tile twice.
    Gram backward   dX = (dP + dP^T) X                  SYMMETRIZE_A: A^T's tile is a second
                    load of A with swapped strides, added in fp32 before the dot.
    cross loss      s = ||A^T B_J||_F^2                 SUM_SQUARES: the D x |J| tile stays on
                    chip; each program writes sum(tile^2) to partial[pid] (x2 for mirrored
                    off-diagonal tiles) and the host sums the partials, so the D x D matrix is
                    never stored and the sum is deterministic.
    cross backward  dA = 2g B_J C^T, dB_J = 2g A C      recomputed per stripe of C's rows (host
                    loop); ACCUMULATE adds into the output, and the scalar upstream gradient g is
                    read from scale_ptr on the device (no host sync).

Tiling: one program per BLOCK_M x BLOCK_N output tile, K walked in BLOCK_K steps; programs are
ordered in groups of GROUP_M tile rows so that consecutive programs reuse the same B columns
from L2 (the Triton matmul tutorial's swizzle). Every boundary is masked (loads fill 0, which
adds nothing to a dot or a sum of squares), offsets are int64 before the stride multiply.

Numerics: fp32 accumulation always. float16/bfloat16 operands go to the tensor cores as they
are; FP32_OPERANDS upcasts both operands after the load (an fp32 gradient against 16-bit
embeddings), with DOT_PRECISION "tf32x3" (about fp32 accuracy) for fp32 data, "tf32" where the
data is 16-bit anyway, "ieee" under the interpreter.
"""
import triton
import triton.language as tl

from ._configs import interpreter_configs

# Square tiles only: SYMMETRIC_OUT mirrors a tile onto its transpose's place.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=5),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4,
                                    num_stages=1)
CONFIGS = interpreter_configs(_GPU_CONFIGS, _INTERPRETER_CONFIG)
MIN_BLOCK = min(min(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in CONFIGS)


def max_programs(m: int, n: int) -> int:
    """An upper bound on the grid size over all configs: the length of the partials buffer."""
    return triton.cdiv(m, MIN_BLOCK) * triton.cdiv(n, MIN_BLOCK)


def grid(m: int, n: int):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def _keep(configs, named_args, **kwargs):
    """Keep the configs whose tiles are not much larger than the problem (tiny products run in
    one wave anyway); always keep at least the smallest."""
    m, n = named_args["M"], named_args["N"]
    small = [c for c in configs if c.kwargs["BLOCK_M"] <= max(m, 64) and c.kwargs["BLOCK_N"] <= max(n, 64)]
    return small or configs[-1:]


@triton.autotune(
    configs=CONFIGS,
    key=["M", "N", "K", "SYMMETRIZE_A", "SYMMETRIC_OUT", "ACCUMULATE", "SUM_SQUARES", "FP32_OPERANDS"],
    prune_configs_by={"early_config_prune": _keep},
    reset_to_zero=["partial_ptr"],  # programs of a coarser config leave entries untouched
    restore_value=["c_ptr"],  # ACCUMULATE reads C: benchmarking must not change it
)
@triton.jit
def crosscorr_matmul_kernel(
    a_ptr, b_ptr, c_ptr, partial_ptr, scale_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    scale,
    SYMMETRIZE_A: tl.constexpr,
    SYMMETRIC_OUT: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    SUM_SQUARES: tl.constexpr,
    HAS_SCALE_PTR: tl.constexpr,
    FP32_OPERANDS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M tile rows share B's column tiles while they are in L2
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    if SYMMETRIC_OUT:
        if pid_n < pid_m:
            return  # the mirror of tile (pid_n, pid_m), which that program stores

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask_k = offs_k < K
        a_mask = mask_m[:, None] & mask_k[None, :]
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak, mask=a_mask, other=0.0)
        if SYMMETRIZE_A:  # (A + A^T)[m, k] = A[m, k] + A[k, m]
            a_t = tl.load(a_ptr + offs_k[None, :] * stride_am + offs_m[:, None] * stride_ak, mask=a_mask, other=0.0)
            a = a.to(tl.float32) + a_t.to(tl.float32)
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if FP32_OPERANDS:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    acc = acc * scale
    if HAS_SCALE_PTR:
        acc = acc * tl.load(scale_ptr).to(tl.float32)

    if SUM_SQUARES:
        tile_sum = tl.sum(tl.sum(acc * acc, axis=1), axis=0)
        if SYMMETRIC_OUT:
            tile_sum = tile_sum * tl.where(pid_m == pid_n, 1.0, 2.0)  # the mirrored tile counts too
        tl.store(partial_ptr + pid, tile_sum)
    else:
        c_mask = mask_m[:, None] & mask_n[None, :]
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        if ACCUMULATE:
            acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
        if SYMMETRIC_OUT:
            if pid_m != pid_n:  # the transposed tile, stored row-major for coalesced writes
                mirror = c_ptr + offs_n[:, None] * stride_cm + offs_m[None, :] * stride_cn
                tl.store(mirror, tl.trans(acc).to(c_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])
