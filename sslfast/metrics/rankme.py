r"""RankMe: the effective rank of an embedding matrix (Garrido et al., ICML 2023, arXiv 2210.02885).

    sigma = singular values of Z (N, D)
    p_k   = sigma_k / ||sigma||_1 + eps
    RankMe(Z) = exp(-sum_k p_k log p_k)

The eps (1e-7, the paper's value) sits outside the division, as in the paper's eq. (1). The SVD
runs in float64 on the CPU copy of Z: it costs O(N D min(N, D)) and is evaluated once per epoch,
and fp32 SVDs of nearly collapsed embeddings are where the metric matters most and where fp32
loses the small singular values. The paper computes it on 25600 embeddings; fewer samples than
dimensions caps the rank at N.
"""
from __future__ import annotations

import torch

from .._validation import check_embeddings, check_positive


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of ``embeddings`` (the RankMe score; higher is better, at most min(N, D)).

    Args:
        embeddings: (N, D) floating tensor, N >= 2.
        eps: added to the normalised singular values before the entropy (paper: 1e-7).

    Returns:
        The score as a Python float.

    Example:
        >>> import torch
        >>> from sslfast.metrics import rankme
        >>> z = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
        >>> 28 < rankme(z) <= 32
        True
        >>> round(rankme(z[:, :1].repeat(1, 32)), 3)  # a collapsed embedding has rank ~1
        1.0
    """
    check_embeddings("embeddings", embeddings, min_batch=2)
    eps = check_positive("eps", eps)
    sigma = torch.linalg.svdvals(embeddings.detach().to("cpu", torch.float64))
    total = sigma.sum()
    if total <= 0:
        raise ValueError("embeddings is all zeros: RankMe is undefined (every singular value is 0)")
    p = sigma / total + eps
    return float(torch.exp(-(p * p.log()).sum()))
