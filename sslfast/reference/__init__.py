"""Readable pure-PyTorch implementations of every op: the test oracle, the CPU path and the
benchmark baseline. Memory-aware (chunked) where the naive form is O(N^2)."""
from . import contrastive
from .similarity import similarity_lse, similarity_lse_dense

__all__ = ["contrastive", "similarity_lse", "similarity_lse_dense"]
