"""Decoupled contrastive learning: DCLLoss and its von Mises-Fisher weighted form DCLWLoss."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_positive
from ._common import check_common


class DCLLoss(nn.Module):
    r"""Decoupled contrastive loss (Yeh et al., 2022, https://arxiv.org/abs/2110.06848, Eq. 6).

    NT-Xent without the positive pair in the denominator. With z the L2-normalised rows of both
    views (2B rows), s_ij = <z_i, z_j> / T, p(i) the other view of row i and w_i the weight of
    its positive (1 without weight_fn):

        loss = mean_i [ -w_i s_{i p(i)} + log sum_{j not a view of i's sample} exp(s_ij) ]

    Number for number lightly's DCLLoss (lightly/loss/dcl_loss.py), including
    weight_fn(z0, z1) for the rows of view 0 and weight_fn(z1, z0) for those of view 1, on the
    normalised embeddings, with gradients flowing through it. With gather_distributed=True,
    weight_fn sees this rank's rows. Memory O(B*D + B*chunk).

    Args:
        temperature: T > 0.
        weight_fn: optional callable (z0, z1) -> (B,) weights of the positive term.
        gather_distributed: each rank's rows against the embeddings of every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        out0, out1: (B, D), B >= 2 over the (global) batch. Output: scalar.

    Example:
        >>> import torch
        >>> from sslfast.losses import DCLLoss
        >>> loss_fn = DCLLoss(temperature=0.1)
        >>> z0, z1 = torch.randn(16, 64), torch.randn(16, 64)
        >>> loss_fn(z0, z1).shape
        torch.Size([])
        >>> weighted = DCLLoss(weight_fn=lambda z0, z1: torch.sum((z0 - z1) ** 2, dim=1))
        >>> weighted(z0, z1).shape
        torch.Size([])
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, temperature: float = 0.1,
                 weight_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(f"weight_fn must be callable (z0, z1) -> (B,) weights or None, got {type(weight_fn).__name__}")
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        return F_.dcl_loss(out0, out1, self.temperature, self.weight_fn, gather_distributed=self.gather_distributed,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, backend={self.backend!r}"


class DCLWLoss(nn.Module):
    r"""DCL with the negative von Mises-Fisher weighting (Yeh et al., 2022): lightly's DCLWLoss.

    DCLLoss with w_i = 2 - N * softmax_i(<z0_i, z1_i> / sigma) over the batch, detached. With
    gather_distributed=True the softmax runs over the global batch (N = world * B), so that the
    loss equals the single-process loss on the concatenated batch (lightly uses the local batch).

    Args:
        temperature: T > 0.
        sigma: > 0, the temperature of the weighting softmax.
        gather_distributed: each rank's rows against the embeddings of every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        out0, out1: (B, D), B >= 2 over the (global) batch. Output: scalar.

    Example:
        >>> import torch
        >>> from sslfast.losses import DCLWLoss
        >>> loss_fn = DCLWLoss(temperature=0.1, sigma=0.5)
        >>> loss_fn(torch.randn(16, 64), torch.randn(16, 64)).shape
        torch.Size([])
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.sigma = check_positive("sigma", sigma)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        return F_.dclw_loss(out0, out1, self.temperature, self.sigma, gather_distributed=self.gather_distributed,
                            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, sigma={self.sigma}, gather_distributed={self.gather_distributed}, "
                f"backend={self.backend!r}")
