"""The queue of negatives behind MoCoLoss and NTXentLoss(memory_bank_size=...)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist


class NegativeQueue(nn.Module):
    """A first-in first-out bank of `size` L2-normalised keys of dimension `dim`.

    Update rule of lightly's MemoryBankModule (lightly/models/modules/memory_bank.py,
    _dequeue_and_enqueue): the batch is written at the pointer; when it reaches the end of the
    bank, only the part that fits is written and the pointer returns to 0. When `size` is a
    multiple of the (global) batch size, which MoCo asserts (facebookresearch/moco,
    moco/builder.py, _dequeue_and_enqueue), this is exactly MoCo's ring buffer. The bank starts
    as random unit vectors, as in both. With `gather_distributed=True` the keys of every rank
    are enqueued (all ranks then hold the same bank). The bank is a persistent buffer, so it is
    saved with the model's state_dict and training resumes with it (lightly does not save it).
    """

    def __init__(self, size: int, dim: int, gather_distributed: bool = False):
        super().__init__()
        self.size, self.dim, self.gather_distributed = size, dim, gather_distributed
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        """A copy of the bank: the loss saves it for backward, and the bank changes in place."""
        return self.bank.clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(keys.detach(), dim=1)
        if self.gather_distributed and dist.world_size() > 1:
            keys = dist.gather(keys.contiguous())
        ptr = int(self.bank_ptr)
        if ptr + keys.shape[0] >= self.size:
            self.bank[ptr:] = keys[: self.size - ptr].to(self.bank.dtype)
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + keys.shape[0]] = keys.to(self.bank.dtype)
            self.bank_ptr[0] = ptr + keys.shape[0]

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, gather_distributed={self.gather_distributed}"
