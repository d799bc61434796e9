r"""Fused similarity log-sum-exp: the kernels under every contrastive loss (flash-attention style).

Math (forward)
--------------
Queries q (Nq, D), keys k (Nk, D), a scale a_i per row (1/temperature, a logit scale, iSogCLR's
1/tau_i; a scalar is a broadcast vector) and, with L2 normalisation, r_i = 1/max(||q_i||, eps),
rho_j = 1/max(||k_j||, eps) (both 1 without it):

    d_ij   = <q_i, k_j>                         tensor-core dot, fp32 accumulation
    s_ij   = a_i r_i rho_j d_ij                 (the normalisation never materialises q/||q||)
    lse_i  = log sum_{j kept for i} exp(s_ij)

Column j is kept for row i when j < Nk and key(j) != self_key_i, with key(j) = j and self_key_i =
self_index_i when exclude_period is 0, key(j) = j mod P and self_key_i = self_index_i mod P when it
is P; self_key_i = -1 keeps every column. Exclusion is by index: an excluded entry never enters a
sum (no -1e9 added to a logit).

Math (backward)
---------------
With P_ij = exp(s_ij - lse_i) on kept entries (0 elsewhere), g_i = dL/dlse_i and n_i = r_i^2 where
the normalisation is active (||q_i|| > eps; 0 without normalisation or below eps), likewise m_j for
the keys:

    dq_i = g_i a_i r_i (A_i - n_i B_i q_i),   A_i = sum_j P_ij rho_j k_j,   B_i = sum_j P_ij rho_j d_ij
    da_i = g_i r_i B_i
    dk_j = rho_j (V_j - m_j W_j k_j),         V_j = sum_i u_i P_ij q_i,     W_j = sum_i u_i P_ij d_ij,
                                              u_i = g_i a_i r_i

(the n_i, m_j terms are the gradient of the normalisation). The host turns these per-row factors
into short coefficient vectors (O(N) torch work) so that every kernel below is one loop of
"dots, exp2, reduce, dot".

Tiling
------
* `_lse_fwd_kernel`: one program per BLOCK_M rows walks the column tiles of k, keeping an online
  (max, sum) per row in fp32. Nothing of size Nq x Nk is ever written.
* `_lse_bwd_rows_kernel` (dq, da): the same walk, recomputing each tile of P from the saved lse
  (no stored probabilities); A_i accumulates in registers, so dq needs no atomics.
* `_lse_bwd_cols_kernel` (dk): one program per BLOCK_N columns walks the row tiles: a second pass
  over the columns instead of atomics. Decision: atomics for dk would read-modify-write a
  (BLOCK_N, D) fp32 tile in L2 for every tile visited (N^2 D / BLOCK atomic adds, more than the
  L2 atomic units sustain next to the tensor cores) and make dk depend on the order programs
  finish in. The column pass costs one more recomputation of the dots (10 instead of 8 N^2 D
  FLOPs for forward + backward) and is deterministic, so the general path is always bitwise
  reproducible.
* When D > BLOCK_D the dots loop over D chunks and the backward grids gain a D-chunk axis: each
  program recomputes the full dots and accumulates its own chunk of dq / dk (registers stay
  bounded at the price of recomputing the dots once per chunk).

Symmetric NT-Xent path (k is q, L2-normalised, one scalar scale)
---------------------------------------------------------------
S = a Z Z^T is symmetric and |s_ij| <= |a|, so c = |a| is a fixed row maximum: with it,
e_ij = exp(s_ij - c) is symmetric too and ONE exp of one dot tile feeds the row sum of rows I and
the column sum (= the row sum of rows J) of an upper-triangle tile (I, J), J > I. Diagonal tiles
add row sums only. `_sym_lse_fwd_kernel` thus does half the dots and half the exps of the general
forward; column sums (and each program's row sums) are added with fp32 atomics into l, and the host
finishes lse_i = c + log(l_i). Backward (`_sym_lse_bwd_kernel`), from the exact lse, uses the
symmetric H_ij = g_i P_ij + g_j P_ji:

    dz_i = a r_i (sum_j H_ij r_j z_j - n_i (sum_j H_ij r_j d_ij) z_i),   da = 1/2 sum_i r_i sum_j H_ij r_j d_ij

one dot tile and two tensor-core products per upper tile, the column-side products added with
atomics. FLOPs for M rows, forward + backward: 4 M^2 D here (M^2 D forward, 3 M^2 D backward)
against 10 M^2 D on the general path (2 forward, 4 for dq, 4 for dk). Atomics make this path order-dependent: with
deterministic=True (or torch.use_deterministic_algorithms) the host takes the general path.
Long rows of upper tiles are split over a second grid axis so that small N still fills the GPU.
The symmetric backward keeps two accumulators and both operand tiles live, so it runs 64 x 64 tiles
(ptxas spills at 128 x 128); every other kernel runs BLOCK_M = 128 (see the config lists).

Numerics
--------
* Dots take fp16/bf16 operands on tensor cores (fp32 inputs: tf32 on a GPU, plain fp32 under the
  interpreter) and accumulate in fp32; everything after the dot is fp32. exp is exp2 of logits
  pre-multiplied by log2(e) (the host folds log2(e) into the row scale).
* Online LSE: a row whose kept entries are all -inf so far uses 0 as the reference maximum, so
  exp2(-inf - (-inf)) never appears; a row with no kept column ends with lse = -inf, and the host
  turns its lse into +inf for the backward so that its P row (and gradient) is exactly 0.
* Fixed maximum underflow guard (symmetric forward): exp2(s - c) is flushed to 0 below 2^-126.
  At temperature 0.01 (c = 100) a row whose best similarity is below ~0.4 loses every term. A
  row's sum can only be wrong by at most Nk * 2^-126 (every flushed term), so the host flags rows
  with l_i < Nk * 2^-102 (relative error possibly above 2^-24) and `_lse_fwd_kernel` recomputes
  exactly those with the online maximum (ONLY_FLAGGED: programs without a flagged row return
  at once). No host synchronisation: the flags stay on the device.
* Second-stage products (P @ k and friends) take their operands in the input dtype, like
  flash-attention's P @ V, and keep them in [-2, 2] whatever the data. The upstream gradient
  either scales the fp32 result (dq: g_i is constant along the row) or enters the operand divided
  by its maximum (dk and the symmetric H: g / max|g|; a mean-reduced loss at N = 10^6 has
  g ~ 1e-6, which fp16 would flush), the maximum being multiplied back in fp32. With
  normalisation the value operand is the unit-norm row r_j k_j (scaled in fp32 in registers), so a
  zero or huge row cannot push the others out of fp16's range. Gradient errors are thus relative
  to the largest gradient, as in any fp16 flash-attention backward.
* Offsets: row and column indices are widened to int64 before they multiply a stride.
"""
import triton
import triton.language as tl

from ._configs import interpreter_configs


# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------
def _zero_accumulators(*names):
    """pre_hook of every config of an atomic kernel: zero its accumulators before each launch,
    the autotuner's benchmark runs included (reset_to_zero alone does not cover the final launch
    on every Triton version)."""
    def hook(nargs):
        for name in names:
            nargs[name].zero_()
    return hook


def _configs(params, gpu, interpreter, pre_hook=None):
    """Autotune configs from (block sizes..., num_warps, num_stages) tuples; one under the
    interpreter (triton.autotune cannot benchmark there)."""
    def make(values, **kw):
        return triton.Config(dict(zip(params, values)), pre_hook=pre_hook, **kw)
    return interpreter_configs([make(v[:-2], num_warps=v[-2], num_stages=v[-1]) for v in gpu],
                               make(interpreter))


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Listed: configs that ptxas compiles for sm_90 without
# register spills at D = 64 and 128 in fp16 (bf16/fp32 and D = 256 spill at most ~150 B/thread in
# some of them; the autotuner weighs that). The backward keeps a (BLOCK, BLOCK_D) fp32 accumulator
# next to the recomputed tile, which is why its second block dimension is small.
_FWD_CONFIGS = [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3)]
_BWD_ROWS_CONFIGS = [(128, 32, 8, 3), (128, 32, 8, 4), (128, 64, 8, 2), (128, 64, 8, 3)]
_BWD_COLS_CONFIGS = [(32, 128, 8, 3), (32, 128, 8, 4)]
# (BLOCK, num_warps, num_stages): square tiles. The symmetric backward holds two accumulators and
# both operand tiles; at BLOCK = 128 ptxas spills ~1.1 KB per thread, so it runs 64 x 64 tiles.
_SYM_FWD_CONFIGS = [(128, 8, 2), (128, 8, 3), (64, 4, 3), (64, 8, 3)]
_SYM_BWD_CONFIGS = [(64, 8, 2), (64, 8, 3)]
_INTERPRETER_TILE = 64  # large tiles: the interpreter's cost is per tile op, not per element


def _row_configs(table, pre_hook=None):
    return _configs(("BLOCK_M", "BLOCK_N"), table, (_INTERPRETER_TILE, _INTERPRETER_TILE), pre_hook)


def _sym_configs(table, pre_hook):
    return _configs(("BLOCK",), table, (_INTERPRETER_TILE,), pre_hook)


# Autotune keys: the sizes, plus the constexpr flags that change how much work a launch does.
_SHAPE_KEY = ["Nq", "Nk", "D", "BLOCK_D"]
_SYM_KEY = ["N", "D", "BLOCK_D"]


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptr, idx64, idx_mask, stride_idx, offs_d, D):
    """(len(idx), len(offs_d)) tile of a matrix with unit column stride, zeros outside."""
    ptrs = ptr + idx64[:, None] * stride_idx + offs_d[None, :]
    return tl.load(ptrs, mask=idx_mask[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _tile_dots(a_tile, a_ptr, a_idx64, a_mask, stride_a, b_tile, b_ptr, b_idx64, b_mask, stride_b,
               D, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr, PRECISION: tl.constexpr):
    """d = A @ B^T for one tile pair. With one D chunk both operands are already loaded
    (a_tile, b_tile) and the caller's column loop stays the innermost (pipelined) loop;
    otherwise the chunks are streamed here."""
    if D_CHUNKS == 1:
        dots = tl.dot(a_tile, tl.trans(b_tile), input_precision=PRECISION)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        dots = tl.zeros((a_idx64.shape[0], b_idx64.shape[0]), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            a = _load_tile(a_ptr, a_idx64, a_mask, stride_a, d0 + offs_d, D)
            b = _load_tile(b_ptr, b_idx64, b_mask, stride_b, d0 + offs_d, D)
            dots = tl.dot(a, tl.trans(b), dots, input_precision=PRECISION)
    return dots


@triton.jit
def _column_keys(cols, period, PERIODIC: tl.constexpr):
    """key(j): the index compared with a row's self key (j, or j mod P)."""
    if PERIODIC:
        return cols % period
    else:
        return cols


# --------------------------------------------------------------------------------------------
# general forward: online log-sum-exp over the columns
# --------------------------------------------------------------------------------------------
@triton.autotune(configs=_row_configs(_FWD_CONFIGS), key=_SHAPE_KEY + ["HAS_COL_SCALE", "ONLY_FLAGGED"])
@triton.jit
def _lse_fwd_kernel(q_ptr, k_ptr, row_scale_ptr, col_scale_ptr, self_key_ptr, lse_ptr, redo_ptr,
                    Nq, Nk, D, stride_qm, stride_kn, period,
                    HAS_SELF: tl.constexpr, PERIODIC: tl.constexpr, HAS_COL_SCALE: tl.constexpr,
                    ONLY_FLAGGED: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """lse_i by an online (max, sum) over the column tiles; with ONLY_FLAGGED, only the rows whose
    redo flag is set are computed and stored (the guard pass of the symmetric path)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < Nq
    rows64 = rows.to(tl.int64)
    store_mask = row_mask
    n_end = Nk
    if ONLY_FLAGGED:  # guard pass of the symmetric path: redo flagged rows, skip the rest
        redo = tl.load(redo_ptr + rows64, mask=row_mask, other=0) != 0
        store_mask = row_mask & redo
        n_end = tl.where(tl.max(redo.to(tl.int32), axis=0) > 0, Nk, 0)

    row_scale = tl.load(row_scale_ptr + rows64, mask=row_mask, other=0.0)  # a_i r_i log2(e)
    self_key = tl.load(self_key_ptr + rows64, mask=row_mask, other=-1) if HAS_SELF else rows
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_ptr, rows64, row_mask, stride_qm, offs_d, D) if D_CHUNKS == 1 else None

    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the base-2 logits
    l = tl.zeros((BLOCK_M,), tl.float32)                 # running sum of exp2(logit - m)
    for n0 in range(0, n_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < Nk
        cols64 = cols.to(tl.int64)
        k = _load_tile(k_ptr, cols64, col_mask, stride_kn, offs_d, D) if D_CHUNKS == 1 else None
        dots = _tile_dots(q, q_ptr, rows64, row_mask, stride_qm, k, k_ptr, cols64, col_mask, stride_kn,
                          D, BLOCK_D, D_CHUNKS, PRECISION)
        logits = dots * row_scale[:, None]
        if HAS_COL_SCALE:
            logits *= tl.load(col_scale_ptr + cols64, mask=col_mask, other=0.0)[None, :]
        keep = col_mask[None, :]
        if HAS_SELF:
            keep = keep & (_column_keys(cols, period, PERIODIC)[None, :] != self_key[:, None])
        logits = tl.where(keep, logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all-excluded so far: no -inf - -inf
        l = l * tl.exp2(m - m_ref) + tl.sum(tl.exp2(logits - m_ref[:, None]), axis=1)
        m = m_new
    lse = (m + tl.log2(l)) * 0.6931471805599453  # ln(2): back to natural log; -inf if no kept column
    tl.store(lse_ptr + rows64, lse, mask=store_mask)



# --------------------------------------------------------------------------------------------
# general backward, rows: dq and da (no atomics)
# --------------------------------------------------------------------------------------------
@triton.autotune(configs=_row_configs(_BWD_ROWS_CONFIGS), key=_SHAPE_KEY + ["NORMALIZED", "WRITE_DQ"])
@triton.jit
def _lse_bwd_rows_kernel(q_ptr, k_ptr, row_scale_ptr, col_scale_ptr, self_key_ptr,
                         lse2_ptr, dq_coef_ptr, dq_norm_coef_ptr, da_coef_ptr, dq_ptr, da_ptr,
                         Nq, Nk, D, stride_qm, stride_kn, stride_dqm, period,
                         HAS_SELF: tl.constexpr, PERIODIC: tl.constexpr, NORMALIZED: tl.constexpr,
                         WRITE_DQ: tl.constexpr, WRITE_DA: tl.constexpr, BLOCK_D: tl.constexpr,
                         D_CHUNKS: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq_i = c1_i A_i - c2_i B_i q_i and da_i = c3_i B_i, with A_i = sum_j P_ij rho_j k_j over
    this program's D chunk and B_i = sum_j P_ij rho_j d_ij; the host's coefficients are
    c1 = g a r, c2 = g a r n, c3 = g r."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < Nq
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    chunk_d = tl.program_id(1) * BLOCK_D + offs_d  # the columns of dq this program owns

    row_scale = tl.load(row_scale_ptr + rows64, mask=row_mask, other=0.0)
    lse2 = tl.load(lse2_ptr + rows64, mask=row_mask, other=float("inf"))
    self_key = tl.load(self_key_ptr + rows64, mask=row_mask, other=-1) if HAS_SELF else rows
    q = _load_tile(q_ptr, rows64, row_mask, stride_qm, offs_d, D) if D_CHUNKS == 1 else None

    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # A
    b_sum = tl.zeros((BLOCK_M,), tl.float32)        # B
    for n0 in range(0, Nk, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < Nk
        cols64 = cols.to(tl.int64)
        if D_CHUNKS == 1:
            k = _load_tile(k_ptr, cols64, col_mask, stride_kn, offs_d, D)
        else:
            k = _load_tile(k_ptr, cols64, col_mask, stride_kn, chunk_d, D)
        dots = _tile_dots(q, q_ptr, rows64, row_mask, stride_qm, k, k_ptr, cols64, col_mask, stride_kn,
                          D, BLOCK_D, D_CHUNKS, PRECISION)
        keep = col_mask[None, :]
        if HAS_SELF:
            keep = keep & (_column_keys(cols, period, PERIODIC)[None, :] != self_key[:, None])
        if NORMALIZED:
            col_scale = tl.load(col_scale_ptr + cols64, mask=col_mask, other=0.0)
            dots *= col_scale[None, :]  # rho_j d_ij
        p = tl.where(keep, tl.exp2(dots * row_scale[:, None] - lse2[:, None]), 0.0)
        b_sum += tl.sum(p * dots, axis=1)
        if NORMALIZED:  # the MMA operand is the unit-norm key, whatever the raw norms are
            k = (k.to(tl.float32) * col_scale[:, None]).to(k_ptr.dtype.element_ty)
        acc = tl.dot(p.to(k.dtype), k, acc, input_precision=PRECISION)

    if WRITE_DQ:
        dq = acc * tl.load(dq_coef_ptr + rows64, mask=row_mask, other=0.0)[:, None]
        if NORMALIZED:
            q_chunk = _load_tile(q_ptr, rows64, row_mask, stride_qm, chunk_d, D).to(tl.float32)
            norm_coef = tl.load(dq_norm_coef_ptr + rows64, mask=row_mask, other=0.0)
            dq -= (norm_coef * b_sum)[:, None] * q_chunk
        dq_ptrs = dq_ptr + rows64[:, None] * stride_dqm + chunk_d[None, :]
        tl.store(dq_ptrs, dq, mask=row_mask[:, None] & (chunk_d[None, :] < D))
    if WRITE_DA:
        if tl.program_id(1) == 0:
            da = b_sum * tl.load(da_coef_ptr + rows64, mask=row_mask, other=0.0)
            tl.store(da_ptr + rows64, da, mask=row_mask)


# --------------------------------------------------------------------------------------------
# general backward, columns: dk (a second pass instead of atomics, see the module docstring)
# --------------------------------------------------------------------------------------------
# restore_value: with ACCUMULATE the kernel adds into dk, so the autotuner's benchmark runs must
# not leave their sums behind.
@triton.autotune(configs=_row_configs(_BWD_COLS_CONFIGS), key=_SHAPE_KEY + ["NORMALIZED", "ACCUMULATE"],
                 restore_value=["dk_ptr"])
@triton.jit
def _lse_bwd_cols_kernel(q_ptr, k_ptr, row_scale_ptr, row_norm_ptr, col_scale_ptr, row_weight_ptr, self_key_ptr,
                         lse2_ptr, dk_coef_ptr, dk_norm_coef_ptr, dk_ptr,
                         Nq, Nk, D, stride_qm, stride_kn, stride_dkn, period,
                         HAS_SELF: tl.constexpr, PERIODIC: tl.constexpr, NORMALIZED: tl.constexpr,
                         ACCUMULATE: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
                         PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk_j = e1_j V'_j - e2_j W'_j k_j with V'_j = sum_i v_i P_ij r_i q_i over this program's D
    chunk, W'_j = sum_i v_i P_ij r_i d_ij, v = g a / max|g a|; e1 = rho max|g a|, e2 = e1 m.
    ACCUMULATE adds to dk instead of overwriting it (k is q: dz = dq + dk in one fp32 buffer)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < Nk
    cols64 = cols.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    chunk_d = tl.program_id(1) * BLOCK_D + offs_d

    col_keys = _column_keys(cols, period, PERIODIC)
    if NORMALIZED:
        col_scale = tl.load(col_scale_ptr + cols64, mask=col_mask, other=0.0)
    k = _load_tile(k_ptr, cols64, col_mask, stride_kn, offs_d, D) if D_CHUNKS == 1 else None

    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)  # V'
    w_sum = tl.zeros((BLOCK_N,), tl.float32)        # W'
    for m0 in range(0, Nq, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < Nq
        rows64 = rows.to(tl.int64)
        if D_CHUNKS == 1:
            q = _load_tile(q_ptr, rows64, row_mask, stride_qm, offs_d, D)
        else:
            q = _load_tile(q_ptr, rows64, row_mask, stride_qm, chunk_d, D)
        dots = _tile_dots(q, q_ptr, rows64, row_mask, stride_qm, k, k_ptr, cols64, col_mask, stride_kn,
                          D, BLOCK_D, D_CHUNKS, PRECISION)
        row_scale = tl.load(row_scale_ptr + rows64, mask=row_mask, other=0.0)
        lse2 = tl.load(lse2_ptr + rows64, mask=row_mask, other=float("inf"))
        row_weight = tl.load(row_weight_ptr + rows64, mask=row_mask, other=0.0)
        keep = row_mask[:, None] & col_mask[None, :]
        if HAS_SELF:
            self_key = tl.load(self_key_ptr + rows64, mask=row_mask, other=-1)
            keep = keep & (col_keys[None, :] != self_key[:, None])
        logits = dots * row_scale[:, None]
        if NORMALIZED:
            logits *= col_scale[None, :]
        p = tl.where(keep, tl.exp2(logits - lse2[:, None]), 0.0) * row_weight[:, None]
        if NORMALIZED:  # r_i d_ij, and the unit-norm query as the MMA operand
            row_norm = tl.load(row_norm_ptr + rows64, mask=row_mask, other=0.0)
            dots *= row_norm[:, None]
            q = (q.to(tl.float32) * row_norm[:, None]).to(q_ptr.dtype.element_ty)
        w_sum += tl.sum(p * dots, axis=0)
        acc = tl.dot(tl.trans(p.to(q.dtype)), q, acc, input_precision=PRECISION)

    dk = acc * tl.load(dk_coef_ptr + cols64, mask=col_mask, other=0.0)[:, None]
    if NORMALIZED:
        k_chunk = _load_tile(k_ptr, cols64, col_mask, stride_kn, chunk_d, D).to(tl.float32)
        norm_coef = tl.load(dk_norm_coef_ptr + cols64, mask=col_mask, other=0.0)
        dk -= (norm_coef * w_sum)[:, None] * k_chunk
    dk_ptrs = dk_ptr + cols64[:, None] * stride_dkn + chunk_d[None, :]
    out_mask = col_mask[:, None] & (chunk_d[None, :] < D)
    if ACCUMULATE:
        dk += tl.load(dk_ptrs, mask=out_mask, other=0.0)
    tl.store(dk_ptrs, dk, mask=out_mask)


# --------------------------------------------------------------------------------------------
# symmetric path (k is q, normalised, scalar scale): upper-triangle tiles, fixed maximum
# --------------------------------------------------------------------------------------------
@triton.jit
def _upper_tile_range(N, targets, BLOCK: tl.constexpr):
    """Row block I = program_id(0) owns the tiles J in [I, n_blocks); they are cut into
    `splits` pieces (program_id(1)) of `per_program` tiles so that small N still fills the GPU.
    Returns the first and one-past-last J of this program."""
    n_blocks = tl.cdiv(N, BLOCK)
    splits = tl.minimum(tl.maximum(tl.cdiv(targets, n_blocks), 1), n_blocks)
    per_program = tl.cdiv(n_blocks, splits)
    j_first = tl.program_id(0) + tl.program_id(1) * per_program
    j_last = tl.minimum(j_first + per_program, n_blocks)
    return j_first, j_last


@triton.autotune(configs=_sym_configs(_SYM_FWD_CONFIGS, _zero_accumulators("sum_ptr")), key=_SYM_KEY)
@triton.jit
def _sym_lse_fwd_kernel(z_ptr, row_scale_ptr, col_scale_ptr, self_key_ptr, shift2_ptr, sum_ptr,
                        N, D, stride_zn, period, targets,
                        HAS_SELF: tl.constexpr, PERIODIC: tl.constexpr, BLOCK_D: tl.constexpr,
                        D_CHUNKS: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    """l_i += sum over kept j of exp2(s2_ij - c2), c2 = |a| log2(e), from upper-triangle tiles:
    one exp per tile entry serves row i and (off the diagonal) row j."""
    j_first, j_last = _upper_tile_range(N, targets, BLOCK)
    i_block = tl.program_id(0)
    rows = i_block * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    shift2 = tl.load(shift2_ptr)
    row_scale = tl.load(row_scale_ptr + rows64, mask=row_mask, other=0.0)  # a r_i log2(e)
    self_i = tl.load(self_key_ptr + rows64, mask=row_mask, other=-1) if HAS_SELF else rows
    key_i = _column_keys(rows, period, PERIODIC)
    zi = _load_tile(z_ptr, rows64, row_mask, stride_zn, offs_d, D) if D_CHUNKS == 1 else None

    row_sum = tl.zeros((BLOCK,), tl.float32)
    for j_block in range(j_first, j_last):
        cols = j_block * BLOCK + tl.arange(0, BLOCK)
        col_mask = cols < N
        cols64 = cols.to(tl.int64)
        zj = _load_tile(z_ptr, cols64, col_mask, stride_zn, offs_d, D) if D_CHUNKS == 1 else None
        dots = _tile_dots(zi, z_ptr, rows64, row_mask, stride_zn, zj, z_ptr, cols64, col_mask, stride_zn,
                          D, BLOCK_D, D_CHUNKS, PRECISION)
        col_norm = tl.load(col_scale_ptr + cols64, mask=col_mask, other=0.0)
        e = tl.exp2(dots * row_scale[:, None] * col_norm[None, :] - shift2)  # symmetric in (i, j)
        keep_row = col_mask[None, :]  # entry (i, j) counts for row i
        keep_col = row_mask[:, None]  # entry (i, j) counts for row j
        if HAS_SELF:
            self_j = tl.load(self_key_ptr + cols64, mask=col_mask, other=-1)
            keep_row = keep_row & (_column_keys(cols, period, PERIODIC)[None, :] != self_i[:, None])
            keep_col = keep_col & (key_i[:, None] != self_j[None, :])
        row_sum += tl.sum(tl.where(keep_row, e, 0.0), axis=1)
        if j_block != i_block:  # the diagonal tile already counted both orders as rows
            col_sum = tl.sum(tl.where(keep_col, e, 0.0), axis=0)
            tl.atomic_add(sum_ptr + cols64, col_sum, mask=col_mask, sem="relaxed")
    tl.atomic_add(sum_ptr + rows64, row_sum, mask=row_mask & (j_first < j_last), sem="relaxed")


@triton.autotune(configs=_sym_configs(_SYM_BWD_CONFIGS, _zero_accumulators("acc_ptr", "b_ptr")), key=_SYM_KEY)
@triton.jit
def _sym_lse_bwd_kernel(z_ptr, row_scale_ptr, col_scale_ptr, self_key_ptr, lse2_ptr,
                        g_ptr, acc_ptr, b_ptr,
                        N, D, stride_zn, stride_acc, period, targets,
                        HAS_SELF: tl.constexpr, PERIODIC: tl.constexpr, BLOCK_D: tl.constexpr,
                        D_CHUNKS: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    """With H~_ij = g~_i P_ij + g~_j P_ji (g~ = g / max|g|), accumulate A'_i = sum_j H~_ij r_j z_j
    (this program's D chunk) and B_i = sum_j H~_ij r_j d_ij over the upper-triangle tiles, the
    transposed contribution of off-diagonal tiles going to rows J."""
    j_first, j_last = _upper_tile_range(N, targets, BLOCK)
    i_block = tl.program_id(0)
    first_chunk = tl.program_id(2) == 0
    rows = i_block * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    chunk_d = tl.program_id(2) * BLOCK_D + offs_d
    chunk_mask = chunk_d < D

    row_scale = tl.load(row_scale_ptr + rows64, mask=row_mask, other=0.0)
    row_norm = tl.load(col_scale_ptr + rows64, mask=row_mask, other=0.0)
    lse2_i = tl.load(lse2_ptr + rows64, mask=row_mask, other=float("inf"))
    g_i = tl.load(g_ptr + rows64, mask=row_mask, other=0.0)
    self_i = tl.load(self_key_ptr + rows64, mask=row_mask, other=-1) if HAS_SELF else rows
    key_i = _column_keys(rows, period, PERIODIC)
    if D_CHUNKS == 1:
        zi = _load_tile(z_ptr, rows64, row_mask, stride_zn, offs_d, D)
        zi_chunk = zi
    else:
        zi = None
        zi_chunk = _load_tile(z_ptr, rows64, row_mask, stride_zn, chunk_d, D)
    zi_unit = (zi_chunk.to(tl.float32) * row_norm[:, None]).to(z_ptr.dtype.element_ty)  # MMA operand

    acc_i = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    b_i = tl.zeros((BLOCK,), tl.float32)
    for j_block in range(j_first, j_last):
        cols = j_block * BLOCK + tl.arange(0, BLOCK)
        col_mask = cols < N
        cols64 = cols.to(tl.int64)
        if D_CHUNKS == 1:
            zj = _load_tile(z_ptr, cols64, col_mask, stride_zn, offs_d, D)
            zj_chunk = zj
        else:
            zj = None
            zj_chunk = _load_tile(z_ptr, cols64, col_mask, stride_zn, chunk_d, D)
        dots = _tile_dots(zi, z_ptr, rows64, row_mask, stride_zn, zj, z_ptr, cols64, col_mask, stride_zn,
                          D, BLOCK_D, D_CHUNKS, PRECISION)
        col_norm = tl.load(col_scale_ptr + cols64, mask=col_mask, other=0.0)
        lse2_j = tl.load(lse2_ptr + cols64, mask=col_mask, other=float("inf"))
        g_j = tl.load(g_ptr + cols64, mask=col_mask, other=0.0)
        keep_row = row_mask[:, None] & col_mask[None, :]
        keep_col = keep_row
        if HAS_SELF:
            self_j = tl.load(self_key_ptr + cols64, mask=col_mask, other=-1)
            keep_row = keep_row & (_column_keys(cols, period, PERIODIC)[None, :] != self_i[:, None])
            keep_col = keep_col & (key_i[:, None] != self_j[None, :])
        logits = dots * row_scale[:, None] * col_norm[None, :]  # symmetric in (i, j)
        h = tl.where(keep_row, tl.exp2(logits - lse2_i[:, None]), 0.0) * g_i[:, None]
        h += tl.where(keep_col, tl.exp2(logits - lse2_j[None, :]), 0.0) * g_j[None, :]
        hd = h * dots
        b_i += tl.sum(hd * col_norm[None, :], axis=1)
        zj_unit = (zj_chunk.to(tl.float32) * col_norm[:, None]).to(z_ptr.dtype.element_ty)
        acc_i = tl.dot(h.to(zj_unit.dtype), zj_unit, acc_i, input_precision=PRECISION)
        if j_block != i_block:
            acc_j = tl.dot(tl.trans(h.to(zi_unit.dtype)), zi_unit, input_precision=PRECISION)
            acc_ptrs = acc_ptr + cols64[:, None] * stride_acc + chunk_d[None, :]
            tl.atomic_add(acc_ptrs, acc_j, mask=col_mask[:, None] & chunk_mask[None, :], sem="relaxed")
            b_j = tl.sum(hd * row_norm[:, None], axis=0)
            tl.atomic_add(b_ptr + cols64, b_j, mask=col_mask & first_chunk, sem="relaxed")

    has_tiles = j_first < j_last
    acc_ptrs = acc_ptr + rows64[:, None] * stride_acc + chunk_d[None, :]
    tl.atomic_add(acc_ptrs, acc_i, mask=row_mask[:, None] & chunk_mask[None, :] & has_tiles, sem="relaxed")
    tl.atomic_add(b_ptr + rows64, b_i, mask=row_mask & first_chunk & has_tiles, sem="relaxed")
