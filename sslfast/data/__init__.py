"""SSL data loading (DALI GPU/CPU pipelines and a torchvision fallback)."""
