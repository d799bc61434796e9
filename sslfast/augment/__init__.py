"""Random-field and SSL view augmentations.

    RandomFieldAugment(...)(images)        nn.Module on (B, C, H, W) uint8 / float batches
    random_field_augment(images, ...)      the same as a function
    apply_random_fields(images, params)    apply fields sampled beforehand (RandomFieldParams)
    SSLViews(recipe=...)(images)           SimCLR / BYOL / Barlow Twins views (+ multi-crop),
                                           random fields optional
    fields.gaussian_random_field(...)      the random fields themselves (fast / spectral)
    python -m sslfast.augment.preview IMAGE --out grid.png

Submodules load on first use, so importing sslfast.augment imports neither numba nor triton.
"""
import importlib

_EXPORTS = {
    "RandomFieldAugment": "random_field",
    "random_field_augment": "random_field",
    "apply_random_fields": "random_field",
    "PRESETS": "random_field",
    "IMAGENET_MEAN": "random_field",
    "IMAGENET_STD": "random_field",
    "RandomFieldParams": "params",
    "RandomFieldConfig": "params",
    "sample_params": "params",
    "gaussian_random_field": "fields",
    "SSLViews": "views",
    "RECIPES": "views",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
