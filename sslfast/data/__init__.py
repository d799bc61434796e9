"""SSL data loading: DALI GPU/CPU pipelines and a PIL/PyTorch fallback with one API, and the
built-in synthetic dataset `sslfast pretrain` uses by default.

Importing this package does not import DALI: the DALI engine is loaded when a loader first runs.
"""
from .files import CorruptImageError, ImageList, SkippedImageWarning, scan_images
from .loader import DaliSSLLoader
from .recipes import RECIPES, Recipe, ViewSpec, get_recipe
from .sampling import ShardPlan
from .synthetic import SyntheticSpec, generate as generate_synthetic

__all__ = [
    "DaliSSLLoader", "ImageList", "scan_images", "CorruptImageError", "SkippedImageWarning",
    "ViewSpec", "Recipe", "RECIPES", "get_recipe", "ShardPlan", "SyntheticSpec", "generate_synthetic",
]
