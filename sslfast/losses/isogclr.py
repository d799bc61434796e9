"""iSogCLR: contrastive learning with one learnable temperature per training sample."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_int
from ._common import check_common


class ISogCLRLoss(nn.Module):
    r"""iSogCLR (Qiu et al., ICML 2023, https://arxiv.org/abs/2305.11965): SimCLR-style
    contrastive learning where every training sample i has its own temperature tau_i, learned
    by distributionally robust optimisation, and a moving average s_i of its (decoupled)
    denominator, so that the global objective is optimised with small batches.

    Official source: zhqiu/contrastive-learning-iSogCLR, unimodal_exps/losses.py,
    SogCLR_DRO_Loss (run by main_supcon.py --method SimCLR --DRO_mod). Its defaults are the
    defaults here; the README's CIFAR-100 run uses tau_init=0.1, rho=0.4, beta_u=0.5, eta=0.03.

    State (buffers, one entry per training sample, saved with the state_dict):
        tau (num_samples,): the temperatures, initialised to tau_init.
        s (num_samples,): the moving-average estimate of g_i = mean_{j neg} exp(sim_ij / tau_i),
            initialised to 0 as in the official code.
        u (num_samples,): the moving average of the temperature gradient (momentum).

    Each training forward (when out0 requires grad) computes the loss with the current tau, then
    updates, for the samples of the batch (of every rank with gather_distributed=True):
    s <- (1 - gamma) s + gamma g (per view, then averaged); u <- (1 - beta_u) u + beta_u *
    clamp(d objective / d tau, +-grad_clip); tau <- clamp(tau - eta u, tau_min, tau_max).
    The full formulas and how they reduce to one similarity log-sum-exp call are in
    sslfast.reference.contrastive.isogclr_loss. The official code decays eta with an epoch
    schedule ('const', 'cosine' or 'exp'); here set `loss_fn.eta` from your scheduler.

    Args:
        num_samples: size of the training set (indices run over [0, num_samples)).
        tau_init: initial temperature, in [tau_min, tau_max].
        gamma: moving-average rate of s, in (0, 1].
        rho: the DRO radius (larger gives smaller temperatures).
        eta: step size of the temperature update (>= 0).
        beta_u: moving-average rate of the temperature gradient, in [0, 1].
        tau_min, tau_max: bounds of the temperatures (tau_min >= 1/80 keeps exp(1/tau) finite
            in float32).
        grad_clip: bound of the temperature gradient.
        gather_distributed: each rank's rows against the embeddings of every rank; the state
            stays identical on every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        out0, out1: (B, D) two views, B >= 2 over the (global) batch. index: (B,) distinct
        integer dataset indices. Output: scalar (the official surrogate, whose gradient is
        the iSogCLR gradient).

    Example:
        >>> import torch
        >>> from sslfast.losses import ISogCLRLoss
        >>> loss_fn = ISogCLRLoss(num_samples=1000, tau_init=0.1, rho=0.4, beta_u=0.5, eta=0.03)
        >>> z0 = torch.randn(16, 64, requires_grad=True)
        >>> z1 = torch.randn(16, 64, requires_grad=True)
        >>> index = torch.arange(100, 116)  # the dataset indices of the batch
        >>> loss = loss_fn(z0, z1, index)
        >>> loss.backward()
        >>> bool((loss_fn.tau[index] != 0.1).all()), bool((loss_fn.tau[:100] == 0.1).all())
        (True, True)
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, num_samples: int, tau_init: float = 0.07, gamma: float = 0.8, rho: float = 6.0,
                 eta: float = 1e-3, beta_u: float = 0.9, tau_min: float = 0.05, tau_max: float = 1.0,
                 grad_clip: float = 3.0, gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        check_int("num_samples", num_samples, minimum=1)
        F_._check_isogclr_hyperparameters(gamma=gamma, rho=rho, eta=eta, beta_u=beta_u, tau_min=tau_min,
                                          tau_max=tau_max, grad_clip=grad_clip, tau_init=tau_init)
        self.num_samples = num_samples
        self.gamma, self.rho, self.eta, self.beta_u = float(gamma), float(rho), float(eta), float(beta_u)
        self.tau_min, self.tau_max, self.grad_clip = float(tau_min), float(tau_max), float(grad_clip)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)
        self.register_buffer("tau", torch.full((num_samples,), float(tau_init)))
        self.register_buffer("s", torch.zeros(num_samples))
        self.register_buffer("u", torch.zeros(num_samples))

    def forward(self, out0: torch.Tensor, out1: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if isinstance(index, torch.Tensor) and index.device != self.tau.device:
            index = index.to(self.tau.device)
        return F_.isogclr_loss(
            out0, out1, index, self.tau, self.s, self.u, gamma=self.gamma, rho=self.rho, eta=self.eta,
            beta_u=self.beta_u, tau_min=self.tau_min, tau_max=self.tau_max, grad_clip=self.grad_clip,
            update_state=bool(isinstance(out0, torch.Tensor) and out0.requires_grad),
            gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, gamma={self.gamma}, rho={self.rho}, eta={self.eta}, "
                f"beta_u={self.beta_u}, tau_min={self.tau_min}, tau_max={self.tau_max}, "
                f"grad_clip={self.grad_clip}, gather_distributed={self.gather_distributed}, backend={self.backend!r}")
