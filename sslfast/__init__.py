"""sslfast: fused kernels for self-supervised pretraining in PyTorch.

Importing sslfast never imports Triton, DALI, xformers or the compiled extension and never
initialises CUDA: each optional part is loaded where it is first used.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "augment", "data", "dispatch", "distributed", "functional", "losses", "metrics", "ops",
    "reference", "train",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'sslfast' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
