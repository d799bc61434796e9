"""What a pretraining run watches: representation monitors, logs and the final plot.

Every `knn_every` epochs (and before the first step, which gives the randomly initialised
encoder's score on the same data) the run computes, on rank 0:

* k-NN top-1/top-5 (sslfast.metrics.WeightedKNNClassifier, k=200, T=0.07) of backbone
  features: the bank is a fixed subset of the training images, the queries the held-out split,
  both without augmentation (resize + centre crop to the training crop size);
* RankMe (effective rank) of the held-out backbone features;
* alignment, uniformity and the std of the L2-normalised projector outputs of training pairs
  kept from that epoch's last steps (`PairBuffer`).

Rows go to epochs.csv (and steps.csv every `log_every` steps), to TensorBoard when the
tensorboard package is installed, and `plot_curves` draws them to curves.png at the end.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, List, Optional, Sequence

import torch

from ..data.recipes import IMAGENET_MEAN, IMAGENET_STD
from ..metrics import WeightedKNNClassifier, alignment, embedding_std, rankme, uniformity


def subsample(samples: Sequence, limit: int, seed: int) -> list:
    """A fixed random subset of at most `limit` samples (the same for every epoch and resume)."""
    if len(samples) <= limit:
        return list(samples)
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(samples), generator=g)[:limit].sort().values
    return [samples[i] for i in keep.tolist()]


class EvalImages:
    """Un-augmented images (resize + centre crop, normalised) of a list of (path, label).

    Decoded once and kept as uint8 in memory when they fit in `cache_bytes`, else decoded on
    every pass.
    """

    def __init__(self, samples: Sequence, image_size: int, *, cache_bytes: int = 1 << 29):
        self.samples = list(samples)
        self.image_size = image_size
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self._cache: Optional[torch.Tensor] = None
        self._cacheable = len(self.samples) * 3 * image_size * image_size <= cache_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, start: int, stop: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        out = torch.empty(stop - start, 3, self.image_size, self.image_size, dtype=torch.uint8)
        for i, (path, _) in enumerate(self.samples[start:stop]):
            with Image.open(path) as img:
                image = TF.pil_to_tensor(img.convert("RGB"))
            image = TF.resize(image, self.image_size, antialias=True)
            out[i] = TF.center_crop(image, self.image_size)
        return out

    def batches(self, batch_size: int, device: torch.device):
        """Yield (normalised float images on device, labels) batches in order."""
        if self._cacheable and self._cache is None:
            self._cache = self._decode(0, len(self))
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            raw = self._cache[start:stop] if self._cache is not None else self._decode(start, stop)
            yield (raw.to(device).float() - mean) / std, self.labels[start:stop]


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: EvalImages, device: torch.device, *, batch_size: int = 256,
          channels_last: bool = False, autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Backbone features of every image, in eval mode (the mode is restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    features = []
    try:
        for x, _ in images.batches(batch_size, device):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                features.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(features)


class PairBuffer:
    """The last `capacity` pairs of (detached, float) projector outputs of two views."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.z0: List[torch.Tensor] = []
        self.z1: List[torch.Tensor] = []
        self.size = 0

    def add(self, z0: torch.Tensor, z1: torch.Tensor) -> None:
        self.z0.append(z0.detach().float())
        self.z1.append(z1.detach().float())
        self.size += z0.shape[0]
        while self.size - self.z0[0].shape[0] >= self.capacity:
            self.size -= self.z0.pop(0).shape[0]
            self.z1.pop(0)

    def reset(self) -> None:
        self.z0, self.z1, self.size = [], [], 0

    def metrics(self) -> Dict[str, float]:
        if self.size < 2:
            return {}
        z0, z1 = torch.cat(self.z0)[-self.capacity:], torch.cat(self.z1)[-self.capacity:]
        return {"alignment": float(alignment(z0, z1)), "uniformity": float(uniformity(z0)),
                "embedding_std": float(embedding_std(z0)),
                "embedding_std_x_sqrt_d": float(embedding_std(z0)) * math.sqrt(z0.shape[1])}


def representation_metrics(encoder, bank: EvalImages, queries: EvalImages, device, *, k: int, temperature: float,
                           channels_last: bool, autocast_dtype, batch_size: int = 256) -> Dict[str, float]:
    """k-NN top-1/top-5 of `queries` against `bank`, and RankMe of the query features."""
    kwargs = dict(batch_size=batch_size, channels_last=channels_last, autocast_dtype=autocast_dtype)
    bank_features = embed(encoder, bank, device, **kwargs)
    query_features = embed(encoder, queries, device, **kwargs)
    knn = WeightedKNNClassifier(k=k, temperature=temperature).update(bank_features, bank.labels.to(device))
    scores = knn.score(query_features, queries.labels.to(device), topk=(1, 5))
    out = {"knn_top1": scores["top1"], "knn_top5": scores["top5"]}
    try:
        out["rankme"] = rankme(query_features)
    except ValueError:  # all-zero features (a dead encoder): report it rather than crash the run
        out["rankme"] = 0.0
    return out


class CSVLog:
    """Append rows to a CSV whose columns grow as new keys appear.

    A row with known columns is appended to the file (O(row) per step, however long the run);
    a new column rewrites the file once, atomically (temp file + rename).
    """

    def __init__(self, path: str, *, keep_up_to_step: Optional[int] = None):
        """Open (or create) `path`; rows of an existing file with "step" > keep_up_to_step are
        dropped: a resumed run writes them again."""
        self.path = path
        self.rows: List[Dict[str, object]] = []
        self._columns: List[str] = []
        if os.path.isfile(path):
            with open(path, newline="") as fh:
                self.rows = [dict(r) for r in csv.DictReader(fh)]
            for row in self.rows:
                self._add_columns(row)
            if keep_up_to_step is not None:
                self.rows = [r for r in self.rows if float(r["step"]) <= keep_up_to_step]
                self._rewrite()

    def _add_columns(self, row: Dict[str, object]) -> bool:
        """Record the row's new keys; whether there were any."""
        new = [k for k in row if k not in self._columns]
        self._columns.extend(new)
        return bool(new)

    def append(self, row: Dict[str, object]) -> None:
        self.rows.append(row)
        if self._add_columns(row) or not os.path.isfile(self.path):
            self._rewrite()
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self._columns).writerow(row)

    def columns(self) -> List[str]:
        return list(self._columns)

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._columns or ["epoch"])
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


class TensorBoard:
    """A SummaryWriter when tensorboard is installed, otherwise nothing."""

    def __init__(self, folder: str, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(folder)

    def log(self, values: Dict[str, float], step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


PLOTTED = (("loss", "training loss"), ("knn_top1", "k-NN top-1 (held-out)"), ("rankme", "RankMe"),
           ("embedding_std_x_sqrt_d", "std of normalised z x sqrt(D)"), ("alignment", "alignment"),
           ("uniformity", "uniformity"), ("lr", "learning rate"))


def plot_curves(epoch_rows: List[Dict[str, object]], step_rows: List[Dict[str, object]], path: str,
                title: str = "") -> Optional[str]:
    """Draw the monitored curves to a PNG (matplotlib, Agg backend); None if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def series(rows, x_key, key):
        xs, ys = [], []
        for r in rows:
            try:
                x, y = float(r[x_key]), float(r[key])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(y):
                xs.append(x)
                ys.append(y)
        return xs, ys

    panels = []
    for key, label in PLOTTED:
        rows, x_key = (step_rows, "step") if key in ("loss", "lr") else (epoch_rows, "epoch")
        xs, ys = series(rows, x_key, key)
        if xs:
            panels.append((key, label, x_key, xs, ys))
    if not panels:
        return None
    cols = min(4, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), squeeze=False)
    for ax, (key, label, x_key, xs, ys) in zip(axes.flat, panels):
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
