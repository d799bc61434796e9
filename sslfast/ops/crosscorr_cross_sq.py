"""torch.library op sslfast::crosscorr_cross_sq: s = ||a^T b[:, J]||_F^2 without storing the
D x |J| product, and its backward, which recomputes the product one stripe of rows at a time
(kernels/crosscorr_matmul.py; oracle sslfast.reference.crosscorr.cross_sq).

Backward, with C = a^T b_J (D x |J|) and g the upstream scalar:
    da = 2g b_J C^T,  db_J = 2g a C;   for b = a over all columns, da = 4g a C.
C is recomputed in stripes S of STRIPE_BYTES (C_S = a[:, S]^T b_J); each stripe gives
da[:, S] whole and adds its share a[:, S] C_S to db_J, so the workspace is one stripe, never
D x D. That costs one extra 2 N D |J| product (the recomputation) against keeping C from the
forward: the cost model in ops/crosscorr.py counts it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._crosscorr_matmul import matmul, sum_squares

STRIPE_BYTES = 64 << 20  # the recomputed stripe of C (fp32)


def stripe_rows(d: int, cols: int) -> int:
    rows = max(64, (STRIPE_BYTES // (4 * max(cols, 1))) // 64 * 64)
    return min(d, rows)


def _full(b: Optional[Tensor], d: int, col_start: int, col_end: int) -> bool:
    return b is None and col_start == 0 and col_end == d


@torch.library.custom_op("sslfast::crosscorr_cross_sq", mutates_args=())
def crosscorr_cross_sq(a: Tensor, b: Optional[Tensor], col_start: int, col_end: int) -> Tensor:
    d = a.shape[1]
    other = a if b is None else b
    # C = a^T b_J: A = a^T (D x N), B = b[:, J] (N x |J|); for b = a all columns, the upper tiles only
    return sum_squares(a.T, other[:, col_start:col_end], symmetric=_full(b, d, col_start, col_end))


@crosscorr_cross_sq.register_fake
def _(a, b, col_start, col_end):
    return a.new_empty((), dtype=torch.float32)


@torch.library.custom_op("sslfast::crosscorr_cross_sq_backward", mutates_args=())
def crosscorr_cross_sq_backward(grad: Tensor, a: Tensor, b: Optional[Tensor], col_start: int,
                                col_end: int) -> Tuple[Tensor, Tensor]:
    n, d = a.shape
    grad = grad.float().reshape(())
    other = a if b is None else b
    b_cols = other[:, col_start:col_end]
    width = col_end - col_start
    stripe = stripe_rows(d, width)
    workspace = torch.empty((stripe, max(width, 1)), dtype=torch.float32, device=a.device)
    if _full(b, d, col_start, col_end):
        da = torch.zeros((n, d), dtype=torch.float32, device=a.device)
        for s0 in range(0, d, stripe):
            s1 = min(s0 + stripe, d)
            c_s = workspace[: s1 - s0, :width]
            matmul(c_s, a[:, s0:s1].T, a)  # C_S = a_S^T a
            matmul(da, a[:, s0:s1], c_s, scale=4.0, scale_tensor=grad, accumulate=True)  # 4g a C = 4g sum_S a_S C_S
        return da.to(a.dtype), a.new_empty((0, d))
    da = torch.zeros((n, d), dtype=torch.float32, device=a.device)
    db = torch.zeros((n, d), dtype=torch.float32, device=a.device)
    if width > 0:
        for s0 in range(0, d, stripe):
            s1 = min(s0 + stripe, d)
            c_s = workspace[: s1 - s0, :width]
            matmul(c_s, a[:, s0:s1].T, b_cols)  # C_S = a_S^T b_J
            matmul(da[:, s0:s1], b_cols, c_s.T, scale=2.0, scale_tensor=grad)  # da_S = 2g b_J C_S^T
            matmul(db[:, col_start:col_end], a[:, s0:s1], c_s, scale=2.0, scale_tensor=grad, accumulate=True)
    if b is None:  # a used twice, partial columns
        return (da + db).to(a.dtype), a.new_empty((0, d))
    return da.to(a.dtype), db.to(b.dtype)


@crosscorr_cross_sq_backward.register_fake
def _(grad, a, b, col_start, col_end):
    return torch.empty_like(a), (torch.empty_like(b) if b is not None else a.new_empty((0, a.shape[1])))


def _setup_context(ctx, inputs, output):
    a, b, col_start, col_end = inputs
    ctx.save_for_backward(a, b)
    ctx.cols = (col_start, col_end)


def _backward(ctx, grad):
    a, b = ctx.saved_tensors
    da, db = crosscorr_cross_sq_backward(grad, a, b, *ctx.cols)
    return da, (db if b is not None else None), None, None


crosscorr_cross_sq.register_autograd(_backward, setup_context=_setup_context)
