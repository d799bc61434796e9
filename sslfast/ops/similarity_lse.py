"""sslfast op `similarity_lse`: row-wise masked log-sum-exp of scaled similarities.

The math, the exclusion rule and the gradients are documented in sslfast.reference.similarity
(the truth) and kernels/similarity_lse.py (the fused Triton kernels). Every contrastive loss
(NT-Xent, CLIP/InfoNCE, DCL, MoCo, iSogCLR) is this op plus O(N*D) work on the positives.

Layers, top to bottom:
  * `similarity_lse` (public): validates, picks a backend through sslfast.dispatch, calls the op;
  * torch.library ops `sslfast::similarity_lse` and `sslfast::similarity_lse_backward`, with fake
    (meta) implementations and `register_autograd`, so torch.compile(fullgraph=True) traces a
    model + loss through them without a graph break;
  * the backends behind the ops: "reference" (chunked pure PyTorch) and "triton".

Positives stay out of the op on purpose: a loss reads them as a row-wise dot product (or a gather
for multi-positive / multi-view), O(N*D) work that torch does at memory speed, while the op's
O(N^2 D) part is where fusion pays. Folding them in would save < 1/N of the work and tie the op to
one positive layout. With normalize=True a loss computes its positives on F.normalize'd rows.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from .. import dispatch
from .._validation import (check_embeddings, check_finite, check_finite_real, check_index_range, check_int,
                           check_same_dim)
from ..reference import similarity as _reference

OP = "similarity_lse"
NORM_EPS = 1e-12  # F.normalize's eps: rows are divided by max(||x||, eps)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# A symmetric-path row sum below Nk * 2^-102 may have lost terms to exp2 underflow (each flushed
# term is < 2^-126): such rows are recomputed exactly (kernels/similarity_lse.py, "Numerics").
UNDERFLOW_GUARD = 2.0 ** -102


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _prepare(q, k, scale, self_index, exclude_period, normalize, deterministic):
    """Checked and canonical arguments of the op: q and k of one dtype, scale a 0-d or (Nq,)
    tensor, self_index int64 or None."""
    q = check_embeddings("q", q)
    if k is not None:
        k = check_embeddings("k", k)
        check_same_dim("q", q, "k", k)
        if k.dtype != q.dtype:
            common = torch.promote_types(q.dtype, k.dtype)
            q, k = q.to(common), k.to(common)
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a float or a floating tensor, got a tensor of {scale.dtype}")
        if scale.dim() != 0 and tuple(scale.shape) != (q.shape[0],):
            raise ValueError(f"scale must be a number, a 0-d tensor or a ({q.shape[0]},) tensor (one per row "
                             f"of q), got shape {tuple(scale.shape)}")
        if scale.device != q.device:
            raise ValueError(f"scale must be on {q.device} like q, got {scale.device}")
        check_finite("scale", scale)
    else:
        scale = torch.tensor(check_finite_real("scale", scale), dtype=_reference.compute_dtype(q.dtype),
                             device=q.device)
    num_keys = q.shape[0] if k is None else k.shape[0]
    exclude_period = check_int("exclude_period", exclude_period, minimum=0)
    if self_index is not None:
        self_index = check_index_range("self_index", self_index, length=q.shape[0], device=q.device, low=-1,
                                 high=num_keys)
    elif exclude_period:
        raise ValueError(f"exclude_period={exclude_period} needs self_index (the column of each row's own "
                         "copy); got self_index=None")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    elif not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool or None, got {type(deterministic).__name__}")
    return q, k, scale, self_index, exclude_period, deterministic


def _inverse_norms(x: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """r = 1 / max(||x_i||, eps) and n = r^2 where the norm exceeds eps, else 0 (the factor of the
    normalisation's gradient; F.normalize's clamp has none)."""
    norms = torch.linalg.vector_norm(x, dim=1, dtype=dtype)
    r = 1.0 / norms.clamp_min(NORM_EPS)
    return r, torch.where(norms > NORM_EPS, r * r, torch.zeros_like(r))


# --------------------------------------------------------------------------------------------
# reference backend (chunked pure PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------
def _reference_inputs(q, k, normalize):
    cdt = _reference.compute_dtype(q.dtype)
    qc = q.to(cdt)
    kc = qc if k is None else k.to(cdt)
    norms = None
    if normalize:
        r, n = _inverse_norms(qc, cdt)
        rho, m = (r, n) if k is None else _inverse_norms(kc, cdt)
        norms = (r, n, rho, m)
        qc = qc * r[:, None]
        kc = qc if k is None else kc * rho[:, None]
    return qc, kc, norms


def _reference_forward(q, k, scale, self_index, exclude_period, normalize):
    qc, kc, _ = _reference_inputs(q, k, normalize)
    scale_rows = scale.to(qc.dtype).expand(q.shape[0])
    return _reference.similarity_lse_forward(qc, kc, scale_rows, self_index, exclude_period)


def _unnormalize_grad(x, grad_hat, r, n):
    """Chain rule through x_hat = x * r(x): dx = r (dx_hat - n <x, dx_hat> x)."""
    return r[:, None] * (grad_hat - (n * (x * grad_hat).sum(1))[:, None] * x)


def _reference_backward(grad, lse, q, k, scale, self_index, exclude_period, normalize, needs):
    needs_q, needs_k, needs_scale = needs
    qc, kc, norms = _reference_inputs(q, k, normalize)
    scale_rows = scale.to(qc.dtype).expand(q.shape[0])
    dq, dk, da = _reference.similarity_lse_backward(
        grad, lse, qc, kc, scale_rows, self_index, exclude_period,
        needs=(needs_q, needs_k or (k is None and needs_q), needs_scale))
    if k is None and dq is not None:
        dq = dq + dk  # z is both q and k
        dk = None
    if normalize:
        r, n, rho, m = norms
        raw = q.to(qc.dtype)
        dq = None if dq is None else _unnormalize_grad(raw, dq, r, n)
        dk = None if dk is None else _unnormalize_grad(k.to(qc.dtype), dk, rho, m)
    return dq, dk, da


# --------------------------------------------------------------------------------------------
# triton backend (kernels/similarity_lse.py)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _kernels():
    from ..kernels import similarity_lse as kernels  # imports triton: only when the backend runs

    return kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _programs_target(device: torch.device) -> int:
    """How many programs the symmetric kernels aim to launch: 4 per SM (2 under the interpreter,
    where splitting only needs to be exercised)."""
    if device.type != "cuda":
        return 2
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _block_d(dim: int, backward: bool) -> int:
    """Width of a D chunk: all of D up to 256 in the forward (the column loop stays innermost);
    at most 128 in the backward, whose fp32 (BLOCK_M, BLOCK_D) accumulator lives in registers.
    64 under the interpreter so that small tests cover chunked D."""
    cap = 64 if dispatch.triton_interpreter() else (128 if backward else 256)
    return min(max(16, _next_power_of_2(dim)), cap)


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """tf32 tensor-core dots for fp32 inputs on a GPU; plain fp32 under the interpreter."""
    return "tf32" if dtype == torch.float32 and device.type == "cuda" else "ieee"


def _self_keys(self_index, exclude_period):
    """Per-row key compared with key(j) in the kernels: self_index (period 0) or self_index mod P,
    -1 for rows that exclude nothing."""
    if self_index is None:
        return None
    keys = self_index if exclude_period == 0 else torch.where(
        self_index >= 0, torch.remainder(self_index, exclude_period), -1)
    return keys.to(torch.int32).contiguous()  # int32 compares keep the (BLOCK_M, BLOCK_N) masks cheap


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels take any row stride but unit column stride."""
    return x if x.stride(1) == 1 else x.contiguous()


def uses_symmetric_path(k, scale, normalize: bool, deterministic: bool) -> bool:
    """The Triton backend's choice: the upper-triangle kernels serve k is q with L2-normalised rows
    and one scalar scale (a fixed row maximum exists, and S is symmetric); they accumulate with
    atomics, so deterministic runs take the general (atomic-free) kernels."""
    return k is None and normalize and scale.dim() == 0 and not deterministic


class _TritonInputs:
    """Per-call vectors every kernel reads: base-2 row scale a_i r_i log2(e), inverse norms, self
    keys, and the launch constants."""

    def __init__(self, q, k, scale, self_index, exclude_period, normalize, backward):
        self.q = _rows_contiguous(q)
        self.k = self.q if k is None else _rows_contiguous(k)
        self.num_rows, self.dim = self.q.shape
        self.num_keys = self.k.shape[0]
        self.a = scale.float().expand(self.num_rows)
        if normalize:
            self.r, self.n = _inverse_norms(self.q, torch.float32)
            self.rho, self.m = (self.r, self.n) if k is None else _inverse_norms(self.k, torch.float32)
            self.row_scale = (self.a * LOG2E * self.r).contiguous()
        else:
            self.r = self.rho = self.n = self.m = None
            self.row_scale = (self.a * LOG2E).contiguous()
        self.self_key = _self_keys(self_index, exclude_period)
        self.period = exclude_period
        self.block_d = _block_d(self.dim, backward)
        self.d_chunks = _cdiv(self.dim, self.block_d)
        self.precision = _precision(self.q.dtype, self.q.device)

    def flags(self):
        return dict(HAS_SELF=self.self_key is not None, PERIODIC=self.period > 0, BLOCK_D=self.block_d,
                    D_CHUNKS=self.d_chunks, PRECISION=self.precision)

    def any_vector(self):
        """Placeholder for a pointer argument that a constexpr flag leaves unread."""
        return self.row_scale


def _triton_forward(q, k, scale, self_index, exclude_period, normalize, deterministic):
    kern = _kernels()
    t = _TritonInputs(q, k, scale, self_index, exclude_period, normalize, backward=False)
    self_key = t.self_key if t.self_key is not None else t.any_vector()
    lse = torch.empty(t.num_rows, dtype=torch.float32, device=q.device)
    rows_grid = lambda meta: (_cdiv(t.num_rows, meta["BLOCK_M"]),)  # noqa: E731
    redo = None
    if uses_symmetric_path(k, scale, normalize, deterministic):
        sums = torch.empty(t.num_rows, dtype=torch.float32, device=q.device)  # zeroed by the pre_hook
        shift2 = (scale.float().abs() * LOG2E).reshape(1)  # fixed maximum |a| log2(e); |s| <= |a|
        target = _programs_target(q.device)
        kern._sym_lse_fwd_kernel[_symmetric_grid(t.num_rows, target, 1)](
            t.q, t.row_scale, t.r, self_key, shift2, sums,
            t.num_rows, t.dim, t.q.stride(0), t.period, target, **t.flags())
        lse = (shift2 + torch.log2(sums)) * LN2
        redo = (sums < t.num_keys * UNDERFLOW_GUARD).to(torch.int8)
    kern._lse_fwd_kernel[rows_grid](
        t.q, t.k, t.row_scale, t.rho if normalize else t.any_vector(), self_key, lse,
        redo if redo is not None else t.any_vector(),
        t.num_rows, t.num_keys, t.dim, t.q.stride(0), t.k.stride(0), t.period,
        HAS_COL_SCALE=normalize, ONLY_FLAGGED=redo is not None, **t.flags())
    return lse


def _symmetric_grid(n: int, target: int, d_chunks: int):
    def grid(meta):
        n_blocks = _cdiv(n, meta["BLOCK"])
        splits = min(max(_cdiv(target, n_blocks), 1), n_blocks)
        return (n_blocks, splits, d_chunks)
    return grid


def _triton_backward(grad, lse, q, k, scale, self_index, exclude_period, normalize, deterministic, needs):
    needs_q, needs_k, needs_scale = needs
    kern = _kernels()
    t = _TritonInputs(q, k, scale, self_index, exclude_period, normalize, backward=True)
    self_key = t.self_key if t.self_key is not None else t.any_vector()
    g = grad.float()
    lse2 = torch.where(torch.isneginf(lse), torch.inf, lse * LOG2E).contiguous()  # no kept column: P = 0
    tiny = torch.finfo(torch.float32).tiny
    dq = dk = dscale = None

    if uses_symmetric_path(k, scale, normalize, deterministic):
        g_max = g.abs().amax().clamp_min(tiny)
        acc = torch.empty(t.num_rows, t.dim, dtype=torch.float32, device=q.device)  # zeroed by the pre_hook
        b = torch.empty(t.num_rows, dtype=torch.float32, device=q.device)
        target = _programs_target(q.device)
        kern._sym_lse_bwd_kernel[_symmetric_grid(t.num_rows, target, t.d_chunks)](
            t.q, t.row_scale, t.r, self_key, lse2, (g / g_max).contiguous(), acc, b,
            t.num_rows, t.dim, t.q.stride(0), acc.stride(0), t.period, target, **t.flags())
        a = scale.float()
        if needs_q:
            dz = (a * g_max * t.r)[:, None] * (acc - (t.n * b)[:, None] * t.q.float())
            dq = dz.to(q.dtype)
        if needs_scale:
            dscale = (0.5 * g_max * (t.r * b).sum()).to(scale.dtype)
        return dq, dk, dscale

    rows_grid = lambda meta: (_cdiv(t.num_rows, meta["BLOCK_M"]), t.d_chunks)  # noqa: E731
    cols_grid = lambda meta: (_cdiv(t.num_keys, meta["BLOCK_N"]), t.d_chunks)  # noqa: E731
    k_is_q = k is None
    need_rows = needs_q or needs_scale
    need_cols = needs_k or (k_is_q and needs_q)
    # k is q: dq and dk of the same rows are summed in one fp32 buffer, cast once
    out_dtype = torch.float32 if k_is_q else q.dtype
    dq_buf = torch.empty(t.num_rows, t.dim, dtype=out_dtype, device=q.device) if needs_q else None
    da_rows = torch.empty(t.num_rows, dtype=torch.float32, device=q.device) if needs_scale else None
    if need_rows:
        if normalize:
            gar = g * t.a * t.r
            dq_coef, dq_norm_coef, da_coef = gar, gar * t.n, g * t.r
        else:
            dq_coef, dq_norm_coef, da_coef = g * t.a, t.any_vector(), g
        kern._lse_bwd_rows_kernel[rows_grid](
            t.q, t.k, t.row_scale, t.rho if normalize else t.any_vector(), self_key, lse2,
            dq_coef.contiguous(), dq_norm_coef.contiguous(), da_coef.contiguous(),
            dq_buf if dq_buf is not None else t.any_vector(), da_rows if da_rows is not None else t.any_vector(),
            t.num_rows, t.num_keys, t.dim, t.q.stride(0), t.k.stride(0),
            dq_buf.stride(0) if dq_buf is not None else 0, t.period,
            NORMALIZED=normalize, WRITE_DQ=needs_q, WRITE_DA=needs_scale, **t.flags())
    if need_cols:
        ga = g * t.a
        ga_max = ga.abs().amax().clamp_min(tiny)
        dk_coef = (t.rho * ga_max) if normalize else ga_max.expand(t.num_keys)
        dk_norm_coef = (dk_coef * t.m) if normalize else t.any_vector()
        dk_buf = dq_buf if k_is_q else torch.empty(t.num_keys, t.dim, dtype=k.dtype, device=k.device)
        kern._lse_bwd_cols_kernel[cols_grid](
            t.q, t.k, t.row_scale, t.r if normalize else t.any_vector(), t.rho if normalize else t.any_vector(),
            (ga / ga_max).contiguous(), self_key,
            lse2, dk_coef.contiguous(), dk_norm_coef.contiguous(), dk_buf,
            t.num_rows, t.num_keys, t.dim, t.q.stride(0), t.k.stride(0), dk_buf.stride(0), t.period,
            NORMALIZED=normalize, ACCUMULATE=k_is_q, **t.flags())
        if not k_is_q:
            dk = dk_buf
    if needs_q:
        dq = dq_buf.to(q.dtype)
    if needs_scale:
        dscale = (da_rows.sum() if scale.dim() == 0 else da_rows).to(scale.dtype)
    return dq, dk, dscale


def _triton_unsupported_reasons(*tensors, **_):
    reasons = []
    for t in tensors:
        if t is not None and t.device.type == "cpu" and t.dtype == torch.bfloat16:
            reasons.append("bfloat16 is silently wrong in the Triton interpreter (CPU); use a GPU or float16/32")
    return reasons


# --------------------------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("sslfast::similarity_lse", mutates_args=())
def _similarity_lse_op(q: torch.Tensor, k: Optional[torch.Tensor], scale: torch.Tensor,
                       self_index: Optional[torch.Tensor], exclude_period: int, normalize: bool,
                       deterministic: bool, backend: str) -> torch.Tensor:
    if backend == "triton":
        return _triton_forward(q, k, scale, self_index, exclude_period, normalize, deterministic)
    return _reference_forward(q, k, scale, self_index, exclude_period, normalize)


@_similarity_lse_op.register_fake
def _(q, k, scale, self_index, exclude_period, normalize, deterministic, backend):
    return q.new_empty(q.shape[0], dtype=_reference.compute_dtype(q.dtype))


@torch.library.custom_op("sslfast::similarity_lse_backward", mutates_args=())
def _similarity_lse_backward_op(grad: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: Optional[torch.Tensor],
                                scale: torch.Tensor, self_index: Optional[torch.Tensor], exclude_period: int,
                                normalize: bool, deterministic: bool, backend: str, needs_q: bool, needs_k: bool,
                                needs_scale: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dscale); an output that is not needed is an empty tensor. When k is None, dq is
    the whole gradient of q (as query and as key)."""
    needs = (needs_q, needs_k and k is not None, needs_scale)
    impl = _triton_backward if backend == "triton" else _reference_backward
    if backend == "triton":
        dq, dk, dscale = impl(grad, lse, q, k, scale, self_index, exclude_period, normalize, deterministic, needs)
    else:
        dq, dk, dscale = impl(grad, lse, q, k, scale, self_index, exclude_period, normalize, needs)
        dq = None if dq is None else dq.to(q.dtype)
        dk = None if dk is None else dk.to(k.dtype)
        if dscale is not None:
            dscale = (dscale.sum() if scale.dim() == 0 else dscale).to(scale.dtype)
    def or_empty(t, dtype):  # outputs must not alias each other: one fresh empty tensor each
        return q.new_empty(0, dtype=dtype) if t is None else t
    return or_empty(dq, q.dtype), or_empty(dk, q.dtype), or_empty(dscale, scale.dtype)


@_similarity_lse_backward_op.register_fake
def _(grad, lse, q, k, scale, self_index, exclude_period, normalize, deterministic, backend, needs_q, needs_k,
      needs_scale):
    return (torch.empty_like(q) if needs_q else q.new_empty(0),
            torch.empty_like(k) if (needs_k and k is not None) else q.new_empty(0),
            torch.empty_like(scale) if needs_scale else q.new_empty(0, dtype=scale.dtype))


def _setup_context(ctx, inputs, output):
    q, k, scale, self_index, exclude_period, normalize, deterministic, backend = inputs
    ctx.save_for_backward(q, k, scale, self_index, output)
    ctx.config = (exclude_period, normalize, deterministic, backend)


def _backward(ctx, grad_lse):
    q, k, scale, self_index, lse = ctx.saved_tensors
    needs_q, needs_k, needs_scale = ctx.needs_input_grad[:3]
    dq, dk, dscale = _similarity_lse_backward_op(grad_lse, lse, q, k, scale, self_index, *ctx.config,
                                                 needs_q, needs_k, needs_scale)
    return (dq if needs_q else None, dk if needs_k else None, dscale if needs_scale else None,
            None, None, None, None, None)


_similarity_lse_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# backends and the public entry point
# --------------------------------------------------------------------------------------------
def _backend_fn(name):
    def run(q, k, scale, self_index, exclude_period, normalize, deterministic):
        return _similarity_lse_op(q, k, scale, self_index, exclude_period, normalize, deterministic, name)
    return run


dispatch.register(dispatch.Backend(op=OP, name="reference", fn=_backend_fn("reference")))
dispatch.register(dispatch.Backend(
    op=OP, name="triton", fn=_backend_fn("triton"), devices=("cuda",),
    dtypes=(torch.float16, torch.bfloat16, torch.float32), min_compute_capability=(8, 0),
    unavailable=dispatch.triton_unavailable_reason, extra_reasons=_triton_unsupported_reasons))


def similarity_lse(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    scale,
    self_index: Optional[torch.Tensor] = None,
    exclude_period: int = 0,
    *,
    normalize: bool = False,
    backend: Optional[str] = None,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
    """lse_i = log sum_{j kept} exp(scale_i <q_i, k_j>), on the backend dispatch picks.

    Args:
        q: (Nq, D) queries.
        k: (Nk, D) keys, or None: k is q (the symmetric NT-Xent case, which the Triton backend
            exploits when normalize=True and the scale is a scalar).
        scale: a number, a 0-d tensor or an (Nq,) tensor (per-row, e.g. iSogCLR's 1/tau_i);
            differentiable when a tensor that requires grad.
        self_index: (Nq,) integer column of each row's own copy in k, -1 for none; None: none.
        exclude_period: 0 excludes only column self_index[i]; P > 0 excludes every column j with
            j = self_index[i] (mod P) (all views of a sample when views are stacked in blocks of P).
        normalize: L2-normalise the rows of q and k first (fused in the Triton kernels; the
            gradient flows through the normalisation).
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference".
        deterministic: bitwise reproducible results (no atomics); None follows
            torch.are_deterministic_algorithms_enabled().

    Returns:
        (Nq,) lse in float32 (float64 for float64 inputs); -inf for a row with no kept column
        (its gradients are 0). On a GPU, float32 inputs use tf32 tensor-core dots.

    Example:
        >>> import torch
        >>> from sslfast.ops.similarity_lse import similarity_lse
        >>> z = torch.randn(6, 8)
        >>> lse = similarity_lse(z, None, 1 / 0.1, torch.arange(6), normalize=True)
        >>> lse.shape, lse.dtype
        (torch.Size([6]), torch.float32)
    """
    q, k, scale, self_index, exclude_period, deterministic = _prepare(
        q, k, scale, self_index, exclude_period, normalize, deterministic)
    impl = dispatch.select(OP, q, k, backend=backend)
    return impl.fn(q, k, scale, self_index, exclude_period, normalize, deterministic)
