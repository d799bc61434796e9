"""sslfast op `random_field`: apply sampled random-field parameters to a batch of images
(field interpolation, warp, bilinear gather, colour transform, normalisation).

The math is in sslfast.reference.random_field; parameter sampling is shared code
(sslfast.augment.params), so backends differ only in how they apply the same fields:

    cuda       csrc/random_field.cu, torch.ops.sslfast.random_field_warp (CUDA tensors)
    triton     kernels/random_field.py (CUDA tensors; CPU tensors under TRITON_INTERPRET=1
               when forced)
    numba      sslfast/augment/_numba_warp.py (CPU tensors)
    reference  pure PyTorch: interpolate + grid_sample + colour ops (any device)

`torch.ops.sslfast.random_field_apply` is the torch.library op (with a fake implementation,
so torch.compile can trace a model that augments inside its graph); its `backend` argument is
the name `dispatch.select` resolved. There is no backward: it augments data.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import dispatch
from ..augment import params as P
from ..reference import random_field as _reference

OP = "random_field"
_MAX_GRID_Z = 65535  # CUDA's limit on the grid's third dimension (the batch here)


def _cuda_unavailable() -> Optional[str]:
    reason = dispatch.cuda_extension_unavailable_reason()
    if reason:
        return reason
    if not hasattr(torch.ops.sslfast, "random_field_warp"):
        return "sslfast._C was built without random_field_warp (rebuild: pip install --no-build-isolation .)"
    return None


def _reference_impl(images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype):
    return _reference.random_field_apply(images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype)


def _numba_impl(images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype):
    import numba
    import numpy as np

    from ..augment._numba_warp import random_field_warp

    batch, channels = images.shape[:2]
    x = images.detach()
    if x.dtype not in (torch.uint8, torch.float32):
        x = x.to(torch.float32)
    out_u8 = out_dtype == torch.uint8
    out = torch.empty(batch, channels, *out_size, dtype=torch.uint8 if out_u8 else torch.float32)
    if out.numel() == 0:
        return out.to(out_dtype)
    unused = np.zeros(max(channels, 1), dtype=np.float32)

    def array(t):
        return unused if t is None else t.detach().to(torch.float32).contiguous().numpy()

    # A flat view of the images' memory from their first element, indexed with the strides.
    span = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride()))
    flat = torch.as_strided(x, (span,), (1,)).numpy()
    random_field_warp(
        flat, tuple(x.stride()), x.shape[2], x.shape[3], 255.0 if x.dtype == torch.uint8 else 1.0,
        array(fields), array(base), array(luma), array(norm_mean), array(norm_std),
        int(flags), norm_mean is not None, out.view(-1).numpy(), tuple(out.shape), out_u8, numba.get_num_threads(),
    )
    return out if out.dtype == out_dtype else out.to(out_dtype)


def _triton_impl(images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype):
    import triton

    from ..kernels.random_field import random_field_warp_kernel

    batch, channels, height, width = images.shape
    out_h, out_w = out_size
    out = torch.empty(batch, channels, out_h, out_w, dtype=out_dtype, device=images.device)
    if out.numel() == 0:
        return out
    fields = fields.to(torch.float32).contiguous()
    grid_h, grid_w = fields.shape[-2:]
    fy = (grid_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    fx = (grid_w - 1) / (out_w - 1) if out_w > 1 else 0.0
    flag = lambda bit: bool(flags & bit)  # noqa: E731
    for b0 in range(0, batch, _MAX_GRID_Z):
        b1 = min(batch, b0 + _MAX_GRID_Z)
        x, o, f, m = images[b0:b1], out[b0:b1], fields[b0:b1], base[b0:b1]
        pivot = luma[b0:b1] if luma is not None else f

        def grid(meta):
            return triton.cdiv(out_w, meta["BLOCK_W"]), triton.cdiv(out_h, meta["BLOCK_H"]), b1 - b0

        random_field_warp_kernel[grid](
            x, o, f, m, pivot,
            norm_mean if norm_mean is not None else f, norm_std if norm_std is not None else f,
            height, width, out_h, out_w, grid_h, grid_w,
            *x.stride(), fy, fx,
            C=channels,
            TRANSLATE=flag(P.F_TRANSLATE), ROTATE=flag(P.F_ROTATE), SCALE=flag(P.F_SCALE), SHEAR=flag(P.F_SHEAR),
            BRIGHTNESS=flag(P.F_BRIGHTNESS), CONTRAST=flag(P.F_CONTRAST),
            SATURATION=flag(P.F_SATURATION), HUE=flag(P.F_HUE),
            REFLECT=flag(P.F_REFLECT), RESAMPLE=not flag(P.F_NO_RESAMPLE), NORMALIZE=norm_mean is not None,
            IN_U8=images.dtype == torch.uint8, OUT_U8=out_dtype == torch.uint8,
        )
    return out


def _cuda_impl(images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype):
    return torch.ops.sslfast.random_field_warp(
        images, fields.to(torch.float32).contiguous(), base, out_size[0], out_size[1], int(flags),
        luma, norm_mean, norm_std, out_dtype)


dispatch.register(dispatch.Backend(op=OP, name="cuda", fn=_cuda_impl, devices=("cuda",), unavailable=_cuda_unavailable))
dispatch.register(dispatch.Backend(op=OP, name="triton", fn=_triton_impl, devices=("cuda",),
                                   unavailable=dispatch.triton_unavailable_reason))
dispatch.register(dispatch.Backend(op=OP, name="numba", fn=_numba_impl, devices=("cpu",),
                                   unavailable=dispatch.numba_unavailable_reason))
dispatch.register(dispatch.Backend(op=OP, name="reference", fn=_reference_impl))


@torch.library.custom_op("sslfast::random_field_apply", mutates_args=())
def random_field_apply_op(
    images: torch.Tensor,
    fields: torch.Tensor,
    base: torch.Tensor,
    out_height: int,
    out_width: int,
    flags: int,
    luma: Optional[torch.Tensor],
    norm_mean: Optional[torch.Tensor],
    norm_std: Optional[torch.Tensor],
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    impl = dispatch.backends(OP)[backend]
    return impl.fn(images, fields, base, (out_height, out_width), flags, luma, norm_mean, norm_std, out_dtype)


@random_field_apply_op.register_fake
def _(images, fields, base, out_height, out_width, flags, luma, norm_mean, norm_std, out_dtype, backend):
    return images.new_empty((images.shape[0], images.shape[1], out_height, out_width), dtype=out_dtype)


def random_field_apply(
    images: torch.Tensor,
    fields: torch.Tensor,
    base: torch.Tensor,
    out_size: tuple,
    flags: int,
    luma: Optional[torch.Tensor] = None,
    norm_mean: Optional[torch.Tensor] = None,
    norm_std: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float32,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Run the op on the backend dispatch picks for `images` (arguments already validated by
    sslfast.augment; see sslfast.reference.random_field.random_field_apply for their meaning)."""
    impl = dispatch.select(OP, images, backend=backend)
    return random_field_apply_op(images, fields, base, int(out_size[0]), int(out_size[1]), int(flags),
                                 luma, norm_mean, norm_std, out_dtype, impl.name)
