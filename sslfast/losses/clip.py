"""CLIP's symmetric InfoNCE with a learnable logit scale."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_bool, check_positive
from ._common import check_common


class CLIPLoss(nn.Module):
    r"""CLIP's contrastive loss (Radford et al., 2021, https://arxiv.org/abs/2103.00020) in
    open_clip's convention (mlfoundations/open_clip, src/open_clip/loss.py, ClipLoss).

    With I, T the (L2-normalised) image and text embeddings and scale = exp(logit_scale):

        loss = ( CE(scale * I T^T, diag) + CE(scale * T I^T, diag) ) / 2

    `logit_scale` is a learnable parameter initialised to log(1 / init_temperature) (open_clip:
    log(1 / 0.07), src/open_clip/model.py) and clamped to [0, log(max_logit_scale)] where it is
    used (open_clip clamps the parameter in place after each optimiser step, to ln 100; clamping
    at use gives the same scale and no gradient beyond the bounds, without mutating parameters in
    forward). With gather_distributed=True this is ClipLoss(local_loss=True,
    gather_with_grad=True): each rank's rows against all gathered columns. Memory
    O(B*D + B*chunk).

    Args:
        init_temperature: the initial 1 / scale, in [1 / max_logit_scale, 1].
        learnable: whether logit_scale is an nn.Parameter (else a buffer).
        max_logit_scale: the largest scale (open_clip: 100).
        normalize: L2-normalise the embeddings first (open_clip's models do it before the loss;
            normalising twice changes nothing, gradients included).
        gather_distributed: each rank's rows against the embeddings of every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        image_features, text_features: (B, D). Output: scalar.

    Example:
        >>> import torch
        >>> from sslfast.losses import CLIPLoss
        >>> loss_fn = CLIPLoss()
        >>> round(loss_fn.scale().item(), 4)  # 1 / 0.07
        14.2857
        >>> loss = loss_fn(torch.randn(16, 64), torch.randn(16, 64))
        >>> loss.backward()
        >>> loss_fn.logit_scale.grad is not None
        True
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, max_logit_scale: float = 100.0,
                 normalize: bool = True, gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        init_temperature = check_positive("init_temperature", init_temperature)
        self.max_logit_scale = check_positive("max_logit_scale", max_logit_scale)
        if self.max_logit_scale < 1:
            raise ValueError(f"max_logit_scale must be >= 1 (logit_scale is clamped to [0, log(max)]), "
                             f"got {max_logit_scale}")
        if not 1.0 / self.max_logit_scale <= init_temperature <= 1.0:
            # the clamp in scale() would hold the scale at a bound, where it gets no gradient
            raise ValueError(f"init_temperature must lie in [1 / max_logit_scale, 1] = "
                             f"[{1.0 / self.max_logit_scale:g}, 1], got {init_temperature}")
        self.normalize = check_bool("normalize", normalize)
        check_bool("learnable", learnable)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)
        init = torch.tensor(math.log(1.0 / init_temperature))
        if learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped to [1, max_logit_scale], differentiable inside the bounds."""
        return self.logit_scale.clamp(0.0, math.log(self.max_logit_scale)).exp()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if image_features.dtype == torch.float64 else torch.float32
        return F_.clip_loss(image_features, text_features, self.scale().to(dtype), normalize=self.normalize,
                            gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"max_logit_scale={self.max_logit_scale}, normalize={self.normalize}, "
                f"gather_distributed={self.gather_distributed}, backend={self.backend!r}")
