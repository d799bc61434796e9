"""sslfast op `similarity_lse`: row-wise masked log-sum-exp of scaled similarities.

The math, the exclusion rule and the gradients are documented in
sslfast.reference.similarity. Every contrastive loss (NT-Xent, CLIP/InfoNCE, DCL, MoCo,
iSogCLR) is this op plus O(N*D) work on the positives.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import dispatch
from ..reference import similarity as _reference

OP = "similarity_lse"


def _reference_impl(q, k, scale, self_index, exclude_period, normalize):
    if normalize:
        q = F.normalize(q, dim=1)
        k = q if k is None else F.normalize(k, dim=1)
    elif k is None:
        k = q
    return _reference.similarity_lse(q, k, scale, self_index, exclude_period)


dispatch.register(dispatch.Backend(op=OP, name="reference", fn=_reference_impl))


def similarity_lse(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    scale,
    self_index: Optional[torch.Tensor] = None,
    exclude_period: int = 0,
    *,
    normalize: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """lse_i = log sum_{j kept} exp(scale_i <q_i, k_j>), on the backend dispatch picks.

    `k=None` means k is q (the symmetric NT-Xent case, which a kernel may exploit).
    With `normalize=True` rows of q and k are L2-normalised first (fused where the backend can).
    Returns (Nq,) float32 (float64 for float64 inputs).
    """
    impl = dispatch.select(OP, q, k, backend=backend)
    return impl.fn(q, k, scale, self_index, exclude_period, normalize)
