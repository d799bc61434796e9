r"""Row-wise log-sum-exp of scaled similarities: the primitive under every contrastive loss.

For queries q (Nq, D), keys k (Nk, D) and a per-row scale a (Nq,) (1/temperature, a logit
scale, or iSogCLR's per-sample 1/tau_i):

    S_ij   = a_i * <q_i, k_j>
    lse_i  = log sum_{j not excluded for i} exp(S_ij)

Excluded columns are chosen by index, never by adding a large negative number:
  * `self_index[i]` is the column of row i's own copy in k (e.g. i itself for NT-Xent);
    -1 (or None for all rows) excludes nothing;
  * with `exclude_period == 0` only column self_index[i] is excluded (NT-Xent, SimCLR);
  * with `exclude_period == P > 0` every column j with j % P == self_index[i] % P is excluded:
    all views of row i's sample (DCL's "decoupled" denominator with views stacked in blocks of P).

Gradients (P_ij = exp(S_ij - lse_i) on kept columns, 0 on excluded ones, g_i = dL/dlse_i):

    dq_i = a_i * sum_j g_i P_ij k_j      dk_j = sum_i g_i P_ij a_i q_i
    da_i = g_i * sum_j P_ij <q_i, k_j>  = <q_i, dq_i> / a_i

Memory: the forward and the backward walk over row chunks of `chunk_rows` rows, recomputing
the (chunk, Nk) block in backward from the saved lse; peak extra memory is O(chunk * Nk)
instead of O(Nq * Nk), so 2N = 65536, D = 128 runs on a CPU in a few hundred MB. Blocks are
computed in float32 (float64 for float64 inputs) whatever the input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

_DEFAULT_BLOCK_ELEMENTS = 1 << 24  # 64 MB of fp32 per (chunk, Nk) block


def default_chunk_rows(num_keys: int) -> int:
    return max(1, _DEFAULT_BLOCK_ELEMENTS // max(1, num_keys))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked_block(q_rows, k, scale_rows, self_rows, exclude_period):
    """(rows, Nk) block of S with excluded entries at -inf, plus the unscaled dots."""
    dots = q_rows @ k.T
    block = dots * scale_rows[:, None]
    if self_rows is not None:
        has_self = self_rows >= 0
        if exclude_period > 0:
            first = torch.remainder(self_rows, exclude_period)
            offsets = torch.arange(0, k.shape[0], exclude_period, device=k.device)
            cols = first[:, None] + offsets[None, :]
            drop = has_self[:, None] & (cols < k.shape[0])
        else:
            cols = self_rows[:, None]
            drop = has_self[:, None]
        cols = torch.where(drop, cols, torch.zeros_like(cols))
        fill = torch.where(drop, float("-inf"), 0.0).to(block.dtype)
        # scatter_add of -inf on excluded columns, 0 elsewhere: duplicates are harmless.
        block = block.scatter_add(1, cols, fill)
    return block, dots


def similarity_lse_forward(q, k, scale_rows, self_index=None, exclude_period: int = 0, *,
                           chunk_rows: Optional[int] = None) -> torch.Tensor:
    """lse without autograd, chunked over rows (the forward of `similarity_lse`; also the
    reference backend of the torch.library op sslfast::similarity_lse)."""
    cdt = compute_dtype(q.dtype)
    qc, kc, ac = q.to(cdt), k.to(cdt), scale_rows.to(cdt)
    chunk_rows = chunk_rows or default_chunk_rows(k.shape[0])
    lse = torch.empty(q.shape[0], dtype=cdt, device=q.device)
    for r0 in range(0, q.shape[0], chunk_rows):
        r1 = min(r0 + chunk_rows, q.shape[0])
        rows = None if self_index is None else self_index[r0:r1]
        block, _ = _masked_block(qc[r0:r1], kc, ac[r0:r1], rows, exclude_period)
        lse[r0:r1] = torch.logsumexp(block, dim=1)
    return lse


def similarity_lse_backward(grad_lse, lse, q, k, scale_rows, self_index=None, exclude_period: int = 0, *,
                            chunk_rows: Optional[int] = None, needs=(True, True, True)):
    """(dq, dk, d scale_rows) from the saved lse by recomputing row chunks (None where `needs`
    is False); in the compute dtype. A row with no kept column (lse = -inf) gets zero gradients."""
    cdt = lse.dtype
    qc, kc, ac, g = q.to(cdt), k.to(cdt), scale_rows.to(cdt), grad_lse.to(cdt)
    chunk_rows = chunk_rows or default_chunk_rows(k.shape[0])
    lse = torch.where(torch.isneginf(lse), torch.inf, lse)  # exp(-inf - inf) = 0, not NaN
    dq = torch.empty_like(qc) if needs[0] else None
    dk = torch.zeros_like(kc) if needs[1] else None
    da = torch.empty_like(ac) if needs[2] else None
    for r0 in range(0, q.shape[0], chunk_rows):
        r1 = min(r0 + chunk_rows, q.shape[0])
        rows = None if self_index is None else self_index[r0:r1]
        block, _ = _masked_block(qc[r0:r1], kc, ac[r0:r1], rows, exclude_period)
        weights = torch.exp(block - lse[r0:r1, None]) * g[r0:r1, None]  # g_i P_ij
        pk = weights @ kc  # sum_j g_i P_ij k_j
        if dq is not None:
            dq[r0:r1] = pk * ac[r0:r1, None]
        if da is not None:
            da[r0:r1] = (pk * qc[r0:r1]).sum(1)
        if dk is not None:
            dk += weights.T @ (qc[r0:r1] * ac[r0:r1, None])
    return dq, dk, da


class _SimilarityLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, scale_rows, self_index, exclude_period, chunk_rows):
        lse = similarity_lse_forward(q, k, scale_rows, self_index, exclude_period, chunk_rows=chunk_rows)
        ctx.save_for_backward(q, k, scale_rows, self_index, lse)
        ctx.exclude_period, ctx.chunk_rows = exclude_period, chunk_rows
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        q, k, scale_rows, self_index, lse = ctx.saved_tensors
        dq, dk, da = similarity_lse_backward(grad_lse, lse, q, k, scale_rows, self_index, ctx.exclude_period,
                                             chunk_rows=ctx.chunk_rows, needs=ctx.needs_input_grad[:3])
        cast = lambda t, ref: None if t is None else t.to(ref.dtype)  # noqa: E731
        return cast(dq, q), cast(dk, k), cast(da, scale_rows), None, None, None


def similarity_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    scale,
    self_index: Optional[torch.Tensor] = None,
    exclude_period: int = 0,
    *,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """Row-wise masked log-sum-exp of `scale * q @ k.T`, chunked (see the module docstring).

    Args:
        q: (Nq, D) queries. k: (Nk, D) keys (may be the same tensor as q).
        scale: a float, a 0-d tensor or an (Nq,) tensor (per-row), differentiable.
        self_index: (Nq,) int64 column of each row's own copy in k, -1 for none; None: none.
        exclude_period: 0 excludes only self_index; P > 0 excludes every j = self_index (mod P).
        chunk_rows: rows per block (default: a 64 MB block).

    Returns:
        (Nq,) lse in float32 (float64 for float64 inputs).
    """
    cdt = compute_dtype(q.dtype)
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=cdt, device=q.device)
    scale_rows = scale.expand(q.shape[0]) if scale.dim() == 0 else scale
    chunk_rows = chunk_rows or default_chunk_rows(k.shape[0])
    return _SimilarityLSE.apply(q, k, scale_rows, self_index, int(exclude_period), int(chunk_rows))


def similarity_lse_dense(q, k, scale, self_index=None, exclude_period: int = 0) -> torch.Tensor:
    """The same quantity from the full (Nq, Nk) matrix with plain autograd: the test oracle for
    the chunked form above. O(Nq * Nk) memory."""
    cdt = compute_dtype(q.dtype)
    scale = torch.as_tensor(scale, dtype=cdt, device=q.device)
    s = (q.to(cdt) @ k.to(cdt).T) * (scale[:, None] if scale.dim() == 1 else scale)
    if self_index is not None:
        cols = torch.arange(k.shape[0], device=q.device)
        if exclude_period > 0:
            same = (cols[None, :] % exclude_period) == (self_index[:, None] % exclude_period)
        else:
            same = cols[None, :] == self_index[:, None]
        s = s.masked_fill(same & (self_index[:, None] >= 0), float("-inf"))
    return torch.logsumexp(s, dim=1)
