"""Barlow Twins loss (lightly-compatible constructor)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_nonnegative
from ._common import check_crosscorr_options


class BarlowTwinsLoss(nn.Module):
    r"""Barlow Twins loss (Zbontar et al., 2021, https://arxiv.org/abs/2103.03230).

    Each feature is standardised over the batch, z_n = (z - mean) / sqrt(var + eps) with the
    biased variance (BatchNorm1d(affine=False) in training mode), and with
    C = z0_n^T z1_n / N (D x D):

        loss = sum_i (1 - C_ii)^2 + lambda_param * sum_{i != j} C_ij^2

    Lightly's BarlowTwinsLoss number for number (default lambda_param = 5e-3; the official code
    uses 0.0051). With N < D the loss and its gradients come from the N x N Gram matrices
    (||C||_F^2 = <z0_n z0_n^T, z1_n z1_n^T>_F / N^2, O(N^2 D) instead of O(N D^2)); `mode`
    chooses (sslfast.reference.crosscorr documents the cost model and the numerics).

    Args:
        lambda_param: weight of the off-diagonal (redundancy reduction) term, >= 0.
        gather_distributed: standardise and correlate over the batch of every rank (global mean
            and variance, as the official code's SyncBatchNorm). The loss equals the
            single-process loss on the concatenated batch and gradients are exact after DDP's
            averaging. (lightly instead averages per-rank matrices standardised per rank.)
        eps: added to the variance, > 0 (BatchNorm1d's 1e-5).
        mode: "auto" (the cheaper by the cost model), "gram" (N x N) or "cross" (D x D).
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference".

    Shape:
        z0, z1: (N, D), the same shape and dtype, N >= 2 (over all ranks when gathering).
        Output: scalar, float32 for float16/bfloat16/float32 inputs, float64 for float64.

    Example:
        >>> import torch
        >>> from sslfast.losses import BarlowTwinsLoss
        >>> loss_fn = BarlowTwinsLoss(lambda_param=5e-3)
        >>> z0 = torch.randn(64, 1024, requires_grad=True)
        >>> z1 = torch.randn(64, 1024, requires_grad=True)
        >>> loss = loss_fn(z0, z1)
        >>> loss.backward()
        >>> z0.grad.shape
        torch.Size([64, 1024])
    """

    op = "barlow_twins"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False, eps: float = 1e-5,
                 mode: str = "auto", backend: Optional[str] = None):
        super().__init__()
        check_nonnegative("lambda_param", lambda_param)
        self.backend = check_crosscorr_options(gather_distributed, eps, mode, backend, self.op)
        self.lambda_param = float(lambda_param)
        self.gather_distributed = gather_distributed
        self.eps = float(eps)
        self.mode = mode

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return F_.barlow_twins_loss(z0, z1, self.lambda_param, eps=self.eps, mode=self.mode,
                                    gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"lambda_param={self.lambda_param}, gather_distributed={self.gather_distributed}, "
                f"eps={self.eps}, mode={self.mode!r}, backend={self.backend!r}")
