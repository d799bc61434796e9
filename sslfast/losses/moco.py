"""MoCo's InfoNCE loss with its queue of negatives."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_int, check_positive
from ._common import check_common
from ._queue import NegativeQueue


class MoCoLoss(nn.Module):
    r"""MoCo's contrastive loss (He et al., 2020, https://arxiv.org/abs/1911.05722; v2:
    Chen et al., 2020, https://arxiv.org/abs/2003.04297) against a queue of negatives.

    With q, k the L2-normalised queries and keys (k from the momentum encoder) and n_m the
    queue:

        loss = mean_i [ log(exp(<q_i, k_i>/T) + sum_m exp(<q_i, n_m>/T)) - <q_i, k_i>/T ]

    the cross-entropy of facebookresearch/moco (moco/builder.py, MoCo.forward; label 0 on
    [l_pos, l_neg] / T). After the loss, when the query requires grad, the normalised keys are
    enqueued (the keys of every rank with gather_distributed=True, as MoCo's concat_all_gather).
    The queue update follows lightly's memory bank, which is MoCo's ring buffer when queue_size
    is a multiple of the global batch size (MoCo asserts it). Same loss as
    NTXentLoss(memory_bank_size=(queue_size, dim)), with MoCo v2's defaults.

    Args:
        temperature: T > 0 (MoCo v1: 0.07, v2: 0.2).
        queue_size: number of negatives K (MoCo: 65536).
        dim: the embedding dimension D (MoCo: 128).
        gather_distributed: enqueue the keys of every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        query, key: (B, dim). Output: scalar.

    Example:
        >>> import torch
        >>> from sslfast.losses import MoCoLoss
        >>> loss_fn = MoCoLoss(temperature=0.2, queue_size=1024, dim=64)
        >>> query = torch.randn(16, 64, requires_grad=True)
        >>> key = torch.randn(16, 64)  # from the momentum encoder, no gradient
        >>> loss = loss_fn(query, key)
        >>> int(loss_fn.queue.bank_ptr)
        16
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, temperature: float = 0.2, queue_size: int = 65536, dim: int = 128,
                 gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        check_int("queue_size", queue_size, minimum=1)
        check_int("dim", dim, minimum=1)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)
        self.queue = NegativeQueue(queue_size, dim, gather_distributed=gather_distributed)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if isinstance(query, torch.Tensor) and query.dim() == 2 and query.shape[-1] != self.queue.dim:
            raise ValueError(f"query must have feature dimension dim={self.queue.dim}, got shape {tuple(query.shape)}")
        loss = F_.moco_loss(query, key, self.queue.negatives(), self.temperature, backend=self.backend)
        if query.requires_grad:
            self.queue.enqueue(key)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, backend={self.backend!r}"
