"""Every loss of sslfast.losses as a plain function."""

# ------------------------------------------------------------------------------------------------
# Contrastive losses: sslfast.reference.contrastive, served through the dispatched similarity_lse
# op (sslfast.ops.similarity_lse), so a fused backend runs the same math.
# ------------------------------------------------------------------------------------------------
import functools as _functools
from typing import Callable as _Callable, Optional as _Optional

import torch as _torch

from . import _validation as _v
from . import dispatch as _dispatch
from . import distributed as _distributed
from .reference import contrastive as _contrastive

__all__ = ["clip_loss", "dcl_loss", "dclw_loss", "info_nce_loss", "isogclr_loss", "moco_loss", "nt_xent_loss"]


def _similarity_lse(backend):
    from .ops.similarity_lse import similarity_lse

    return _functools.partial(similarity_lse, backend=_dispatch.check_backend_name(backend))


def _global_batch(batch: int, gather_distributed: bool) -> int:
    return batch * (_distributed.world_size() if gather_distributed else 1)


def _check_views(views, *, min_global_batch: int, gather_distributed: bool, names=None) -> tuple:
    names = names or [f"out{i}" for i in range(len(views))]
    first = _v.check_embeddings(names[0], views[0])
    for name, view in zip(names[1:], views[1:]):
        _v.check_embeddings(name, view)
        _v.check_same_shape(names[0], first, name, view)
        _v.check_same_dtype(names[0], first, name, view)
    _v.check_bool("gather_distributed", gather_distributed)
    total = _global_batch(first.shape[0], gather_distributed)
    if total < min_global_batch:
        raise ValueError(f"{names[0]} needs a batch of at least {min_global_batch} samples for this loss "
                         f"(every anchor needs a negative), got {total} (shape {tuple(first.shape)})")
    return views


def nt_xent_loss(out0, out1, *more_views, temperature: float = 0.5, gather_distributed: bool = False,
                 backend: _Optional[str] = None):
    r"""NT-Xent (SimCLR) loss over two or more views; multi-positive (SupCon L_out) for V > 2.

    loss = mean_i [ log sum_{j != i} exp(<z_i, z_j> / T) - mean_{p in P(i)} <z_i, z_p> / T ]
    over the V*B L2-normalised rows z, P(i) the other views of row i's sample. Equals lightly's
    NTXentLoss for two views. See sslfast.reference.contrastive.nt_xent_loss and
    sslfast.losses.NTXentLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import nt_xent_loss
        >>> z0, z1, z2 = torch.randn(3, 16, 32).unbind(0)
        >>> nt_xent_loss(z0, z1, temperature=0.5).shape
        torch.Size([])
        >>> bool(nt_xent_loss(z0, z1, z2) > 0)
        True
    """
    views = _check_views((out0, out1) + tuple(more_views), min_global_batch=1,
                         gather_distributed=gather_distributed)
    temperature = _v.check_positive("temperature", temperature)
    return _contrastive.nt_xent_loss(*views, temperature=temperature, gather_distributed=gather_distributed,
                                     lse=_similarity_lse(backend))


def dcl_loss(out0, out1, temperature: float = 0.1, weight_fn: _Optional[_Callable] = None, *,
             gather_distributed: bool = False, backend: _Optional[str] = None):
    r"""Decoupled contrastive loss (lightly's DCLLoss): NT-Xent without the positive in the
    denominator, the positive term optionally weighted by weight_fn(z0, z1) -> (B,).
    See sslfast.reference.contrastive.dcl_loss and sslfast.losses.DCLLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import dcl_loss
        >>> z0, z1 = torch.randn(2, 16, 32).unbind(0)
        >>> dcl_loss(z0, z1, temperature=0.1).shape
        torch.Size([])
    """
    _check_views((out0, out1), min_global_batch=2, gather_distributed=gather_distributed)
    temperature = _v.check_positive("temperature", temperature)
    if weight_fn is not None and not callable(weight_fn):
        raise TypeError(f"weight_fn must be callable (z0, z1) -> (B,) weights or None, got {type(weight_fn).__name__}")
    checked_weight_fn = None if weight_fn is None else _checked_weight_fn(weight_fn, out0.shape[0])
    return _contrastive.dcl_loss(out0, out1, temperature, checked_weight_fn, gather_distributed=gather_distributed,
                                 lse=_similarity_lse(backend))


def _checked_weight_fn(weight_fn, batch: int):
    def wrapped(z0, z1):
        weights = weight_fn(z0, z1)
        if not isinstance(weights, _torch.Tensor) or tuple(weights.shape) != (batch,):
            got = tuple(weights.shape) if isinstance(weights, _torch.Tensor) else type(weights).__name__
            raise ValueError(f"weight_fn must return a tensor of shape ({batch},), one weight per sample, got {got}")
        return weights

    return wrapped


def dclw_loss(out0, out1, temperature: float = 0.1, sigma: float = 0.5, *, gather_distributed: bool = False,
              backend: _Optional[str] = None):
    r"""DCL with the negative von Mises-Fisher weights w_i = 2 - B * softmax_i(<z0_i, z1_i> / sigma)
    (lightly's DCLWLoss). See sslfast.reference.contrastive.dclw_loss and sslfast.losses.DCLWLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import dclw_loss
        >>> z0, z1 = torch.randn(2, 16, 32).unbind(0)
        >>> dclw_loss(z0, z1, temperature=0.1, sigma=0.5).shape
        torch.Size([])
    """
    _check_views((out0, out1), min_global_batch=2, gather_distributed=gather_distributed)
    temperature = _v.check_positive("temperature", temperature)
    sigma = _v.check_positive("sigma", sigma)
    return _contrastive.dclw_loss(out0, out1, temperature, sigma, gather_distributed=gather_distributed,
                                  lse=_similarity_lse(backend))


def _check_scale(name: str, scale, like: _torch.Tensor):
    if isinstance(scale, _torch.Tensor):
        if scale.dim() != 0:
            raise ValueError(f"{name} must be a float or a 0-d tensor, got shape {tuple(scale.shape)}")
        if not scale.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {scale.dtype}")
        if scale.device != like.device:
            raise ValueError(f"{name} must be on the embeddings' device {like.device}, got {scale.device}")
        _v.check_finite(name, scale)
        if _v.value_checks_enabled() and not bool(scale > 0):
            raise ValueError(f"{name} must be > 0, got {float(scale)}")
        return scale
    return _v.check_positive(name, scale)


def info_nce_loss(query, key, temperature: float = 0.07, *, symmetric: bool = True, normalize: bool = True,
                  gather_distributed: bool = False, backend: _Optional[str] = None):
    r"""InfoNCE with in-batch negatives between two sets (query i's positive is key i):
    mean_i [ log sum_j exp(<q_i, k_j> / T) - <q_i, k_i> / T ], averaged with the key-to-query
    direction when `symmetric`. See sslfast.reference.contrastive.info_nce_loss.

    Example:
        >>> import torch
        >>> from sslfast.functional import info_nce_loss
        >>> q, k = torch.randn(2, 16, 32).unbind(0)
        >>> info_nce_loss(q, k, temperature=0.07).shape
        torch.Size([])
    """
    _check_views((query, key), min_global_batch=1, gather_distributed=gather_distributed, names=["query", "key"])
    temperature = _v.check_positive("temperature", temperature)
    _v.check_bool("symmetric", symmetric)
    _v.check_bool("normalize", normalize)
    return _contrastive.info_nce_loss(query, key, 1.0 / temperature, symmetric=symmetric, normalize=normalize,
                                      gather_distributed=gather_distributed, lse=_similarity_lse(backend))


def clip_loss(image_features, text_features, logit_scale, *, normalize: bool = True,
              gather_distributed: bool = False, backend: _Optional[str] = None):
    r"""CLIP's symmetric InfoNCE in open_clip's convention (ClipLoss): `logit_scale` is the
    multiplier itself (open_clip passes logit_scale.exp()), a float or a differentiable 0-d tensor.
    See sslfast.reference.contrastive.clip_loss and sslfast.losses.CLIPLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import clip_loss
        >>> image, text = torch.randn(2, 16, 32).unbind(0)
        >>> clip_loss(image, text, logit_scale=1 / 0.07).shape
        torch.Size([])
    """
    _check_views((image_features, text_features), min_global_batch=1, gather_distributed=gather_distributed,
                 names=["image_features", "text_features"])
    logit_scale = _check_scale("logit_scale", logit_scale, image_features)
    _v.check_bool("normalize", normalize)
    return _contrastive.clip_loss(image_features, text_features, logit_scale, normalize=normalize,
                                  gather_distributed=gather_distributed, lse=_similarity_lse(backend))


def moco_loss(query, key, negatives, temperature: float = 0.2, *, backend: _Optional[str] = None):
    r"""MoCo's InfoNCE: each query against its key and a shared set of negatives (the queue),
    mean_i [ log(exp(<q_i, k_i>/T) + sum_m exp(<q_i, n_m>/T)) - <q_i, k_i>/T ] on L2-normalised
    rows. The queue is kept by sslfast.losses.MoCoLoss. See sslfast.reference.contrastive.moco_loss.

    Example:
        >>> import torch
        >>> from sslfast.functional import moco_loss
        >>> q, k = torch.randn(2, 8, 32).unbind(0)
        >>> queue = torch.nn.functional.normalize(torch.randn(64, 32), dim=1)
        >>> moco_loss(q, k, queue, temperature=0.2).shape
        torch.Size([])
    """
    _check_views((query, key), min_global_batch=1, gather_distributed=False, names=["query", "key"])
    _v.check_tensor("negatives", negatives, ndim=2, min_size0=1, what="negatives (rows)")
    _v.check_same_dim("query", query, "negatives", negatives)
    temperature = _v.check_positive("temperature", temperature)
    return _contrastive.moco_loss(query, key, negatives, temperature, lse=_similarity_lse(backend))


def isogclr_loss(out0, out1, index, tau, s, u, *, gamma: float = 0.8, rho: float = 6.0, eta: float = 1e-3,
                 beta_u: float = 0.9, tau_min: float = 0.05, tau_max: float = 1.0, grad_clip: float = 3.0,
                 update_state: bool = True, gather_distributed: bool = False, backend: _Optional[str] = None):
    r"""iSogCLR (per-sample learnable temperatures, moving-average denominators). `tau`, `s` and
    `u` are (num_samples,) state vectors indexed by the dataset indices `index` (B,), updated in
    place when `update_state` (as torch.optim's functional optimisers update their state).
    See sslfast.reference.contrastive.isogclr_loss and sslfast.losses.ISogCLRLoss.

    Example:
        >>> import torch
        >>> from sslfast.functional import isogclr_loss
        >>> z0, z1 = torch.randn(2, 8, 32).unbind(0)
        >>> tau, s, u = torch.full((100,), 0.07), torch.zeros(100), torch.zeros(100)
        >>> loss = isogclr_loss(z0, z1, torch.arange(8), tau, s, u)
        >>> bool((s[:8] > 0).all()), bool((s[8:] == 0).all())
        (True, True)
    """
    _check_views((out0, out1), min_global_batch=2, gather_distributed=gather_distributed)
    for name, state in (("tau", tau), ("s", s), ("u", u)):
        # no finiteness scan: the state is as long as the dataset and only this loss writes it
        if not isinstance(state, _torch.Tensor) or not state.is_floating_point():
            got = state.dtype if isinstance(state, _torch.Tensor) else type(state).__name__
            raise TypeError(f"{name} must be a floating tensor of per-sample state, got {got}")
        if state.dim() != 1 or state.shape != tau.shape or state.device != out0.device:
            raise ValueError(f"{name} must be 1-D with the shape of tau {tuple(tau.shape)}, on {out0.device}, "
                             f"got shape {tuple(state.shape)} on {state.device}")
    _v.check_index("index", index, length=out0.shape[0], size=tau.shape[0])
    _check_isogclr_hyperparameters(gamma=gamma, rho=rho, eta=eta, beta_u=beta_u, tau_min=tau_min, tau_max=tau_max,
                                   grad_clip=grad_clip)
    _v.check_bool("update_state", update_state)
    return _contrastive.isogclr_loss(out0, out1, index, tau, s, u, gamma=gamma, rho=rho, eta=eta, beta_u=beta_u,
                                     tau_min=tau_min, tau_max=tau_max, grad_clip=grad_clip,
                                     update_state=update_state, gather_distributed=gather_distributed,
                                     lse=_similarity_lse(backend))


# exp(1 / tau) must stay finite in the float32 state s (|cos| <= 1, so g_i <= exp(1 / tau_i))
_ISOGCLR_MIN_TAU = 1.0 / 80.0


def _check_isogclr_hyperparameters(*, gamma, rho, eta, beta_u, tau_min, tau_max, grad_clip, tau_init=None):
    _v.check_fraction("gamma", gamma)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or rho != rho or abs(rho) == float("inf"):
        raise TypeError(f"rho must be a finite real number, got {rho!r}")
    _v.check_nonnegative("eta", eta)
    _v.check_fraction("beta_u", beta_u, allow_zero=True)
    _v.check_positive("tau_min", tau_min)
    _v.check_positive("tau_max", tau_max)
    _v.check_positive("grad_clip", grad_clip)
    if tau_min < _ISOGCLR_MIN_TAU:
        raise ValueError(f"tau_min must be >= {_ISOGCLR_MIN_TAU} so that exp(1 / tau) fits the float32 "
                         f"moving average s, got {tau_min}")
    if tau_max < tau_min:
        raise ValueError(f"tau_max must be >= tau_min ({tau_min}), got {tau_max}")
    if tau_init is not None:
        _v.check_positive("tau_init", tau_init)
        if not tau_min <= tau_init <= tau_max:
            raise ValueError(f"tau_init must lie in [tau_min, tau_max] = [{tau_min}, {tau_max}], got {tau_init}")


# ------------------------------------------------------------------------------------------------
# Cross-correlation losses (Barlow Twins, VICReg, Mixed Barlow Twins): sslfast.reference.crosscorr,
# run by the kernel set of the backend that sslfast.ops.crosscorr registers for each loss.
# ------------------------------------------------------------------------------------------------
from .ops import crosscorr as _crosscorr_ops  # noqa: E402,F401  registers the backends (imports no Triton)
from .reference.crosscorr import MODES as _CROSSCORR_MODES  # noqa: E402

__all__ += ["barlow_twins_loss", "mixed_barlow_twins_loss", "vicreg_loss"]


def _check_crosscorr_inputs(named_tensors, gather_distributed: bool, mode: str, eps) -> None:
    (first_name, first), *rest = named_tensors
    _v.check_bool("gather_distributed", gather_distributed)
    _v.check_choice("mode", mode, _CROSSCORR_MODES)
    _v.check_positive("eps", eps)
    _v.check_embeddings(first_name, first)
    for name, tensor in rest:
        _v.check_embeddings(name, tensor)
        _v.check_same_shape(first_name, first, name, tensor)
        _v.check_same_dtype(first_name, first, name, tensor)
    if _global_batch(first.shape[0], gather_distributed) < 2:
        raise ValueError(f"{first_name} needs at least 2 samples (rows) in the batch for the batch mean and "
                         f"variance, got {first.shape[0]} (shape {tuple(first.shape)})")


def barlow_twins_loss(z0, z1, lambda_param: float = 5e-3, *, eps: float = 1e-5, mode: str = "auto",
                      gather_distributed: bool = False, backend: _Optional[str] = None):
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
    _v.check_nonnegative("lambda_param", lambda_param)
    impl = _dispatch.select("barlow_twins", z0, z1, backend=backend)
    return impl.fn(z0, z1, float(lambda_param), eps=float(eps), mode=mode, gather_distributed=gather_distributed)


def vicreg_loss(z0, z1, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0, *,
                eps: float = 1e-4, mode: str = "auto", gather_distributed: bool = False,
                backend: _Optional[str] = None):
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
        _v.check_nonnegative(name, value)
    impl = _dispatch.select("vicreg", z0, z1, backend=backend)
    return impl.fn(z0, z1, float(lambda_param), float(mu_param), float(nu_param), eps=float(eps), mode=mode,
                   gather_distributed=gather_distributed)


def mixed_barlow_twins_loss(z0, z1, z_mixed, index, alpha, lambda_param: float = 5e-3,
                            mixup_loss_scale: float = 5.0, *, eps: float = 1e-5, mode: str = "auto",
                            gather_distributed: bool = False, return_terms: bool = False,
                            backend: _Optional[str] = None):
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
    _v.check_nonnegative("lambda_param", lambda_param)
    _v.check_nonnegative("mixup_loss_scale", mixup_loss_scale)
    _v.check_bool("return_terms", return_terms)
    if isinstance(alpha, _torch.Tensor) and alpha.dim() == 0:
        alpha = float(alpha)
    _v.check_fraction("alpha", alpha, allow_zero=True)
    _v.check_index("index", index, length=z0.shape[0], size=z0.shape[0], distinct=False)
    if index.device != z0.device:
        raise ValueError(f"index must be on the device of z0 ({z0.device}), got {index.device}")
    impl = _dispatch.select("mixed_barlow_twins", z0, z1, z_mixed, backend=backend)
    return impl.fn(z0, z1, z_mixed, index, float(alpha), float(lambda_param), float(mixup_loss_scale),
                   eps=float(eps), mode=mode, gather_distributed=gather_distributed, return_terms=return_terms)
