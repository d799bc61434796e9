"""Process-group plumbing of the training loop (torchrun: one process per device).

Everything here is a no-op in a single process. The rule these helpers keep: every rank takes
the same decisions at the same step (stop, raise, where to write), or a collective hangs.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, TypeVar

import torch

from .. import distributed

T = TypeVar("T")


def init_distributed(device_kind: str) -> None:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small objects)."""
    if not distributed.is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_rank0(fn: Callable[[], T]) -> T:
    """fn() on rank 0, its result on every rank; an exception on rank 0 is raised on every rank."""
    result, error = None, None
    if distributed.rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
    if distributed.is_distributed():
        result, error = gather_objects((result, error))[0]
    if error is not None:
        raise error
    return result


def any_rank(flags: List[bool], device: torch.device) -> List[bool]:
    """Element-wise OR of boolean flags over the ranks (one all_reduce)."""
    if not distributed.is_distributed():
        return list(flags)
    import torch.distributed as dist

    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every .grad by its mean over the ranks (one flat all_reduce)."""
    if not distributed.is_distributed():
        return
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
