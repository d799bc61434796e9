"""VICReg loss (lightly-compatible constructor)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_nonnegative
from ._common import check_crosscorr_options


class VICRegLoss(nn.Module):
    r"""VICReg loss (Bardes, Ponce and LeCun, 2022, https://arxiv.org/abs/2105.04906).

    With x = z - mean_n z per branch, v_i = sum_n x_ni^2 / (N - 1) and cov = x^T x / (N - 1):

        loss = lambda_param * mse(z0, z1)
             + mu_param * (mean_i relu(1 - sqrt(v_i(z0) + eps)) + mean_i relu(1 - sqrt(v_i(z1) + eps))) / 2
             + nu_param * (sum_{i != j} cov_ij(z0)^2 + sum_{i != j} cov_ij(z1)^2) / D

    The official code (facebookresearch/vicreg) and lightly's VICRegLoss number for number. The
    covariance term is computed through the N x N Gram matrix x x^T when that is cheaper
    (||x^T x||_F^2 = ||x x^T||_F^2); `mode` chooses (sslfast.reference.crosscorr).

    Args:
        lambda_param: invariance weight (official sim_coeff), >= 0.
        mu_param: variance weight (std_coeff), >= 0.
        nu_param: covariance weight (cov_coeff), >= 0.
        gather_distributed: every term over the batch of every rank (as the official
            FullGatherLayer); the loss equals the single-process loss on the concatenated batch
            (the invariance term included) and gradients are exact after DDP's averaging.
        eps: added to the variance under the square root of the hinge, > 0.
        mode: "auto" (the cheaper by the cost model), "gram" (N x N) or "cross" (D x D).
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference".

    Shape:
        z0, z1: (N, D), the same shape and dtype, N >= 2 (over all ranks when gathering).
        Output: scalar, float32 for float16/bfloat16/float32 inputs, float64 for float64.

    Example:
        >>> import torch
        >>> from sslfast.losses import VICRegLoss
        >>> loss_fn = VICRegLoss()
        >>> z0 = torch.randn(64, 1024, requires_grad=True)
        >>> z1 = torch.randn(64, 1024, requires_grad=True)
        >>> loss_fn(z0, z1).backward()
        >>> z1.grad.shape
        torch.Size([64, 1024])
    """

    op = "vicreg"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 gather_distributed: bool = False, eps: float = 1e-4, mode: str = "auto",
                 backend: Optional[str] = None):
        super().__init__()
        for name, value in (("lambda_param", lambda_param), ("mu_param", mu_param), ("nu_param", nu_param)):
            check_nonnegative(name, value)
        self.backend = check_crosscorr_options(gather_distributed, eps, mode, backend, self.op)
        self.lambda_param, self.mu_param, self.nu_param = float(lambda_param), float(mu_param), float(nu_param)
        self.gather_distributed = gather_distributed
        self.eps = float(eps)
        self.mode = mode

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return F_.vicreg_loss(z0, z1, self.lambda_param, self.mu_param, self.nu_param, eps=self.eps,
                              mode=self.mode, gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"lambda_param={self.lambda_param}, mu_param={self.mu_param}, nu_param={self.nu_param}, "
                f"gather_distributed={self.gather_distributed}, eps={self.eps}, mode={self.mode!r}, "
                f"backend={self.backend!r}")
