r"""Random-field warp + colour transform + normalisation in plain PyTorch: the oracle.

For each output pixel p = (x, y) of an (Ho, Wo) output, with the nine parameter fields theta(p)
interpolated bilinearly from their control grid (align_corners=True; sslfast.augment.params
lists the channels and units) and c = ((Wo - 1) / 2, (Ho - 1) / 2):

  geometry  d = p - c - t(p)
            r = R(-rotate) d                    (R(a) rotates counter-clockwise as displayed)
            r_x -= tan(shear) r_y               (inverse of the shear x' = x + tan(h) y)
            q' = c + exp(-scale) r              (the inverse of: scale, shear, rotate, translate)
            q = M q' + b                        (base map: crop / resize / flip, per sample)
  sampling  bilinear at q in input pixel coordinates (pixel centres at integers), zero or
            reflect padding with the conventions of grid_sample(align_corners=False)
            (reflection about the image edges, then clamped to [0, size - 1])
  colour    on values in [0, 1] (uint8 / 255), in this order, each clamped to [0, 1]
            (torchvision's _blend): brightness x * k; contrast k x + (1 - k) mean_luma;
            saturation k x + (1 - k) grey(x); hue shift in HSV; k = max(0, 1 + v)
  output    (x - mean) / std (float), or round(255 x) (uint8)

Operations whose strength is zero are skipped (flags), which makes the all-zero augmentation an
exact identity for float input. Computation is float32 whatever the input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..augment import params as P


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255; floating -> float32 (assumed in [0, 1])."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def _blend(x, other, factor):
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _grey(r, g, b):
    wr, wg, wb = P.LUMA_WEIGHTS
    return wr * r + wg * g + wb * b


def rgb_to_hsv(r, g, b):
    """torchvision's _rgb2hsv, channel by channel."""
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def hsv_to_rgb(h, s, v):
    """torchvision's _hsv2rgb, channel by channel."""
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp_(0.0, 1.0)
    cases = [i == k for k in range(6)]

    def pick(values):
        out = torch.zeros_like(v)
        for case, value in zip(cases, values):
            out = torch.where(case, value, out)
        return out

    return pick((v, q, p, p, t, v)), pick((t, v, v, q, p, p)), pick((p, p, t, v, v, q))


def colour(x: torch.Tensor, theta: torch.Tensor, flags: int, luma: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-pixel colour transform of x (B, C, H, W) in [0, 1]; theta (B, 9, H, W)."""
    def factor(channel):
        return (1.0 + theta[:, channel:channel + 1]).clamp_min(0.0)

    if flags & P.F_BRIGHTNESS:
        x = (factor(P.BRIGHTNESS) * x).clamp_(0.0, 1.0)
    if flags & P.F_CONTRAST:
        x = _blend(x, luma.view(-1, 1, 1, 1), factor(P.CONTRAST))
    if flags & (P.F_SATURATION | P.F_HUE):
        r, g, b = x.unbind(1)
        if flags & P.F_SATURATION:
            k = factor(P.SATURATION)[:, 0]
            grey = _grey(r, g, b)
            r, g, b = _blend(r, grey, k), _blend(g, grey, k), _blend(b, grey, k)
        if flags & P.F_HUE:
            h, s, v = rgb_to_hsv(r, g, b)
            h = torch.remainder(h + theta[:, P.HUE], 1.0)
            r, g, b = hsv_to_rgb(h, s, v)
        x = torch.stack((r, g, b), 1)
    return x


def sample_positions(theta: Optional[torch.Tensor], base: torch.Tensor, flags: int, out_size: tuple) -> tuple:
    """Input pixel coordinates (qx, qy), each (B, Ho, Wo), that every output pixel reads;
    theta (B, 9, Ho, Wo) may be None when no geometric parameter is active."""
    batch = base.shape[0]
    out_h, out_w = out_size
    cx, cy = (out_w - 1) / 2.0, (out_h - 1) / 2.0
    dev = base.device
    dx = (torch.arange(out_w, device=dev, dtype=torch.float32) - cx).expand(batch, out_h, out_w)
    dy = (torch.arange(out_h, device=dev, dtype=torch.float32) - cy)[:, None].expand(batch, out_h, out_w)
    if flags & P.F_TRANSLATE:
        dx = dx - theta[:, P.TX]
        dy = dy - theta[:, P.TY]
    if flags & P.F_ROTATE:
        cos, sin = torch.cos(theta[:, P.ROTATE]), torch.sin(theta[:, P.ROTATE])
        dx, dy = cos * dx - sin * dy, sin * dx + cos * dy
    if flags & P.F_SHEAR:
        dx = dx - torch.tan(theta[:, P.SHEAR]) * dy
    if flags & P.F_SCALE:
        shrink = torch.exp(-theta[:, P.SCALE])
        dx, dy = dx * shrink, dy * shrink
    qx, qy = dx + cx, dy + cy
    a = base[:, :, None, None]
    return a[:, 0] * qx + a[:, 1] * qy + a[:, 2], a[:, 3] * qx + a[:, 4] * qy + a[:, 5]


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
) -> torch.Tensor:
    """Apply sampled parameter fields to a batch (see the module docstring).

    Args:
        images: (B, C, H, W) uint8 or float in [0, 1], C in {1, 3}.
        fields: (B, 9, rows, cols) float32 control grids (sslfast.augment.params).
        base: (B, 6) float32 base maps. out_size: (Ho, Wo).
        flags: sslfast.augment.params F_* bits.
        luma: (B,) contrast pivots (needed with F_CONTRAST).
        norm_mean, norm_std: (C,) float32 or None (no normalisation).
        out_dtype: torch.uint8 or a float dtype.

    Returns:
        (B, C, Ho, Wo) of out_dtype.
    """
    out_h, out_w = out_size
    x = to_unit_float(images)
    theta = None
    if flags & (P.F_GEOMETRY | P.F_COLOUR):
        theta = F.interpolate(fields, size=(out_h, out_w), mode="bilinear", align_corners=True) \
            if tuple(fields.shape[-2:]) != (out_h, out_w) else fields
    if not flags & P.F_NO_RESAMPLE:
        qx, qy = sample_positions(theta, base, flags, (out_h, out_w))
        height, width = x.shape[-2:]
        grid = torch.stack(((2.0 * qx + 1.0) / width - 1.0, (2.0 * qy + 1.0) / height - 1.0), dim=-1)
        padding = "reflection" if flags & P.F_REFLECT else "zeros"
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    if flags & P.F_COLOUR:
        x = colour(x, theta, flags, luma)
    if out_dtype == torch.uint8:
        return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    if norm_mean is not None:
        x = (x - norm_mean.view(1, -1, 1, 1)) / norm_std.view(1, -1, 1, 1)
    out = x.to(out_dtype)
    return out.clone() if out is images else out  # an op's output never aliases its input
