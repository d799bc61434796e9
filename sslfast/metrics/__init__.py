"""Representation-quality monitors: RankMe, alignment/uniformity, kNN, embedding std.

Each is cheap enough to evaluate every epoch on a held-out split during training.
"""
from .geometry import alignment, embedding_std, uniformity
from .knn import WeightedKNNClassifier, knn_accuracy
from .rankme import rankme

__all__ = ["alignment", "embedding_std", "knn_accuracy", "rankme", "uniformity", "WeightedKNNClassifier"]
