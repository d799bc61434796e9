"""Mixed Barlow Twins: Barlow Twins plus the mixed-sample regulariser (official CIFAR form)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_fraction, check_nonnegative
from ..reference.crosscorr import mix_views
from ._common import check_crosscorr_options


class MixedBarlowTwinsLoss(nn.Module):
    r"""Mixed Barlow Twins (Bandara, De Melo and Patel, 2023, https://arxiv.org/abs/2312.02151).

    The official CIFAR code (wgcban/mix-bt, main.py) standardises each embedding with the
    unbiased std, z_n = (z - mean) / sqrt(var_unbiased + eps), and with C = z0_n^T z1_n / N adds
    to the Barlow Twins loss the regulariser of the mixed input x_m = alpha x0 + (1 - alpha) x1[index]:

        loss_bt  = sum_i (1 - C_ii)^2 + lambda_param * sum_{i != j} C_ij^2
        R        = zm_n - alpha z0_n - (1 - alpha) z1_n[index]
        loss_mix = mixup_loss_scale * lambda_param * (||R^T z0_n||_F^2 + ||R^T z1_n||_F^2) / N^2

    (R^T z_k / N is the official cc_m_k - cc_m_k_gt.) In Gram form the three Gram matrices of
    z0_n, z1_n and R are computed once and shared by both terms.

    Args:
        lambda_param: off-diagonal weight, >= 0 (main.py default 0.005; the CIFAR-10 ResNet-18
            script uses 0.0078125).
        mixup_loss_scale: weight of the regulariser relative to lambda_param, >= 0 (main.py
            default 5.0; the CIFAR-10 ResNet-18 script uses 4.0).
        gather_distributed: global batch statistics and correlations over every rank; each
            rank's own index and alpha are gathered with it.
        eps: added to the variance, > 0 (the official code has none: a constant feature gives
            NaN there).
        mode: "auto" (the cheaper by the cost model), "gram" (N x N) or "cross" (D x D).
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference".

    Shape:
        z0, z1, z_mixed: (N, D), the same shape and dtype, N >= 2. index: (N,) integer.
        alpha: a float in [0, 1]. Output: scalar (float32, float64 for float64 inputs).

    Example:
        >>> import torch
        >>> from sslfast.losses import MixedBarlowTwinsLoss
        >>> loss_fn = MixedBarlowTwinsLoss()
        >>> x0, x1 = torch.randn(2, 32, 3, 8, 8).unbind(0)
        >>> x_mixed, index, alpha = MixedBarlowTwinsLoss.mix(x0, x1)
        >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 512))
        >>> loss = loss_fn(encoder(x0), encoder(x1), encoder(x_mixed), index, alpha)
        >>> loss.backward()
        >>> encoder[1].weight.grad.shape
        torch.Size([512, 192])
    """

    op = "mixed_barlow_twins"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, lambda_param: float = 5e-3, mixup_loss_scale: float = 5.0, gather_distributed: bool = False,
                 eps: float = 1e-5, mode: str = "auto", backend: Optional[str] = None):
        super().__init__()
        check_nonnegative("lambda_param", lambda_param)
        check_nonnegative("mixup_loss_scale", mixup_loss_scale)
        self.backend = check_crosscorr_options(gather_distributed, eps, mode, backend, self.op)
        self.lambda_param, self.mixup_loss_scale = float(lambda_param), float(mixup_loss_scale)
        self.gather_distributed = gather_distributed
        self.eps = float(eps)
        self.mode = mode

    @staticmethod
    def mix(x0: torch.Tensor, x1: torch.Tensor, alpha: Optional[float] = None,
            generator: Optional[torch.Generator] = None):
        """(alpha * x0 + (1 - alpha) * x1[index], index, alpha) with alpha ~ Beta(1, 1) unless
        given and index a random permutation of the batch, as the official code."""
        if alpha is not None:
            check_fraction("alpha", alpha, allow_zero=True)
        if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor) or x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must be tensors of the same shape, got "
                             f"{getattr(x0, 'shape', type(x0).__name__)} and {getattr(x1, 'shape', type(x1).__name__)}")
        return mix_views(x0, x1, alpha=alpha, generator=generator)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, z_mixed: torch.Tensor, index: torch.Tensor,
                alpha: float) -> torch.Tensor:
        return F_.mixed_barlow_twins_loss(z0, z1, z_mixed, index, alpha, self.lambda_param, self.mixup_loss_scale,
                                          eps=self.eps, mode=self.mode, gather_distributed=self.gather_distributed,
                                          backend=self.backend)

    def extra_repr(self) -> str:
        return (f"lambda_param={self.lambda_param}, mixup_loss_scale={self.mixup_loss_scale}, "
                f"gather_distributed={self.gather_distributed}, eps={self.eps}, mode={self.mode!r}, "
                f"backend={self.backend!r}")
