r"""Geometry of L2-normalised embeddings on the hypersphere.

* Alignment and uniformity (Wang & Isola, ICML 2020, arXiv 2005.10242; their reference code,
  github.com/SsnL/align_uniform):

      align(x, y)   = mean_i ||x_i - y_i||_2^alpha                     (alpha = 2)
      uniform(x)    = log mean_{i<j} exp(-t ||x_i - x_j||_2^2)          (t = 2)

  for positive pairs (x_i, y_i) after L2 normalisation. Lower is better for both. The reference
  code builds all N(N-1)/2 pairwise distances with torch.pdist; here they come in row blocks of
  one Gram matrix through ||x_i - x_j||^2 = 2 - 2 <x_i, x_j> (unit vectors), so memory is
  O(N * chunk) and N = 65536 embeddings cost 64 MB, not 8 GB.

* Embedding std (SimSiam, Chen & He, CVPR 2021, Sec. 4.1): the per-dimension standard deviation
  of the L2-normalised outputs, averaged over dimensions. A healthy embedding sits near
  1/sqrt(D); a collapsed one goes to 0.

All three are differentiable (alignment and uniformity are also used as losses).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._validation import check_embeddings, check_positive, check_same_shape

_BLOCK_ELEMENTS = 1 << 24


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, *, normalize: bool = True) -> torch.Tensor:
    """Mean distance^alpha between positive pairs (rows of x and y) on the unit sphere.

    Args:
        x, y: (N, D) embeddings of two views of the same N samples.
        alpha: the exponent (paper: 2).
        normalize: L2-normalise the rows first (set False if they already are).

    Returns:
        0-d tensor; 0 when every pair coincides, 4 at most (antipodal pairs, alpha = 2).

    Example:
        >>> import torch
        >>> from sslfast.metrics import alignment
        >>> x = torch.randn(100, 16)
        >>> float(alignment(x, 3 * x)) < 1e-12  # same directions
        True
        >>> round(float(alignment(x, -x)), 4)
        4.0
    """
    check_embeddings("x", x)
    check_embeddings("y", y)
    check_same_shape("x", x, "y", y)
    alpha = check_positive("alpha", alpha)
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0, *, normalize: bool = True) -> torch.Tensor:
    """Log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over all pairs i < j.

    Args:
        x: (N, D) embeddings, N >= 2.
        t: the potential's scale (paper: 2).
        normalize: L2-normalise the rows first.

    Returns:
        0-d tensor in [-4t, 0]; lower means more uniformly spread.

    Example:
        >>> import torch
        >>> from sslfast.metrics import uniformity
        >>> x = torch.randn(1, 8).repeat(50, 1)  # collapsed: every pair at distance 0
        >>> abs(float(uniformity(x))) < 1e-5
        True
        >>> float(uniformity(torch.randn(2000, 64))) < -3.5
        True
    """
    check_embeddings("x", x, min_batch=2)
    t = check_positive("t", t)
    if normalize:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    chunk = max(1, _BLOCK_ELEMENTS // n)
    cols = torch.arange(n, device=x.device)
    block_lse = []
    for r0 in range(0, n - 1, chunk):
        r1 = min(r0 + chunk, n - 1)
        sq_dist = (2.0 - 2.0 * (xc[r0:r1] @ xc.T)).clamp_min(0.0)
        upper = cols[None, :] > torch.arange(r0, r1, device=x.device)[:, None]
        block_lse.append(torch.logsumexp((-t * sq_dist).masked_fill(~upper, float("-inf")).flatten(), dim=0))
    num_pairs = n * (n - 1) / 2
    return torch.logsumexp(torch.stack(block_lse), dim=0) - math.log(num_pairs)


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of the L2-normalised rows (collapse signal).

    Args:
        z: (N, D) embeddings, N >= 2.

    Returns:
        0-d tensor: about 1/sqrt(D) for a well spread embedding, 0 for a collapsed one.

    Example:
        >>> import torch
        >>> from sslfast.metrics import embedding_std
        >>> z = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
        >>> abs(float(embedding_std(z)) * 64 ** 0.5 - 1) < 0.02
        True
        >>> float(embedding_std(torch.ones(10, 64)))
        0.0
    """
    check_embeddings("z", z, min_batch=2)
    return F.normalize(z, dim=1).std(dim=0).mean()
