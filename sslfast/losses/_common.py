"""Constructor checks shared by the loss modules."""
from __future__ import annotations

import torch.distributed

from .. import dispatch
from .._validation import check_bool, check_choice, check_positive
from ..reference.crosscorr import MODES as CROSSCORR_MODES


def check_common(gather_distributed, backend, op: str):
    """Validate the arguments every loss takes; `backend` is kept as given (None defers to
    SSLFAST_BACKEND at call time) and must be a backend of `op`, the op the loss runs on."""
    check_bool("gather_distributed", gather_distributed)
    if gather_distributed and not torch.distributed.is_available():
        raise ValueError("gather_distributed=True needs torch.distributed, which this torch build lacks; "
                         "set gather_distributed=False")
    dispatch.check_backend_name(backend, op=op)
    return backend


def check_crosscorr_options(gather_distributed, eps, mode, backend, op: str):
    """check_common, plus the options of the cross-correlation losses."""
    check_positive("eps", eps)
    check_choice("mode", mode, CROSSCORR_MODES)
    return check_common(gather_distributed, backend, op)
