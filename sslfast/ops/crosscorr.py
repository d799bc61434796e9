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

