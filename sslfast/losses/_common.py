"""Constructor checks shared by the contrastive loss modules."""
from __future__ import annotations

import torch.distributed

from .. import dispatch
from .._validation import check_bool


def check_common(gather_distributed, backend):
    """Validate the arguments every contrastive loss takes; `backend` is kept as given (None
    defers to SSLFAST_BACKEND at call time)."""
    check_bool("gather_distributed", gather_distributed)
    if gather_distributed and not torch.distributed.is_available():
        raise ValueError("gather_distributed=True needs torch.distributed, which this torch build lacks; "
                         "set gather_distributed=False")
    dispatch.check_backend_name(backend)
    return backend
