"""SSL data loading (DALI GPU/CPU pipelines and a torchvision fallback)."""
from .synthetic import SyntheticSpec, generate as generate_synthetic  # noqa: E402,F401  (sslfast pretrain's built-in set)
