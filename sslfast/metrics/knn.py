r"""Weighted k-nearest-neighbour classifier on cosine similarity: the standard online probe of
self-supervised features (Wu et al., CVPR 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"; the same rule as DINO's eval_knn.py and solo-learn's
WeightedKNNClassifier).

For a query q and the k bank features f_j most similar to it (cosine similarity s_j):

    score_c = sum_{j in top-k} exp(s_j / T) [label_j == c]          prediction = argmax_c score_c

with k = 200 and T = 0.07 as defaults (the papers' values). Queries are processed in chunks, so
memory is O(chunk * bank size), and nothing is ever one-hot encoded: votes are scatter-added.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F

from .._validation import check_embeddings, check_int, check_positive


def _check_labels(name: str, labels, n: int, device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (class indices), got min {int(labels.min())}")
    return labels.to(device=device, dtype=torch.long)


class WeightedKNNClassifier:
    """k-NN classifier with exp(similarity / T) weighted votes, usable as an online monitor.

    Fill the bank with `update` (e.g. every training step, with detached features of the
    un-augmented training split) and `score` a held-out split at the end of an epoch; `reset`
    empties the bank.

    Args:
        k: neighbours that vote (clipped to the bank size).
        temperature: T in exp(s / T).
        chunk_size: queries scored at once (memory O(chunk_size * bank size)).

    Example:
        >>> import torch
        >>> from sslfast.metrics import WeightedKNNClassifier
        >>> g = torch.Generator().manual_seed(0)
        >>> centres = torch.randn(3, 16, generator=g)
        >>> labels = torch.arange(300) % 3
        >>> feats = centres[labels] + 0.3 * torch.randn(300, 16, generator=g)
        >>> knn = WeightedKNNClassifier(k=20).update(feats[:200], labels[:200])
        >>> knn.score(feats[200:], labels[200:])["top1"]
        1.0
    """

    def __init__(self, k: int = 200, temperature: float = 0.07, chunk_size: int = 1024):
        self.k = check_int("k", k, minimum=1)
        self.temperature = check_positive("temperature", temperature)
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        self.reset()

    def reset(self) -> "WeightedKNNClassifier":
        self._features, self._labels = [], []
        return self

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "WeightedKNNClassifier":
        """Add (N, D) features with their (N,) integer labels to the bank (stored normalised, detached)."""
        check_embeddings("features", features, min_batch=0)
        if self._features and features.shape[1] != self._features[0].shape[1]:
            raise ValueError(f"features must have D = {self._features[0].shape[1]} like the bank, "
                             f"got shape {tuple(features.shape)}")
        labels = _check_labels("labels", labels, features.shape[0], features.device)
        self._features.append(F.normalize(features.detach().float(), dim=1))
        self._labels.append(labels)
        return self

    @property
    def bank_size(self) -> int:
        return sum(f.shape[0] for f in self._features)

    def _bank(self):
        if not self._features:
            raise RuntimeError("the k-NN bank is empty: call update(features, labels) before predicting")
        if len(self._features) > 1:  # concatenate once, then keep the single block
            self._features, self._labels = [torch.cat(self._features)], [torch.cat(self._labels)]
        return self._features[0], self._labels[0]

    @torch.no_grad()
    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) summed vote weights per class for (N, D) query features."""
        bank, bank_labels = self._bank()
        check_embeddings("features", features)
        if features.shape[1] != bank.shape[1]:
            raise ValueError(f"features must have D = {bank.shape[1]} like the bank, got shape {tuple(features.shape)}")
        num_classes = int(bank_labels.max()) + 1
        k = min(self.k, bank.shape[0])
        queries = F.normalize(features.detach().float().to(bank.device), dim=1)
        scores = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        for r0 in range(0, queries.shape[0], self.chunk_size):
            sim, idx = (queries[r0:r0 + self.chunk_size] @ bank.T).topk(k, dim=1)
            weights = (sim / self.temperature).exp()
            scores[r0:r0 + self.chunk_size].scatter_add_(1, bank_labels[idx], weights)
        return scores

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) predicted labels."""
        return self.class_scores(features).argmax(dim=1)

    def score(self, features: torch.Tensor, labels: torch.Tensor, topk: Iterable[int] = (1, 5)) -> Dict[str, float]:
        """Top-k accuracies on (features, labels), e.g. {"top1": 0.83, "top5": 0.97}."""
        scores = self.class_scores(features)
        labels = _check_labels("labels", labels, features.shape[0], scores.device)
        ranked = scores.argsort(dim=1, descending=True)
        out = {}
        for k in topk:
            hit = (ranked[:, :k] == labels[:, None]).any(dim=1)
            out[f"top{k}"] = float(hit.float().mean()) if labels.numel() else float("nan")
        return out


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 200, temperature: float = 0.07,
                 topk: Optional[Iterable[int]] = (1, 5)) -> Dict[str, float]:
    """One-shot weighted k-NN accuracy of test features against a bank of train features.

    Example:
        >>> import torch
        >>> from sslfast.metrics import knn_accuracy
        >>> x = torch.eye(4).repeat(5, 1) + 0.01 * torch.randn(20, 4)
        >>> knn_accuracy(x, torch.arange(20) % 4, x[:4], torch.arange(4), k=5)["top1"]
        1.0
    """
    knn = WeightedKNNClassifier(k=k, temperature=temperature).update(train_features, train_labels)
    return knn.score(test_features, test_labels, topk=topk)
