"""Every loss of sslfast.losses as a plain function."""

# ------------------------------------------------------------------------------------------------
# Cross-correlation losses (Barlow Twins, VICReg, Mixed Barlow Twins): sslfast.reference.crosscorr,
# run by the kernel set of the backend that sslfast.ops.crosscorr registers for each loss.
# ------------------------------------------------------------------------------------------------
from typing import Optional as _CrossOptional

import torch as _ctorch

from . import _validation as _cv
from . import dispatch as _cdispatch
from . import distributed as _cdistributed
from .ops import crosscorr as _crosscorr_ops  # noqa: F401  registers the backends (imports no Triton)

_CROSSCORR_MODES = ("auto", "gram", "cross")


def _check_crosscorr_inputs(named_tensors, gather_distributed: bool, mode: str, eps) -> None:
    (first_name, first), *rest = named_tensors
    _cv.check_bool("gather_distributed", gather_distributed)
    _cv.check_choice("mode", mode, _CROSSCORR_MODES)
    _cv.check_positive("eps", eps)
    _cv.check_embeddings(first_name, first)
    for name, tensor in rest:
        _cv.check_embeddings(name, tensor)
        _cv.check_same_shape(first_name, first, name, tensor)
        _cv.check_same_dtype(first_name, first, name, tensor)
    world = _cdistributed.world_size() if gather_distributed else 1
    if first.shape[0] * world < 2:
        raise ValueError(f"{first_name} needs at least 2 samples (rows) in the batch for the batch mean and "
                         f"variance, got {first.shape[0]} (shape {tuple(first.shape)})")


def barlow_twins_loss(z0, z1, lambda_param: float = 5e-3, *, eps: float = 1e-5, mode: str = "auto",
                      gather_distributed: bool = False, backend: _CrossOptional[str] = None):
    r"""Barlow Twins loss (Zbontar et al., 2021, https://arxiv.org/abs/2103.03230).

    With z0, z1 standardised over the batch (biased variance, eps) and C = z0n^T z1n / N:
    loss = sum_i (1 - C_ii)^2 + lambda_param * sum_{i != j} C_ij^2, computed through the N x N
    Gram matrices when that is cheaper (mode="auto"). Equals lightly's BarlowTwinsLoss. See
    sslfast.losses.BarlowTwinsLoss and sslfast.reference.crosscorr.

    Example:
        >>> import torch
        >>> from sslfast.functional import barlow_twins_loss
        >>> z0, z1 = torch.randn(2, 32, 256).unbind(0)
        >>> loss = barlow_twins_loss(z0, z1, lambda_param=5e-3)
        >>> torch.allclose(loss, barlow_twins_loss(z0, z1, mode="cross"), rtol=1e-4)
        True
    """
    _check_crosscorr_inputs((("z0", z0), ("z1", z1)), gather_distributed, mode, eps)
    _cv.check_nonnegative("lambda_param", lambda_param)
    impl = _cdispatch.select("barlow_twins", z0, z1, backend=backend)
    return impl.fn(z0, z1, float(lambda_param), eps=float(eps), mode=mode, gather_distributed=gather_distributed)


def vicreg_loss(z0, z1, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0, *,
                eps: float = 1e-4, mode: str = "auto", gather_distributed: bool = False,
                backend: _CrossOptional[str] = None):
    r"""VICReg loss (Bardes et al., 2022, https://arxiv.org/abs/2105.04906).

    lambda_param * mse(z0, z1) + mu_param * (mean_i relu(1 - sqrt(var_i(z0) + eps)) + same for z1) / 2
    + nu_param * (sum_{i != j} cov_ij(z0)^2 + same for z1) / D, unbiased variance and covariance
    (over N - 1). Equals lightly's VICRegLoss. See sslfast.losses.VICRegLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import vicreg_loss
        >>> z0, z1 = torch.randn(2, 32, 256).unbind(0)
        >>> loss = vicreg_loss(z0, z1)
        >>> torch.allclose(loss, vicreg_loss(z0, z1, mode="cross"), rtol=1e-4)
        True
    """
    _check_crosscorr_inputs((("z0", z0), ("z1", z1)), gather_distributed, mode, eps)
    for name, value in (("lambda_param", lambda_param), ("mu_param", mu_param), ("nu_param", nu_param)):
        _cv.check_nonnegative(name, value)
    impl = _cdispatch.select("vicreg", z0, z1, backend=backend)
    return impl.fn(z0, z1, float(lambda_param), float(mu_param), float(nu_param), eps=float(eps), mode=mode,
                   gather_distributed=gather_distributed)


def mixed_barlow_twins_loss(z0, z1, z_mixed, index, alpha, lambda_param: float = 5e-3,
                            mixup_loss_scale: float = 5.0, *, eps: float = 1e-5, mode: str = "auto",
                            gather_distributed: bool = False, return_terms: bool = False,
                            backend: _CrossOptional[str] = None):
    r"""Mixed Barlow Twins (Bandara et al., 2023, https://arxiv.org/abs/2312.02151), CIFAR form.

    Barlow Twins on z0, z1 (standardised with the unbiased std, as the official CIFAR code) plus
    mixup_loss_scale * lambda_param * (||R^T z0n||_F^2 + ||R^T z1n||_F^2) / N^2 with
    R = z_mixed_n - alpha * z0n - (1 - alpha) * z1n[index], where z_mixed embeds the mixed input
    alpha * x0 + (1 - alpha) * x1[index] (sslfast.losses.MixedBarlowTwinsLoss.mix makes it).
    Returns the sum, or (loss_bt, loss_mix) with return_terms=True.

    Example:
        >>> import torch
        >>> from sslfast.functional import mixed_barlow_twins_loss
        >>> z0, z1, zm = torch.randn(3, 32, 256).unbind(0)
        >>> index = torch.randperm(32)
        >>> loss_bt, loss_mix = mixed_barlow_twins_loss(z0, z1, zm, index, 0.3, return_terms=True)
        >>> bool(loss_mix > 0)
        True
    """
    _check_crosscorr_inputs((("z0", z0), ("z1", z1), ("z_mixed", z_mixed)), gather_distributed, mode, eps)
    _cv.check_nonnegative("lambda_param", lambda_param)
    _cv.check_nonnegative("mixup_loss_scale", mixup_loss_scale)
    _cv.check_bool("return_terms", return_terms)
    if isinstance(alpha, _ctorch.Tensor) and alpha.dim() == 0:
        alpha = float(alpha)
    _cv.check_fraction("alpha", alpha, allow_zero=True)
    _cv.check_index("index", index, length=z0.shape[0], size=z0.shape[0], distinct=False)
    if index.device != z0.device:
        raise ValueError(f"index must be on the device of z0 ({z0.device}), got {index.device}")
    impl = _cdispatch.select("mixed_barlow_twins", z0, z1, z_mixed, backend=backend)
    return impl.fn(z0, z1, z_mixed, index, float(alpha), float(lambda_param), float(mixup_loss_scale),
                   eps=float(eps), mode=mode, gather_distributed=gather_distributed, return_terms=return_terms)
