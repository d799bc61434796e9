"""SSL augmentation recipes: what each view of an image goes through.

A view is: random resized crop (scale, ratio) -> colour jitter with probability (brightness,
contrast, saturation, hue) -> grayscale with probability -> Gaussian blur with probability ->
solarize with probability -> horizontal flip with probability -> normalise (mean, std).

Built-in recipes follow the papers and lightly's transforms:

=============  ==========================================================================
simclr         both views: jitter (0.8, 0.8, 0.8, 0.2) p=0.8, gray p=0.2, blur p=0.5
               (Chen et al. 2020, strength 1.0 as in lightly's SimCLRTransform)
byol           jitter (0.4, 0.4, 0.2, 0.1) p=0.8, gray p=0.2; view 1: blur p=1.0, solarize
               p=0.0; view 2: blur p=0.1, solarize p=0.2 (Grill et al. 2020, Table 6)
barlowtwins    the BYOL asymmetric pair (Zbontar et al. 2021, Appendix)
=============  ==========================================================================

All use crop scale (0.08, 1), ratio (3/4, 4/3), flip p=0.5, blur sigma in (0.1, 2.0) pixels and
ImageNet mean/std. Multi-crop local views (SwAV, Caron et al. 2020) copy the first view's
colour settings with crop scale LOCAL_SCALE = (0.05, 0.4) unless a recipe gives its own `local`
view: DINO's local range (Caron et al. 2021; lightly's DINOTransform local_crop_scale). SwAV's
(0.05, 0.14) pairs with its global crops of (0.14, 1): give a recipe
`local=ViewSpec(scale=(0.05, 0.14))` for that form. sslfast.augment.SSLViews uses
these same recipes, so both paths share this default.

Where these differ from torchvision's transforms, on purpose and on every backend: the colour
jitter is one fused colour matrix in DALI's `color_twist` form (hue and saturation in YIQ,
then contrast around mid-grey, then brightness, one clamp at the end) applied in a fixed order
rather than torchvision's random order, and grayscale is that matrix with saturation 0 (ITU-R
601 luma, the weights torchvision uses); the blur kernel spans 2*ceil(3 sigma)+1 taps.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOCAL_SCALE = (0.05, 0.4)  # DINO's local crops (see the module docstring)


def _check_range(name: str, pair, low: float, high: float, *, open_low: bool = False) -> tuple:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a (min, max) pair, got {pair!r}")
    a, b = (float(v) for v in pair)
    bad_low = (a <= low) if open_low else (a < low)
    if any(math.isnan(v) for v in (a, b)) or bad_low or b > high or a > b:
        bound = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must satisfy min <= max within {bound}, got {pair!r}")
    return (a, b)


def _check_prob(name: str, p) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one view.

    Args:
        size: output side in pixels; None takes the loader's crop_size (local_crop_size for
            local views).
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's width/height (sampled log-uniformly).
        flip_p: probability of a horizontal flip.
        jitter_p: probability of the colour jitter.
        brightness, contrast, saturation: the factor is uniform in [max(0, 1-x), 1+x].
        hue: the shift is uniform in [-hue, hue] turns (0.5 = 180 degrees).
        grayscale_p: probability of converting to grayscale (after the jitter).
        blur_p: probability of a Gaussian blur; sigma uniform in `blur_sigma` (pixels).
        solarize_p: probability of inverting pixels >= 128.
        mean, std: per-channel normalisation of [0, 1] pixel values.

    Example:
        >>> spec = ViewSpec(blur_p=1.0, solarize_p=0.2)
        >>> spec.replace(size=96).size
        96
    """

    size: Optional[int] = None
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"ViewSpec.size must be None or an int >= 1, got {self.size!r}")
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("scale", _check_range("ViewSpec.scale", self.scale, 0.0, 1.0, open_low=True))
        fix("ratio", _check_range("ViewSpec.ratio", self.ratio, 0.0, math.inf, open_low=True))
        fix("blur_sigma", _check_range("ViewSpec.blur_sigma", self.blur_sigma, 0.0, 64.0, open_low=True))
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            fix(name, _check_prob(f"ViewSpec.{name}", getattr(self, name)))
        for name in ("brightness", "contrast", "saturation"):
            value = float(getattr(self, name))
            if not 0.0 <= value < math.inf:
                raise ValueError(f"ViewSpec.{name} must be a finite number >= 0, got {value}")
            fix(name, value)
        if not 0.0 <= float(self.hue) <= 0.5:
            raise ValueError(f"ViewSpec.hue must be in [0, 0.5] turns, got {self.hue}")
        fix("hue", float(self.hue))
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or any(math.isnan(v) or math.isinf(v) for v in value):
                raise ValueError(f"ViewSpec.{name} must be 3 finite numbers (R, G, B), got {getattr(self, name)!r}")
            if name == "std" and min(value) <= 0:
                raise ValueError(f"ViewSpec.std must be > 0, got {value}")
            fix(name, value)

    def replace(self, **changes) -> "ViewSpec":
        return dataclasses.replace(self, **changes)

    @property
    def jitters(self) -> bool:
        """Whether the colour matrix can differ from the identity."""
        return self.grayscale_p > 0 or (self.jitter_p > 0 and (
            self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0))


@dataclass(frozen=True)
class Recipe:
    """Per-view specs: global view v uses `views[v % len(views)]`; local crops use `local`
    (default: the first view with crop scale LOCAL_SCALE)."""

    views: tuple
    local: Optional[ViewSpec] = None

    def __post_init__(self):
        views = tuple(self.views)
        if not views or not all(isinstance(v, ViewSpec) for v in views):
            raise TypeError(f"Recipe.views must be a non-empty sequence of ViewSpec, got {self.views!r}")
        if self.local is not None and not isinstance(self.local, ViewSpec):
            raise TypeError(f"Recipe.local must be a ViewSpec or None, got {type(self.local).__name__}")
        object.__setattr__(self, "views", views)

    def global_view(self, v: int, size: int) -> ViewSpec:
        spec = self.views[v % len(self.views)]
        return spec if spec.size is not None else spec.replace(size=size)

    def local_view(self, size: int) -> ViewSpec:
        spec = self.local if self.local is not None else self.views[0].replace(scale=LOCAL_SCALE)
        return spec if spec.size is not None else spec.replace(size=size)


_SIMCLR = ViewSpec(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5)
_BYOL_1 = ViewSpec(blur_p=1.0, solarize_p=0.0)
_BYOL_2 = ViewSpec(blur_p=0.1, solarize_p=0.2)
RECIPES = {
    "simclr": Recipe((_SIMCLR,)),
    "byol": Recipe((_BYOL_1, _BYOL_2)),
    "barlowtwins": Recipe((_BYOL_1, _BYOL_2)),
}


def get_recipe(recipe: Union[str, Recipe, ViewSpec, Sequence[ViewSpec]]) -> Recipe:
    """A Recipe from a built-in name, a Recipe, one ViewSpec or a sequence of them."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)} or a Recipe/ViewSpec, got {recipe!r}")
        return RECIPES[recipe]
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, ViewSpec):
        return Recipe((recipe,))
    if isinstance(recipe, (list, tuple)):
        return Recipe(tuple(recipe))
    raise TypeError(f"recipe must be a name, a Recipe, a ViewSpec or a sequence of ViewSpec, got {type(recipe).__name__}")


def view_specs(recipe, views: int, crop_size: int, local_crops: int, local_crop_size: int) -> list:
    """The ViewSpec of every output view: `views` global ones, then `local_crops` local ones."""
    recipe = get_recipe(recipe)
    return ([recipe.global_view(v, crop_size) for v in range(views)]
            + [recipe.local_view(local_crop_size) for _ in range(local_crops)])
