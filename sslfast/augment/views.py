r"""SSL views of a batch on its own device: SimCLR / BYOL / Barlow Twins recipes, multi-crop,
with random fields that can be switched on.

One fused kernel call per view does random resized crop + flip + random-field warp + colour
jitter + grayscale (+ normalisation when nothing follows): the crop and flip are the per-image
base map of the warp (sslfast.augment.params.crop_base), the colour jitter is the global part
of the brightness/contrast/saturation/hue fields, and grayscale is saturation factor 0
(max(0, 1 + v) with v = -1), which is exactly torchvision's rgb_to_grayscale. Gaussian blur and
solarisation, when a recipe asks for them, run afterwards as batched torch ops (a per-image
separable convolution and a where), then the normalisation.

Recipes are those of the loader, one definition for both (sslfast.data.recipes: RECIPES,
Recipe, ViewSpec; SimCLR, BYOL and Barlow Twins as in the papers and lightly's transforms):
view v uses the recipe's view v (cycled); local crops (multi-crop) use its `local` view, by
default the first view with crop scale sslfast.data.recipes.LOCAL_SCALE. A ViewSpec's `size`
is honoured; its mean/std are not: SSLViews normalises every view with its own `mean`, `std`.

Deviations from torchvision, by design (one fused pass): the colour operations run in the fixed
order brightness, contrast, saturation (or grey), hue instead of a random order; contrast pivots
on the mean grey of the crop in the source image; the crop is resampled bilinearly without
antialiasing; the blur kernel spans +-3 sigma_max (13 taps) with reflect padding.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as V
from .. import dispatch
from ..data.recipes import RECIPES, Recipe, ViewSpec, get_recipe
from . import params as P
from .random_field import (IMAGENET_MEAN, IMAGENET_STD, PADDINGS, PRESETS, RandomFieldAugment,
                           _check_output, _generator_for, apply_random_fields, check_images)


_BLUR_TAPS_PER_SIGMA = 3.0


def random_resized_crop_boxes(batch: int, height: int, width: int, scale: tuple, ratio: tuple, *,
                              generator=None, device=None, attempts: int = 10) -> torch.Tensor:
    """(B, 4) float32 boxes (top, left, h, w) drawn like torchvision's RandomResizedCrop:
    up to `attempts` (area, log-ratio) candidates per image, the first that fits wins, else the
    centre crop clamped to the ratio range. Vectorised, on `device`, no host sync."""
    area = height * width
    u = torch.rand(batch, attempts, 4, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=1, keepdim=True)
    pick = lambda t: t.gather(1, first)[:, 0]  # noqa: E731
    w, h, uy, ux = pick(w), pick(h), pick(u[..., 2]), pick(u[..., 3])
    top = torch.floor(uy * (height - h + 1)).clamp_max(height - h)
    left = torch.floor(ux * (width - w + 1)).clamp_max(width - w)
    # No candidate fits: torchvision's fallback, the centre crop clamped to the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    boxes = torch.stack((top, left, h, w), dim=1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=boxes.dtype, device=boxes.device)
    return torch.where(ok[:, None], boxes, fallback)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-image separable Gaussian blur of x (B, C, H, W) with sigma (B,) (0: identity),
    reflect padding, 2 * radius + 1 taps."""
    batch, channels, height, width = x.shape
    if x.numel() == 0:  # a grouped convolution needs at least one group
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    safe = sigma.clamp_min(1e-6)[:, None]
    taps = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    taps = taps / taps.sum(1, keepdim=True)
    taps = torch.where(sigma[:, None] > 0, taps, (offsets[None] == 0).to(taps.dtype))
    taps = taps.repeat_interleave(channels, 0)  # one kernel per (image, channel) group
    flat = x.reshape(1, batch * channels, height, width)

    def mode(size):  # reflect needs the padding to be shorter than the side
        return "reflect" if size > radius else "replicate"

    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode(width)), taps[:, None, None, :],
                    groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode=mode(height)), taps[:, None, :, None],
                    groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


class SSLViews(nn.Module):
    r"""Make the views of an SSL recipe from a batch, on the batch's device.

    Args:
        recipe: "simclr", "byol", "barlowtwins", a Recipe, a ViewSpec or a sequence of ViewSpec
            (cycled over views): sslfast.data.recipes, the loader's recipes.
        views: number of global views (2 for the usual two-view methods).
        crop_size: side of the global views.
        local_crops: number of extra local views (multi-crop); 0 for none.
        local_crop_size: side of the local views.
        local_crop_scale: crop scale range of the local views (None: the recipe's local view,
            by default LOCAL_SCALE).
        random_fields: None or False (off), True ("mild"), a preset name ("mild", "medium", "strong"), a dict of
            RandomFieldAugment strength arguments, or a RandomFieldAugment whose strengths,
            length scale, p and sampler are used (its padding/normalisation are not).
        mean, std: output normalisation (ImageNet by default; None for values in [0, 1]).
        generator: torch.Generator on the images' device, an int seed, or None.
        padding: "reflect" or "zeros" for the warp.
        out_dtype: float dtype of the views.
        backend: backend of the fused kernel ("auto" by default).

    Shape:
        images (B, C, H, W), C = 3, uint8 or float in [0, 1]; returns a list of `views` tensors
        (B, 3, crop_size, crop_size) then `local_crops` tensors (B, 3, local_crop_size, ...).

    Example:
        >>> import torch
        >>> from sslfast.augment import SSLViews
        >>> images = torch.randint(0, 256, (4, 3, 48, 40), dtype=torch.uint8)
        >>> make_views = SSLViews("byol", crop_size=32, local_crops=2, local_crop_size=16,
        ...                       random_fields="mild", generator=0)
        >>> [tuple(v.shape) for v in make_views(images)]
        [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16)]
    """

    op = "random_field"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(
        self,
        recipe: Union[str, Recipe, ViewSpec, Sequence[ViewSpec]] = "simclr",
        views: int = 2,
        crop_size: int = 224,
        local_crops: int = 0,
        local_crop_size: int = 96,
        local_crop_scale: Optional[tuple] = None,
        random_fields: Union[None, str, dict, RandomFieldAugment] = None,
        mean: Optional[Sequence[float]] = IMAGENET_MEAN,
        std: Optional[Sequence[float]] = IMAGENET_STD,
        generator=None,
        padding: str = "reflect",
        out_dtype: torch.dtype = torch.float32,
        backend: Optional[str] = None,
    ):
        super().__init__()
        self.recipe = get_recipe(recipe)
        self.views = V.check_int("views", views, minimum=1)
        self.crop_size = V.check_int("crop_size", crop_size, minimum=1)
        self.local_crops = V.check_int("local_crops", local_crops, minimum=0)
        self.local_crop_size = V.check_int("local_crop_size", local_crop_size, minimum=1)
        self.local_view = self.recipe.local_view(self.local_crop_size)
        if local_crop_scale is not None:
            lo, hi = (float(v) for v in local_crop_scale)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"local_crop_scale must satisfy 0 < lo <= hi <= 1, got {local_crop_scale}")
            self.local_view = self.local_view.replace(scale=(lo, hi))
        if out_dtype == torch.uint8:
            raise ValueError("SSLViews returns float views: out_dtype must be a float dtype, got torch.uint8")
        self.mean, self.std = _check_output(mean, std, out_dtype)
        self.out_dtype = out_dtype
        self.padding = V.check_choice("padding", padding, PADDINGS)
        self.backend = dispatch.check_backend_name(backend, op=self.op) if backend is not None else None
        if random_fields is None or random_fields is False:
            self.field_config = None
        elif random_fields is True or isinstance(random_fields, str):  # True: "mild", as DaliSSLLoader
            self.field_config = RandomFieldAugment.preset("mild" if random_fields is True else random_fields).config
        elif isinstance(random_fields, dict):
            self.field_config = RandomFieldAugment(**random_fields).config
        elif isinstance(random_fields, RandomFieldAugment):
            self.field_config = random_fields.config
        else:
            raise TypeError("random_fields must be None/False, True (the 'mild' preset), a preset name, a dict of "
                            "strengths or a RandomFieldAugment, "
                            f"got {type(random_fields).__name__}")
        if isinstance(generator, bool) or not (generator is None or isinstance(generator, (torch.Generator, int))):
            raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
        self.generator = generator
        self._seeded = {}

    def _view(self, images, spec: ViewSpec, gen) -> torch.Tensor:
        batch, _, height, width = images.shape
        dev = images.device
        size = spec.size
        boxes = random_resized_crop_boxes(batch, height, width, spec.scale, spec.ratio, generator=gen, device=dev)
        flip = torch.rand(batch, generator=gen, device=dev) < spec.flip_p
        if self.field_config is not None:
            params = P.sample_params(self.field_config, batch, size, size, device=dev, generator=gen)
            fields, flags = params.fields, params.flags
        else:
            fields, flags = torch.zeros(batch, P.NUM_FIELDS, 1, 1, device=dev), 0
        jitter_on = torch.rand(batch, generator=gen, device=dev) < spec.jitter_p
        strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
        amps = torch.tensor(strengths, dtype=torch.float32, device=dev)
        u = torch.rand(batch, 4, generator=gen, device=dev)
        jitter = (2 * u - 1) * amps * jitter_on[:, None]
        for i, (channel, bit) in enumerate(((P.BRIGHTNESS, P.F_BRIGHTNESS), (P.CONTRAST, P.F_CONTRAST),
                                            (P.SATURATION, P.F_SATURATION), (P.HUE, P.F_HUE))):
            if strengths[i] > 0 and spec.jitter_p > 0:
                fields[:, channel] += jitter[:, i, None, None]
                flags |= bit
        if spec.grayscale_p > 0:
            grey = torch.rand(batch, generator=gen, device=dev) < spec.grayscale_p
            fields[:, P.SATURATION] = torch.where(grey[:, None, None], -1.0, fields[:, P.SATURATION])
            flags |= P.F_SATURATION
        post = spec.blur_p > 0 or spec.solarize_p > 0
        params = P.RandomFieldParams(fields=fields, flags=flags, base=P.crop_base(boxes, (size, size), flip),
                                     out_size=(size, size))
        out = apply_random_fields(images, params, padding=self.padding,
                                  mean=None if post else self.mean, std=None if post else self.std,
                                  out_dtype=torch.float32 if post else self.out_dtype, backend=self.backend)
        if not post:
            return out
        if spec.blur_p > 0:
            lo, hi = spec.blur_sigma
            sigma = lo + (hi - lo) * torch.rand(batch, generator=gen, device=dev)
            sigma = sigma * (torch.rand(batch, generator=gen, device=dev) < spec.blur_p)
            out = gaussian_blur(out, sigma, math.ceil(_BLUR_TAPS_PER_SIGMA * hi))
        if spec.solarize_p > 0:
            solarize = (torch.rand(batch, generator=gen, device=dev) < spec.solarize_p)[:, None, None, None]
            out = torch.where(solarize & (out >= 0.5), 1.0 - out, out)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=dev).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=dev).view(1, -1, 1, 1)
            out = (out - mean) / std
        return out.to(self.out_dtype)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        check_images(images)
        if images.shape[1] != 3:
            raise ValueError(f"SSLViews needs RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        gen = _generator_for(self.generator, images.device, self._seeded)
        out = [self._view(images, self.recipe.global_view(v, self.crop_size), gen) for v in range(self.views)]
        out += [self._view(images, self.local_view, gen) for _ in range(self.local_crops)]
        return out

    def extra_repr(self) -> str:
        fields = "off" if self.field_config is None else ", ".join(
            f"{k}={v:g}" for k, v in self.field_config.local_strengths().items())
        return (f"views={self.views}, crop_size={self.crop_size}, local_crops={self.local_crops}, "
                f"local_crop_size={self.local_crop_size}, random_fields=({fields})")


__all__ = ["SSLViews", "RECIPES", "PRESETS", "random_resized_crop_boxes", "gaussian_blur"]
