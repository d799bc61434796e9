"""InfoNCE between two sets of embeddings with in-batch negatives, fixed temperature."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F_
from .._validation import check_bool, check_positive
from ._common import check_common


class InfoNCELoss(nn.Module):
    r"""InfoNCE (van den Oord et al., 2018, https://arxiv.org/abs/1807.03748) between queries
    and keys, the positive of query i being key i and every other key a negative:

        loss_q = mean_i [ log sum_j exp(<q_i, k_j> / T) - <q_i, k_i> / T ]

    averaged with the key-to-query direction when `symmetric` (the CLIP form; for a learnable
    logit scale use CLIPLoss). Rows are L2-normalised first when `normalize`. Memory
    O(B*D + B*chunk).

    Args:
        temperature: T > 0.
        symmetric: average the query-to-key and key-to-query losses.
        normalize: L2-normalise the rows first.
        gather_distributed: each rank's rows against the keys (and queries) of every rank.
        backend: "auto" (default, or SSLFAST_BACKEND), "triton" or "reference": the backend of the
            similarity log-sum-exp op.

    Shape:
        query, key: (B, D). Output: scalar.

    Example:
        >>> import torch
        >>> from sslfast.losses import InfoNCELoss
        >>> loss_fn = InfoNCELoss(temperature=0.1, symmetric=False)
        >>> loss_fn(torch.randn(16, 64), torch.randn(16, 64)).shape
        torch.Size([])
    """

    op = "similarity_lse"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(self, temperature: float = 0.07, symmetric: bool = True, normalize: bool = True,
                 gather_distributed: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.symmetric = check_bool("symmetric", symmetric)
        self.normalize = check_bool("normalize", normalize)
        self.gather_distributed = gather_distributed
        self.backend = check_common(gather_distributed, backend, self.op)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return F_.info_nce_loss(query, key, self.temperature, symmetric=self.symmetric, normalize=self.normalize,
                                gather_distributed=self.gather_distributed, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, normalize={self.normalize}, "
                f"gather_distributed={self.gather_distributed}, backend={self.backend!r}")
