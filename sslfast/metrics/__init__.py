"""Representation-quality monitors: RankMe, alignment/uniformity, kNN, embedding std."""
