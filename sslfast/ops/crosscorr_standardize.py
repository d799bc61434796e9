"""torch.library op sslfast::crosscorr_standardize: fused batch standardisation of one or two
embedding matrices plus the column sums the cross-correlation losses need (the math is in
kernels/crosscorr_standardize.py and sslfast.reference.crosscorr.standardize, its oracle)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _launch_grid(d: int):
    import triton

    return lambda meta: (triton.cdiv(d, meta["BLOCK_D"]),)


STATS_DTYPE = torch.float32  # column sums and moments accumulate in fp32 whatever the input


@torch.library.custom_op("sslfast::crosscorr_standardize", mutates_args=())
def crosscorr_standardize(z0: Tensor, z1: Optional[Tensor], eps: float, ddof: int,
                          rescale: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y0, y1, stats, moments): y1 is empty (0, D) when z1 is None; stats (4, D) fp32 column
    sums; moments (4, D) fp32 = mean0, r0, mean1, r1 (saved for the backward)."""
    from ..kernels.crosscorr_standardize import standardize_fwd_kernel

    n, d = z0.shape
    z0 = z0.contiguous()
    pair = z1 is not None
    z1c = z1.contiguous() if pair else z0
    y0 = torch.empty_like(z0)
    y1 = torch.empty_like(z1c) if pair else z0.new_empty((0, d))
    stats = torch.empty((4, d), dtype=STATS_DTYPE, device=z0.device)
    moments = torch.zeros((4, d), dtype=STATS_DTYPE, device=z0.device)
    standardize_fwd_kernel[_launch_grid(d)](
        z0, z1c, y0, y1 if pair else y0, stats, moments,
        n, d, z0.stride(0), z1c.stride(0), y0.stride(0), (y1 if pair else y0).stride(0),
        1.0 / (n - ddof), float(eps), PAIR=pair, RESCALE=bool(rescale))
    return y0, y1, stats, moments


@crosscorr_standardize.register_fake
def _(z0, z1, eps, ddof, rescale):
    d = z0.shape[1]
    y1 = torch.empty_like(z1) if z1 is not None else z0.new_empty((0, d))
    return (torch.empty_like(z0), y1, z0.new_empty((4, d), dtype=STATS_DTYPE),
            z0.new_empty((4, d), dtype=STATS_DTYPE))


@torch.library.custom_op("sslfast::crosscorr_standardize_backward", mutates_args=())
def crosscorr_standardize_backward(grad_y0: Tensor, grad_y1: Optional[Tensor], grad_stats: Tensor, z0: Tensor,
                                   z1: Optional[Tensor], moments: Tensor, ddof: int,
                                   rescale: bool) -> Tuple[Tensor, Tensor]:
    from ..kernels.crosscorr_standardize import standardize_bwd_kernel

    n, d = z0.shape
    pair = z1 is not None
    z0 = z0.contiguous()
    z1c = z1.contiguous() if pair else z0
    g0 = grad_y0.contiguous()
    g1 = grad_y1.contiguous() if pair else g0
    dz0 = torch.empty_like(z0)
    dz1 = torch.empty_like(z1c) if pair else z0.new_empty((0, d))
    standardize_bwd_kernel[_launch_grid(d)](
        g0, g1, grad_stats.contiguous().float(), z0, z1c, moments, dz0, dz1 if pair else dz0,
        n, d, g0.stride(0), g1.stride(0), z0.stride(0), z1c.stride(0), dz0.stride(0),
        (dz1 if pair else dz0).stride(0), 1.0 / (n - ddof), PAIR=pair, RESCALE=bool(rescale))
    return dz0, dz1


@crosscorr_standardize_backward.register_fake
def _(grad_y0, grad_y1, grad_stats, z0, z1, moments, ddof, rescale):
    return torch.empty_like(z0), (torch.empty_like(z1) if z1 is not None else z0.new_empty((0, z0.shape[1])))


def _setup_context(ctx, inputs, output):
    z0, z1, _, ddof, rescale = inputs
    ctx.save_for_backward(z0, z1, output[3])
    ctx.ddof, ctx.rescale = ddof, rescale
    ctx.mark_non_differentiable(output[3])


def _backward(ctx, grad_y0, grad_y1, grad_stats, _grad_moments):
    z0, z1, moments = ctx.saved_tensors
    if grad_y0 is None:
        grad_y0 = torch.zeros_like(z0)
    if z1 is not None and (grad_y1 is None or grad_y1.numel() == 0):
        grad_y1 = torch.zeros_like(z1)
    if grad_stats is None:
        grad_stats = z0.new_zeros((4, z0.shape[1]), dtype=STATS_DTYPE)
    dz0, dz1 = crosscorr_standardize_backward(grad_y0, grad_y1 if z1 is not None else None, grad_stats, z0, z1,
                                              moments, ctx.ddof, ctx.rescale)
    return dz0, (dz1 if z1 is not None else None), None, None, None


crosscorr_standardize.register_autograd(_backward, setup_context=_setup_context)
