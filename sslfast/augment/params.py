r"""Per-sample transformation parameters of the random-field augmentation, sampled once by
shared code and applied by any backend.

Nine parameters, each a value per output pixel: theta_k(p) = g_k + f_k(p), a global part g_k
(one value per image, uniform in [-a_k, a_k], "classic jitter") plus a local part f_k, a
zero-mean squared-exponential random field of standard deviation sigma_k and length scale ell
(sslfast.augment.fields). ell -> inf makes f_k constant per image, so the SimCLR-style global
affine + colour jitter is the special case of an infinite length scale.

`RandomFieldParams.fields` stores theta on a control grid, in kernel units (channel order
FIELD_NAMES):

    0 translate_x  pixels        content moves right by t_x       user unit: fraction of W
    1 translate_y  pixels        content moves down by t_y        user unit: fraction of H
    2 rotate       radians       counter-clockwise as displayed   user unit: degrees
    3 scale        log factor    content grows by exp(s)          user unit: log factor
    4 shear        radians       x' = x + tan(h) y                user unit: degrees
    5 brightness   v             x * max(0, 1 + v)
    6 contrast     v             blend with the mean luminance, factor max(0, 1 + v)
    7 saturation   v             blend with the pixel's grey, factor max(0, 1 + v)
    8 hue          turns         HSV hue + v (mod 1), torchvision's adjust_hue convention

The brightness/contrast/saturation/hue conventions are torchvision's (ColorJitter with factor
1 + v), so a constant field reproduces `torchvision.transforms.v2.functional.adjust_*`.

`flags` (an int, a Python value fixed by the configuration, never read from a tensor) says which
parameters are active, so backends skip the others at compile time (Triton constexprs) or by a
uniform branch (numba, CUDA), and tells them about padding and resampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from . import fields as _fields

FIELD_NAMES = ("translate_x", "translate_y", "rotate", "scale", "shear", "brightness", "contrast", "saturation", "hue")
NUM_FIELDS = len(FIELD_NAMES)
TX, TY, ROTATE, SCALE, SHEAR, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(NUM_FIELDS)

# User-facing strength names (translate drives both translation fields).
STRENGTH_NAMES = ("translate", "rotate", "scale", "shear", "brightness", "contrast", "saturation", "hue")

# flags: which parameters are active, and how to sample the input.
F_TRANSLATE = 1 << 0
F_ROTATE = 1 << 1
F_SCALE = 1 << 2
F_SHEAR = 1 << 3
F_BRIGHTNESS = 1 << 4
F_CONTRAST = 1 << 5
F_SATURATION = 1 << 6
F_HUE = 1 << 7
F_REFLECT = 1 << 8  # reflect padding (else zeros)
F_NO_RESAMPLE = 1 << 9  # output pixel p reads input pixel p: no warp, identity base, same size
F_GEOMETRY = F_TRANSLATE | F_ROTATE | F_SCALE | F_SHEAR
F_COLOUR = F_BRIGHTNESS | F_CONTRAST | F_SATURATION | F_HUE
F_NEEDS_RGB = F_SATURATION | F_HUE
STRENGTH_FLAGS = {
    "translate": F_TRANSLATE, "rotate": F_ROTATE, "scale": F_SCALE, "shear": F_SHEAR,
    "brightness": F_BRIGHTNESS, "contrast": F_CONTRAST, "saturation": F_SATURATION, "hue": F_HUE,
}
STRENGTH_CHANNELS = {
    "translate": (TX, TY), "rotate": (ROTATE,), "scale": (SCALE,), "shear": (SHEAR,),
    "brightness": (BRIGHTNESS,), "contrast": (CONTRAST,), "saturation": (SATURATION,), "hue": (HUE,),
}
LENGTH_UNITS = ("image", "pixels")
# Grey weights of torchvision's rgb_to_grayscale (ITU-R 601-2 luma, as PIL).
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass
class RandomFieldParams:
    """What every backend applies: parameter fields on a control grid plus a per-sample base map.

    Attributes:
        fields: (B, 9, rows, cols) float32 parameter values (kernel units, module docstring) on a
            control grid spanning the output image (align_corners=True).
        flags: active parameters (F_* bits; F_REFLECT and F_NO_RESAMPLE are added at apply time).
        base: (B, 6) float32 [a11, a12, b1, a21, a22, b2] mapping output pixel coordinates (after
            the field warp) to input pixel coordinates: crop, resize and flip. None: identity
            when the output has the input's size, else a plain resize.
        out_size: (Ho, Wo) output size; None: the input's size.
    """

    fields: torch.Tensor
    flags: int
    base: Optional[torch.Tensor] = None
    out_size: Optional[tuple] = None


@dataclass(frozen=True)
class RandomFieldConfig:
    """Strengths of the random-field augmentation (validated; see RandomFieldAugment)."""

    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    length_scale: float = 0.25
    length_unit: str = "image"
    p: float = 1.0
    sampler: str = "fast"
    global_jitter: Mapping = field(default_factory=dict)

    def __post_init__(self):
        from .._validation import check_choice, check_nonnegative

        for name in STRENGTH_NAMES:
            object.__setattr__(self, name, check_nonnegative(name, getattr(self, name)))
        if not isinstance(self.global_jitter, Mapping):
            raise TypeError(f"global_jitter must be a mapping of strength name to range, got {type(self.global_jitter).__name__}")
        jitter = {}
        for name, amp in self.global_jitter.items():
            check_choice("global_jitter key", name, STRENGTH_NAMES)
            jitter[name] = check_nonnegative(f"global_jitter[{name!r}]", amp)
        if jitter.get("shear", 0.0) >= 90.0:
            raise ValueError(f"global_jitter['shear'] must be < 90 degrees, got {jitter['shear']}")
        if jitter.get("hue", 0.0) > 0.5:
            raise ValueError(f"global_jitter['hue'] must be <= 0.5 turns, got {jitter['hue']}")
        object.__setattr__(self, "global_jitter", jitter)
        object.__setattr__(self, "length_scale", _fields._check_length_scale(self.length_scale))
        check_choice("length_unit", self.length_unit, LENGTH_UNITS)
        p = check_nonnegative("p", self.p)
        if p > 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        object.__setattr__(self, "p", p)
        _fields._check_sampler(self.sampler)

    def local_strengths(self) -> dict:
        return {name: getattr(self, name) for name in STRENGTH_NAMES if getattr(self, name) > 0}

    def flags(self) -> int:
        active = set(self.local_strengths()) | {k for k, v in self.global_jitter.items() if v > 0}
        bits = 0
        for name in active:
            bits |= STRENGTH_FLAGS[name]
        return bits

    def length_scale_px(self, height: int, width: int) -> float:
        if self.length_unit == "pixels":
            return self.length_scale
        return self.length_scale * min(height, width)


def kernel_units(name: str, value: float, height: int, width: int) -> tuple:
    """User strength -> kernel-unit amplitude per channel of `name` (module docstring)."""
    if name == "translate":
        return value * width, value * height
    if name in ("rotate", "shear"):
        return (math.radians(value),)
    return (value,)


def sample_params(
    config: RandomFieldConfig,
    batch: int,
    height: int,
    width: int,
    *,
    device=None,
    generator: Optional[torch.Generator] = None,
) -> RandomFieldParams:
    """Sample every image's parameter fields for an output of (height, width) pixels.

    The random numbers are drawn in a fixed order (local fields, global jitter, the
    probability-p coin) from `generator` on `device`, so one seed gives one set of fields
    whatever backend applies them.
    """
    local = config.local_strengths()
    jitter = {k: v for k, v in config.global_jitter.items() if v > 0}
    ell = config.length_scale_px(height, width)
    if local:
        rows, cols = _fields.control_grid_shape(height, width, ell, config.sampler)
    else:
        rows, cols = 1, 1
    fields = torch.zeros(batch, NUM_FIELDS, rows, cols, device=device)
    if local:
        channels = [(c, amp) for name, value in local.items()
                    for c, amp in zip(STRENGTH_CHANNELS[name], kernel_units(name, value, height, width))]
        unit = _fields.sample_field_grid(batch * len(channels), height, width, ell, sampler=config.sampler,
                                         generator=generator, device=device)
        unit = unit.view(batch, len(channels), rows, cols)
        amps = torch.tensor([a for _, a in channels], dtype=torch.float32, device=device)
        fields[:, [c for c, _ in channels]] = unit * amps[None, :, None, None]
    if jitter:
        channels = [(c, amp) for name, value in jitter.items()
                    for c, amp in zip(STRENGTH_CHANNELS[name], kernel_units(name, value, height, width))]
        amps = torch.tensor([a for _, a in channels], dtype=torch.float32, device=device)
        u = torch.rand(batch, len(channels), generator=generator, device=device)
        fields[:, [c for c, _ in channels]] += ((2 * u - 1) * amps)[:, :, None, None]
    if config.p < 1.0:
        keep = torch.rand(batch, generator=generator, device=device) < config.p
        fields *= keep[:, None, None, None].to(fields.dtype)
    return RandomFieldParams(fields=fields, flags=config.flags(), out_size=(height, width))


# ----------------------------------------------------------------------------------------------
# Base maps (crop / resize / flip) and the contrast pivot, shared by every backend.


def identity_base(batch: int, device=None) -> torch.Tensor:
    base = torch.zeros(batch, 6, device=device)
    base[:, 0] = 1.0
    base[:, 4] = 1.0
    return base


def crop_base(boxes: torch.Tensor, out_size: tuple, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Base maps that resize the boxes (B, 4) = (top, left, height, width) in input pixels to
    out_size (pixel-centre convention of align_corners=False), mirrored where `flip` is True.

    Output pixel x reads input x0 + (x + 0.5) * w / Wo - 0.5 (mirrored: x -> Wo - 1 - x)."""
    out_h, out_w = out_size
    boxes = boxes.to(torch.float32)
    top, left, h, w = boxes.unbind(1)
    sy, sx = h / out_h, w / out_w
    base = torch.zeros(boxes.shape[0], 6, device=boxes.device)
    base[:, 0] = sx
    base[:, 2] = left + 0.5 * sx - 0.5
    base[:, 4] = sy
    base[:, 5] = top + 0.5 * sy - 0.5
    if flip is not None:
        mirrored = left + w - 0.5 * sx - 0.5
        base[:, 0] = torch.where(flip, -sx, sx)
        base[:, 2] = torch.where(flip, mirrored, base[:, 2])
    return base


def resolve_base(params: RandomFieldParams, batch: int, in_size: tuple, device) -> tuple:
    """(base (B, 6), out_size, is_identity, whole_input) for params.base / params.out_size:
    whole_input says the base map covers the whole input (identity or plain resize)."""
    out_size = tuple(params.out_size) if params.out_size is not None else tuple(in_size)
    if params.base is not None:
        return params.base.to(device=device, dtype=torch.float32).contiguous(), out_size, False, False
    if out_size == tuple(in_size):
        return identity_base(batch, device), out_size, True, True
    boxes = torch.tensor([[0.0, 0.0, float(in_size[0]), float(in_size[1])]], device=device).expand(batch, 4)
    return crop_base(boxes, out_size), out_size, False, True


def luma_mean(images: torch.Tensor, base: torch.Tensor, out_size: tuple, full_image: bool) -> torch.Tensor:
    """(B,) float32 mean luminance of the input region each output covers: the contrast pivot.

    torchvision's adjust_contrast blends towards the mean grey of the image it is given; here
    that image is the crop the base map selects (its bounding box in whole input pixels),
    measured on the source before the warp and the colour operations that precede contrast.
    uint8 images count as value / 255.
    """
    unit = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    if full_image:
        # The mean of the grey image is the grey of the channel means: one reduction per
        # channel and no full-size temporaries (exact integer sums for uint8).
        if images.dtype == torch.uint8:
            means = images.sum(dim=(2, 3), dtype=torch.int64).to(torch.float64) / (images.shape[2] * images.shape[3])
        else:
            means = images.to(torch.float32).mean(dim=(2, 3)).to(torch.float64)
        if images.shape[1] == 3:
            means = means @ torch.tensor(LUMA_WEIGHTS, dtype=torch.float64, device=images.device)
        else:
            means = means[:, 0]
        return (means * unit).to(torch.float32)
    if images.shape[1] == 3:
        grey = sum(w * images[:, c].to(torch.float32) for c, w in enumerate(LUMA_WEIGHTS))
    else:
        grey = images[:, 0].to(torch.float32)
    batch, height, width = grey.shape
    out_h, out_w = out_size

    def span(scale, offset, n_out, n_in):
        ends = torch.stack((offset, scale * (n_out - 1) + offset), 1)
        lo = ends.min(1).values - 0.5 * scale.abs() + 0.5
        hi = ends.max(1).values + 0.5 * scale.abs() + 0.5
        lo = lo.round().clamp(0, n_in - 1)
        hi = torch.maximum(hi.round().clamp(0, n_in), lo + 1)
        idx = torch.arange(n_in, device=grey.device, dtype=torch.float32)
        return ((idx[None] >= lo[:, None]) & (idx[None] < hi[:, None])).to(torch.float32)

    rows = span(base[:, 4], base[:, 5], out_h, height)
    cols = span(base[:, 0], base[:, 2], out_w, width)
    total = torch.einsum("bhw,bh,bw->b", grey, rows, cols)
    return total / (rows.sum(1) * cols.sum(1)) * unit
