"""Collectives with gradients for losses computed over the global batch.

Gradient convention: DDP averages parameter gradients over the W ranks. A loss that each rank
computes on its local rows against the gathered global batch gives rank r the input gradient
W * dL/dz_r, where L is the single-process loss on the concatenated batch; after DDP's
averaging every parameter gradient equals dL/dtheta exactly (tests check both).

`gather` is all_gather in forward and, in backward, the sum over ranks of the gradients that
reached each rank's slice (a reduce-scatter), which is what the chain rule asks for when every
rank uses the gathered tensor. Batches must have the same shape on every rank (checked: a clear
error on every rank otherwise).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        # reduce-scatter: each rank receives only the sum of its own slice, half the bytes of an
        # all_reduce of the whole gathered gradient followed by a slice
        parts = [part.contiguous() for part in grad.chunk(dist.get_world_size(), dim=0)]
        out = torch.empty_like(parts[dist.get_rank()])
        dist.reduce_scatter(out, parts, op=dist.ReduceOp.SUM)
        return out


def check_same_rows(x: torch.Tensor) -> None:
    """Raise on every rank when the ranks hold different numbers of rows (all_gather needs equal
    shapes: gloo aborts the process, NCCL may hang or read garbage). One tiny all_gather plus a
    read-back, so it follows the switch of the other value checks (SSLFAST_CHECK_FINITE=0 skips
    it; so does torch.compile tracing)."""
    from ._validation import value_checks_enabled

    if world_size() == 1 or not value_checks_enabled():
        return
    mine = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    rows = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(rows, mine)
    rows = [int(r) for r in rows]
    if len(set(rows)) > 1:
        raise ValueError(f"gather_distributed needs the same number of rows on every rank, got {rows} (rank r "
                         f"holds rows[r]); give every rank equal batches (e.g. drop_last=True in the loader)")


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, differentiably (identity when not distributed)."""
    if world_size() == 1:
        return x
    check_same_rows(x)
    return _GatherWithGrad.apply(x)


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks, differentiably: backward sums the gradients of every rank's use."""
    if world_size() == 1:
        return x
    return _AllReduceSumWithGrad.apply(x)


def row_offset(local_rows: int) -> int:
    """Global index of this rank's first row when every rank holds `local_rows` rows."""
    return rank() * local_rows
