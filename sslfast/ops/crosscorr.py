"""Backends of the cross-correlation losses "barlow_twins", "vicreg" and "mixed_barlow_twins".

Each loss is sslfast.reference.crosscorr's composition of three primitives (batch
standardisation, Gram rows, squared Frobenius norm of a cross product); a backend is a kernel set
that implements them:

  * reference: plain PyTorch (sslfast.reference.crosscorr.REFERENCE_KERNELS);
  * triton: the torch.library ops sslfast::crosscorr_standardize, sslfast::crosscorr_gram and
    sslfast::crosscorr_cross_sq (this folder), which launch the kernels of
    kernels/crosscorr_standardize.py and kernels/crosscorr_matmul.py.

Both run the same loss code, so mode="gram" | "cross" | "auto" and gather_distributed mean the
same on every backend; only the cost model's coefficients differ (each kernel set declares its
own, see TRITON_KERNELS).
"""
from __future__ import annotations

import functools

import torch

from .. import dispatch
from ..reference import crosscorr as _reference

LOSSES = {
    "barlow_twins": _reference.barlow_twins_loss,
    "vicreg": _reference.vicreg_loss,
    "mixed_barlow_twins": _reference.mixed_barlow_twins_loss,
}

for _op, _loss in LOSSES.items():
    dispatch.register(dispatch.Backend(op=_op, name="reference",
                                       fn=functools.partial(_loss, kernels=_reference.REFERENCE_KERNELS)))


# --------------------------------------------------------------------------------------------
# Triton kernel set
# --------------------------------------------------------------------------------------------

def _triton_standardize(z0, z1, eps, ddof, rescale, rows=(0, 1, 2, 3)):  # all rows come free
    from .crosscorr_standardize import crosscorr_standardize

    y0, y1, stats, _ = crosscorr_standardize(z0, z1, float(eps), int(ddof), bool(rescale))
    return y0, (y1 if z1 is not None else None), stats


def _triton_gram(x, row_start, row_end):
    from .crosscorr_gram import crosscorr_gram

    return crosscorr_gram(x, int(row_start), int(row_end))


def _triton_cross_sq(a, b, col_start, col_end):
    from .crosscorr_cross_sq import crosscorr_cross_sq

    return crosscorr_cross_sq(a, b, int(col_start), int(col_end))


# FLOPs of the quadratic part, forward + backward, in units of N^2 D (gram) and N D^2 (cross):
#   gram: the symmetric Gram costs N^2 D (upper tiles), its backward (dP + dP^T) X 2 N^2 D.
#         Barlow Twins 2 Grams -> 6; VICReg 2 x (1 + 2) -> 6; Mixed BT 3 Grams -> 9.
#   cross: forward 2 N D^2 per product (N D^2 when symmetric), backward 2 recomputation + 4
#          (da, db) per product, 2 + 2 when symmetric. Barlow Twins 8; VICReg 2 x 5 -> 10;
#          Mixed BT 3 products -> 24.
TRITON_KERNELS = _reference.CrossCorrKernels(
    name="triton",
    standardize=_triton_standardize,
    gram=_triton_gram,
    cross_sq=_triton_cross_sq,
    flops={"barlow_twins": (6, 8), "vicreg": (6, 10), "mixed_barlow_twins": (9, 24)},
    intermediates={"barlow_twins": (2, 1), "vicreg": (2, 2), "mixed_barlow_twins": (3, 3)},
)

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _triton_extra_reasons(*tensors, **_):
    reasons = []
    for t in tensors:
        if t is None:
            continue
        if t.dtype == torch.bfloat16 and t.device.type == "cpu" and dispatch.triton_interpreter():
            reasons.append("bfloat16 is computed wrongly by the Triton interpreter (test it on a GPU)")
        if t.dtype == torch.bfloat16 and t.device.type == "cuda" and torch.cuda.get_device_capability(t.device) < (8, 0):
            reasons.append("bfloat16 tensor-core products need compute capability >= 8.0")
    return reasons


for _op, _loss in LOSSES.items():
    dispatch.register(dispatch.Backend(
        op=_op, name="triton", fn=functools.partial(_loss, kernels=TRITON_KERNELS), devices=("cuda",),
        dtypes=_TRITON_DTYPES, unavailable=dispatch.triton_unavailable_reason, extra_reasons=_triton_extra_reasons))
