r"""Random-field augmentations (Mansfield et al., 2023, "Random Field Augmentations for
Self-Supervised Representation Learning", arXiv 2311.03629).

The parameters of the affine and colour transforms become smooth random fields over the image:
every pixel gets its own translation, rotation, scale, shear, brightness, contrast, saturation
and hue. Each parameter is a global part (one value per image, uniform in [-a, a]: the classic
jitter) plus a local part, a zero-mean Gaussian random field with squared-exponential
covariance sigma^2 exp(-d^2 / (2 ell^2)). As ell -> inf the local part is constant per image,
so SimCLR's global affine + colour jitter is the infinite-length-scale special case.

No official code is public; every choice below is ours:

* Fields: independent per parameter (the paper models the parameters as independent Gaussian
  random fields), one length scale shared by all of them (one control grid, so the fused
  kernels interpolate all fields with one set of weights), sampled by
  sslfast.augment.fields: "fast" (coarse control grid, ell / 4 node spacing, separable Gaussian
  smoothing; default) or "spectral" (exact circulant embedding at full resolution).
* Length scale: a fraction of the output's shorter side by default (length_unit="image"), so a
  setting looks the same at 96 and 224 pixels; length_unit="pixels" for absolute values.
* Geometry: output pixel p reads the input at q = c + exp(-s) Sh(h)^-1 R(theta)^-1 (p - c - t),
  c the image centre: the inverse of "scale by e^s, shear, rotate by theta counter-clockwise,
  translate by t" applied to the content, evaluated with the parameters at p. Translation is
  a fraction of the image size (torchvision's convention), rotation and shear in degrees
  (x-shear, x' = x + tan(h) y), scale as a log factor (symmetric: e^s and e^-s equally likely).
* Sampling: bilinear, reflect (default, no black corners) or zero padding, with
  grid_sample(align_corners=False) conventions: pixel centres at integer coordinates.
* Colour: torchvision's ColorJitter maths with factor max(0, 1 + v) per pixel, in the fixed
  order brightness, contrast, saturation, hue (torchvision shuffles the order per image), each
  clamped to [0, 1]. Contrast blends towards the mean luminance of the input region the output
  covers (torchvision: of the image it is given); hue is the HSV shift of adjust_hue, in turns.
* Strength: the paper reports that mild strengths help (+1.7% ImageNet top-1, +3.6%
  iNaturalist over SimCLR) and strong ones hurt. Its exact hyperparameters could not be
  retrieved from this environment (only the abstract was reachable), so PRESETS are our own
  graded settings; `python -m sslfast.augment.preview IMAGE` shows what each does.
* Probability p: each image is augmented with probability p, else left as it is (zero fields).
* Determinism: fields are sampled once per call by shared code from `generator` on the images'
  device; every backend applies the same fields, so a seed gives the same views on every
  backend of a device (CPU and CUDA generators differ, so CPU and GPU views differ).

Backends (sslfast.dispatch): a CUDA C++ kernel, a fused Triton kernel, a numba CPU kernel and
the pure-PyTorch reference. All strengths zero is an exact identity for float input.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .. import _validation as V
from ..data.recipes import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported by sslfast.augment)
from . import params as P

PADDINGS = ("reflect", "zeros")
OUT_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)

# Graded strengths (our choice; see the module docstring). Units as in RandomFieldAugment.
PRESETS = {
    "mild": dict(translate=0.01, rotate=2.0, scale=0.02, shear=2.0,
                 brightness=0.05, contrast=0.05, saturation=0.1, hue=0.01, length_scale=0.25),
    "medium": dict(translate=0.02, rotate=4.0, scale=0.05, shear=4.0,
                   brightness=0.1, contrast=0.1, saturation=0.2, hue=0.02, length_scale=0.25),
    "strong": dict(translate=0.05, rotate=10.0, scale=0.12, shear=8.0,
                   brightness=0.25, contrast=0.25, saturation=0.4, hue=0.05, length_scale=0.2),
}

GeneratorLike = Union[None, int, torch.Generator]


def check_images(images, *, name: str = "images") -> torch.Tensor:
    """A (B, C, H, W) uint8 or floating tensor with C in {1, 3}, H, W >= 1; float values finite
    and in [0, 1] (checked where value checks are on, see sslfast._validation)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        hint = " (add a batch dimension: images.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(images.shape)}{hint}")
    if images.dtype != torch.uint8 and images.dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"{name} must be uint8 or floating (values in [0, 1]), got {images.dtype}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (B, C, H, W), got C={images.shape[1]} "
                         f"(shape {tuple(images.shape)}; channels-last data needs .permute(0, 3, 1, 2))")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{name} must have H, W >= 1, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and images.numel() and V.value_checks_enabled():
        low, high = (float(v) for v in torch.aminmax(images))  # one pass: NaN/Inf show here too
        if not (math.isfinite(low) and math.isfinite(high)):
            V.check_finite(name, images)
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name} must hold float values in [0, 1] (or be uint8), got values from {low:g} to "
                             f"{high:g}; divide pixels in [0, 255] by 255")
    return images


def _check_per_channel(name: str, values, channels: Optional[int] = None) -> tuple:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().flatten().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of per-channel floats, got {type(values).__name__}")
    values = tuple(float(v) for v in values)
    if channels is not None and len(values) != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def _check_output(mean, std, out_dtype) -> tuple:
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {out_dtype}")
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std must be given together, got mean={mean!r} and std={std!r}")
    if mean is None:
        return None, None
    if out_dtype == torch.uint8:
        raise ValueError("out_dtype=torch.uint8 cannot be normalised: pass mean=None, std=None")
    mean = _check_per_channel("mean", mean)
    std = _check_per_channel("std", std)
    if len(mean) != len(std):
        raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be > 0 per channel, got {std}")
    return mean, std


def _generator_for(generator: GeneratorLike, device: torch.device, cache: Optional[dict] = None):
    """A torch.Generator on `device` (None: torch's default RNG).

    An int seeds one generator per device and per DataLoader worker process. Inside a worker
    the seed is mixed with the worker's torch seed (base_seed + worker id, base_seed drawn from
    the parent's RNG every epoch), so workers repeat neither each other's views nor, when they
    are restarted every epoch, the previous epoch's (a torch.Generator object would do both:
    every worker gets a copy of its state). Runs stay reproducible under torch.manual_seed."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the images are on {device}: "
                             f"pass a torch.Generator(device='{device.type}') or an int seed")
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    from torch.utils.data import get_worker_info

    worker = get_worker_info()
    worker_id = -1 if worker is None else worker.id
    key = (str(device), worker_id)
    if cache is not None and key in cache:
        return cache[key]
    seed = generator if worker is None else (generator * 1_000_003 + worker.seed) % (1 << 63)
    gen = torch.Generator(device=device).manual_seed(seed)
    if cache is not None:
        cache[key] = gen
    return gen


def prepare_apply(images, params, *, padding="reflect", mean=None, std=None, out_dtype=torch.float32) -> tuple:
    """Validate the arguments of apply_random_fields and build what every backend receives:
    (images, fields, base, out_size, flags, luma, norm_mean, norm_std, out_dtype)."""
    check_images(images)
    V.check_choice("padding", padding, PADDINGS)
    mean, std = _check_output(mean, std, out_dtype)
    batch, channels, height, width = images.shape
    if mean is not None and len(mean) != channels:
        raise ValueError(f"mean and std must have one value per channel ({channels}), got {len(mean)}")
    if not isinstance(params, P.RandomFieldParams):
        raise TypeError(f"params must be a RandomFieldParams, got {type(params).__name__}")
    fields = params.fields
    if not isinstance(fields, torch.Tensor) or fields.dim() != 4 or fields.shape[:2] != (batch, P.NUM_FIELDS):
        got = tuple(fields.shape) if isinstance(fields, torch.Tensor) else type(fields).__name__
        raise ValueError(f"params.fields must be ({batch}, {P.NUM_FIELDS}, rows, cols) for {batch} images, got {got}")
    if fields.device != images.device:
        raise ValueError(f"params.fields is on {fields.device} but the images are on {images.device}")
    flags = int(params.flags)
    if flags & P.F_NEEDS_RGB and channels != 3:
        raise ValueError(f"saturation and hue need RGB images (C=3), got C={channels}")
    base, out_size, identity, whole = P.resolve_base(params, batch, (height, width), images.device)
    if base.shape != (batch, 6):
        raise ValueError(f"params.base must be ({batch}, 6), got {tuple(base.shape)}")
    if len(out_size) != 2 or min(out_size) < 1:
        raise ValueError(f"params.out_size must be (Ho, Wo) with Ho, Wo >= 1, got {out_size}")
    flags &= P.F_GEOMETRY | P.F_COLOUR
    if padding == "reflect":
        flags |= P.F_REFLECT
    if identity and not flags & P.F_GEOMETRY:
        flags |= P.F_NO_RESAMPLE
    luma = P.luma_mean(images, base, out_size, whole) if flags & P.F_CONTRAST else None
    dev = images.device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev) if mean is not None else None
    std_t = torch.tensor(std, dtype=torch.float32, device=dev) if std is not None else None
    return images, fields.to(torch.float32), base, out_size, flags, luma, mean_t, std_t, out_dtype


def apply_random_fields(
    images: torch.Tensor,
    params: P.RandomFieldParams,
    *,
    padding: str = "reflect",
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    out_dtype: torch.dtype = torch.float32,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Apply sampled parameters (from `RandomFieldAugment.sample_params` or
    `sslfast.augment.params.sample_params`) to a batch.

    Args:
        images: (B, C, H, W) uint8, or float in [0, 1]; C = 1 or 3 (3 for saturation/hue).
        params: the fields (B, 9, rows, cols), flags, optional base maps and output size.
        padding: "reflect" or "zeros".
        mean, std: per-channel normalisation of the float output, or None.
        out_dtype: torch.float32 (default), float16, bfloat16 or uint8 (unnormalised).
        backend: "auto" (None), "cuda", "triton", "numba" or "reference".

    Returns:
        (B, C, Ho, Wo) tensor of out_dtype on the images' device.
    """
    from ..ops.random_field import random_field_apply

    args = prepare_apply(images, params, padding=padding, mean=mean, std=std, out_dtype=out_dtype)
    return random_field_apply(*args, backend=backend)


class RandomFieldAugment(nn.Module):
    r"""Random-field augmentation of a batch of images (module docstring for the design).

    Every parameter k is theta_k(p) = g_k + f_k(p): g_k ~ U(-a_k, a_k) per image (global_jitter)
    plus f_k a squared-exponential random field with standard deviation sigma_k (the strength
    arguments) and length scale `length_scale`. Output pixel p samples the input at
    c + exp(-s) Sh(h)^-1 R(theta)^-1 (p - c - t), bilinearly, then the colour transform
    (brightness, contrast, saturation, hue) and normalisation run on the same pixel.

    Args:
        translate: field std of the translation, fraction of the image size (x: W, y: H).
        rotate: field std of the rotation, degrees (counter-clockwise).
        scale: field std of the log scale factor.
        shear: field std of the x-shear angle, degrees.
        brightness, contrast, saturation: field std of v in the factor max(0, 1 + v).
        hue: field std of the hue shift, turns (1 = 360 degrees).
        length_scale: ell, a fraction of the shorter side (or pixels with length_unit="pixels");
            math.inf gives constant (global) fields.
        p: probability that an image is augmented at all.
        generator: torch.Generator on the images' device, an int seed (distinct per DataLoader
            worker), or None (torch's global RNG, which DataLoader seeds per worker).
        length_unit: "image" or "pixels".
        global_jitter: {strength name: a} adds a per-image uniform U(-a, a) part in the same
            units (e.g. {"rotate": 10, "brightness": 0.4}).
        sampler: "fast" (default) or "spectral" (exact, slower; sslfast.augment.fields).
        padding: "reflect" (default) or "zeros".
        mean, std: per-channel normalisation of the output (e.g. IMAGENET_MEAN / IMAGENET_STD),
            or None for values in [0, 1].
        out_dtype: torch.float32 (default), float16, bfloat16 or uint8 (then no mean/std).
        backend: "auto" (None), "cuda", "triton", "numba" or "reference".

    Shape:
        images (B, C, H, W), C in {1, 3} (3 for saturation and hue), uint8 or float in [0, 1],
        any strides (a permuted channels-last batch works); output (B, C, H, W) of out_dtype.

    Example:
        >>> import torch
        >>> from sslfast.augment import RandomFieldAugment, IMAGENET_MEAN, IMAGENET_STD
        >>> aug = RandomFieldAugment(translate=0.02, rotate=5.0, hue=0.02, length_scale=0.25,
        ...                          generator=0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        >>> out = aug(images)
        >>> out.shape, out.dtype
        (torch.Size([4, 3, 32, 32]), torch.float32)
        >>> torch.equal(RandomFieldAugment(generator=0)(images.float() / 255), images.float() / 255)
        True
    """

    op = "random_field"  # the sslfast op (sslfast.dispatch) that computes it

    def __init__(
        self,
        translate: float = 0.0,
        rotate: float = 0.0,
        scale: float = 0.0,
        shear: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        length_scale: float = 0.25,
        p: float = 1.0,
        generator: GeneratorLike = None,
        *,
        length_unit: str = "image",
        global_jitter: Optional[Mapping[str, float]] = None,
        sampler: str = "fast",
        padding: str = "reflect",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        out_dtype: torch.dtype = torch.float32,
        backend: Optional[str] = None,
    ):
        super().__init__()
        from .. import dispatch

        self.config = P.RandomFieldConfig(
            translate=translate, rotate=rotate, scale=scale, shear=shear, brightness=brightness,
            contrast=contrast, saturation=saturation, hue=hue, length_scale=length_scale,
            length_unit=length_unit, p=p, sampler=sampler, global_jitter=dict(global_jitter or {}),
        )
        self.padding = V.check_choice("padding", padding, PADDINGS)
        self.mean, self.std = _check_output(mean, std, out_dtype)
        self.out_dtype = out_dtype
        self.backend = dispatch.check_backend_name(backend, op=self.op) if backend is not None else None
        if isinstance(generator, bool) or not (generator is None or isinstance(generator, (torch.Generator, int))):
            raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
        self.generator = generator
        self._seeded = {}

    @classmethod
    def preset(cls, name: str, **overrides) -> "RandomFieldAugment":
        """A RandomFieldAugment with the strengths of PRESETS[name] ("mild", "medium",
        "strong"), any argument overridden by keyword."""
        V.check_choice("preset", name, PRESETS)
        return cls(**{**PRESETS[name], **overrides})

    def sample_params(self, images: torch.Tensor, out_size: Optional[tuple] = None) -> P.RandomFieldParams:
        """Sample the parameter fields for this batch (shared by every backend)."""
        check_images(images)
        height, width = out_size if out_size is not None else images.shape[-2:]
        gen = _generator_for(self.generator, images.device, self._seeded)
        return P.sample_params(self.config, images.shape[0], int(height), int(width), device=images.device,
                               generator=gen)

    def apply(self, images: torch.Tensor, params: P.RandomFieldParams) -> torch.Tensor:
        """Apply sampled parameters with this module's padding, normalisation and backend."""
        return apply_random_fields(images, params, padding=self.padding, mean=self.mean, std=self.std,
                                   out_dtype=self.out_dtype, backend=self.backend)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.sample_params(images))

    def extra_repr(self) -> str:
        c = self.config
        strengths = ", ".join(f"{k}={v:g}" for k, v in c.local_strengths().items()) or "identity"
        extra = f", global_jitter={c.global_jitter}" if c.global_jitter else ""
        return (f"{strengths}, length_scale={c.length_scale:g} ({c.length_unit}), p={c.p:g}{extra}, "
                f"padding={self.padding!r}, out_dtype={self.out_dtype}")


def random_field_augment(images: torch.Tensor, *, generator: GeneratorLike = None, **kwargs) -> torch.Tensor:
    """Function form of RandomFieldAugment: `random_field_augment(images, rotate=5.0, ...)`
    takes the same keyword arguments and returns the augmented batch.

    Example:
        >>> import torch
        >>> from sslfast.augment import random_field_augment
        >>> images = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8)
        >>> out = random_field_augment(images, translate=0.05, brightness=0.2, generator=1,
        ...                            out_dtype=torch.uint8)
        >>> out.shape, out.dtype
        (torch.Size([2, 3, 24, 40]), torch.uint8)
    """
    return RandomFieldAugment(generator=generator, **kwargs)(images)
