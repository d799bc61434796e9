"""torch.library op sslfast::crosscorr_gram: rows of the Gram matrix P = x[r0:r1] x^T in fp32,
with its backward (kernels/crosscorr_matmul.py; oracle sslfast.reference.crosscorr.gram)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._crosscorr_matmul import matmul


@torch.library.custom_op("sslfast::crosscorr_gram", mutates_args=())
def crosscorr_gram(x: Tensor, row_start: int, row_end: int) -> Tensor:
    n = x.shape[0]
    out = x.new_empty((row_end - row_start, n), dtype=torch.float32)
    if out.numel() == 0:
        return out.zero_()
    # all rows: P is symmetric, so only the tiles on and above the diagonal are computed
    matmul(out, x[row_start:row_end], x.T, symmetric_out=(row_start == 0 and row_end == n))
    return out


@crosscorr_gram.register_fake
def _(x, row_start, row_end):
    return x.new_empty((row_end - row_start, x.shape[0]), dtype=torch.float32)


@torch.library.custom_op("sslfast::crosscorr_gram_backward", mutates_args=())
def crosscorr_gram_backward(grad: Tensor, x: Tensor, row_start: int, row_end: int) -> Tensor:
    """dx = (dP + dP^T) x for all rows; else dP^T x[rows], plus dP x on those rows."""
    n = x.shape[0]
    grad = grad.float()
    if row_start == 0 and row_end == n:
        dx = torch.empty_like(x)
        matmul(dx, grad, x, symmetrize_a=True)
        return dx
    dx = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if row_end > row_start:
        matmul(dx, grad.T, x[row_start:row_end])
        matmul(dx[row_start:row_end], grad, x, accumulate=True)
    return dx.to(x.dtype)


@crosscorr_gram_backward.register_fake
def _(grad, x, row_start, row_end):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, row_start, row_end = inputs
    ctx.save_for_backward(x)
    ctx.rows = (row_start, row_end)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return crosscorr_gram_backward(grad, x, *ctx.rows), None, None


crosscorr_gram.register_autograd(_backward, setup_context=_setup_context)
