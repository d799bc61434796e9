"""NT-Xent (SimCLR), with lightly's optional memory bank (MoCo-style negatives)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_int, check_positive
from ._common import check_common
from ._queue import NegativeQueue


def _parse_memory_bank_size(memory_bank_size) -> tuple:
    if isinstance(memory_bank_size, bool):
        raise TypeError(f"memory_bank_size must be 0 or a (num_negatives, dim) tuple, got {memory_bank_size!r}")
    if isinstance(memory_bank_size, int):
        if memory_bank_size == 0:
            return ()
        raise ValueError(f"memory_bank_size={memory_bank_size} does not give the feature dimension: pass "
                         f"({memory_bank_size}, dim), or 0 to disable the memory bank (lightly's convention)")
    try:
        size = tuple(memory_bank_size)
    except TypeError:
        raise TypeError(f"memory_bank_size must be 0 or a (num_negatives, dim) tuple, "
                        f"got {type(memory_bank_size).__name__}") from None
    if size == (0,):
        return ()
    if len(size) != 2:
        raise ValueError(f"memory_bank_size must be 0 or a (num_negatives, dim) tuple, got {memory_bank_size!r}")
    check_int("memory_bank_size[0] (num_negatives)", size[0], minimum=0)
    check_int("memory_bank_size[1] (dim)", size[1], minimum=1)
    return () if size[0] == 0 else size


class NTXentLoss(nn.Module):
    r"""NT-Xent, the SimCLR loss (Chen et al., 2020, https://arxiv.org/abs/2002.05709).

    With the V*B L2-normalised embeddings z of all views, s_ij = <z_i, z_j> / T and P(i) the
    other views of row i's sample:

        loss = mean_i [ log sum_{j != i} exp(s_ij) - mean_{p in P(i)} s_ip ]

    For two views this is lightly's NTXentLoss number for number; for V > 2 views it is the
    multi-positive form of SupCon (Khosla et al., 2020, L_out), which reduces to NT-Xent at V = 2.
    Memory stays O(B*D + B*chunk): the similarity matrix is never materialised
    (sslfast.reference.contrastive.nt_xent_loss).

    With a memory bank (lightly's semantics, the MoCo loss of He et al., 2020) the rows of out0
    are the anchors, out1 their positives and the bank the only negatives:
    loss = mean_i [ log(exp(s_i) + sum_m exp(<z0_i, n_m> / T)) - s_i ] with s_i = <z0_i, z1_i> / T;
    the normalised out1 is then enqueued, when out0 requires grad (as lightly does).

    Args:
        temperature: T > 0.
        memory_bank_size: 0 (SimCLR), or (num_negatives, dim) for a bank of negatives.
        gather_distributed: gather the embeddings of every rank as negatives (each rank's rows
            against the global batch; gradients are exact after DDP's averaging). With a memory
            bank, the keys of every rank are enqueued instead.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the
            backend of the similarity log-sum-exp op.

    Shape:
        out0, out1, *more_views: (B, D), the same shape and dtype. Output: scalar (float32 for
        half-precision inputs).

    Example:
        >>> import torch
        >>> from sslfast.losses import NTXentLoss
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> z0 = torch.randn(32, 128, requires_grad=True)
        >>> z1 = torch.randn(32, 128, requires_grad=True)
        >>> loss = loss_fn(z0, z1)
        >>> loss.backward()
        >>> z0.grad.shape
        torch.Size([32, 128])
        >>> moco_style = NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))
        >>> moco_style(z0, z1).shape
        torch.Size([])
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, temperature: float = 0.5, memory_bank_size: Union[int, Sequence[int]] = 0,
                 gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)
        size = _parse_memory_bank_size(memory_bank_size)
        self.memory_bank = NegativeQueue(*size, gather_distributed=gather_distributed) if size else None

    def forward(self, out0: torch.Tensor, out1: torch.Tensor, *more_views: torch.Tensor) -> torch.Tensor:
        if self.memory_bank is None:
            return F_.nt_xent_loss(out0, out1, *more_views, temperature=self.temperature,
                                   gather_distributed=self.gather_distributed, backend=self.backend)
        if more_views:
            raise ValueError(f"NTXentLoss with a memory bank takes two views (out0, out1), got {2 + len(more_views)}")
        if isinstance(out0, torch.Tensor) and out0.dim() == 2 and out0.shape[-1] != self.memory_bank.dim:
            raise ValueError(f"out0 must have feature dimension {self.memory_bank.dim} (memory_bank_size), "
                             f"got shape {tuple(out0.shape)}")
        loss = F_.moco_loss(out0, out1, self.memory_bank.negatives(), self.temperature, backend=self.backend)
        if out0.requires_grad:
            self.memory_bank.enqueue(out1)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, backend={self.backend!r}"
