"""The fallback engine: PIL decoding and PyTorch view augmentation in DataLoader workers.

Runs anywhere (no DALI, no GPU). Each worker builds whole batches: it decodes every image
once with PIL (EXIF orientation applied, converted to RGB, like DALI's decoder), crops and
resizes each view with PIL's antialiased bilinear filter, then runs the per-view operations of
sslfast.data.transforms on the stacked batch, and the random fields (their numba CPU path) when
the loader has them. Parameters come from sslfast.data.sampling, so the fallback and DALI
augment sample i of epoch e identically.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np
import torch

from . import transforms
from .sampling import view_params


def decode(path: str):
    """The RGB PIL image of a file, EXIF orientation applied (raises on undecodable data)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")


def crop_resize(img, crop: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 of the crop (top, left, height, width), antialiased bilinear."""
    from PIL import Image

    top, left, h, w = (int(v) for v in crop)
    out = img.resize((size, size), resample=Image.BILINEAR, box=(left, top, left + w, top + h))
    return np.asarray(out, dtype=np.uint8)


class BatchMaker:
    """Builds one batch (decode + every view) from a key (epoch, position, indices)."""

    def __init__(self, images, specs, *, seed: int, dtype: Optional[torch.dtype], finish: Optional[Callable] = None):
        self.paths, self.sizes, self.labels = images.paths, images.sizes, images.labels
        self.specs, self.seed, self.dtype, self.finish = specs, seed, dtype, finish

    def __call__(self, key) -> dict:
        epoch, position, indices = key
        decoded, kept, skipped = [], [], []
        for i in np.asarray(indices, dtype=np.int64):
            try:
                img = decode(self.paths[i])
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                skipped.append((self.paths[i], f"cannot be decoded ({type(exc).__name__}: {exc})"))
                continue
            decoded.append(img)
            kept.append(i)
        kept = np.asarray(kept, dtype=np.int64)
        # The decoded size is the truth; the scan's header size differs only for odd EXIF data.
        sizes = np.array([[img.height, img.width] for img in decoded], dtype=np.int64).reshape(-1, 2)
        views = []
        for v, spec in enumerate(self.specs):
            params = view_params(spec, sizes, kept, seed=self.seed, epoch=epoch, view=v)
            crops = np.stack([crop_resize(img, params.crop[k], spec.size) for k, img in enumerate(decoded)]) \
                if decoded else np.zeros((0, spec.size, spec.size, 3), dtype=np.uint8)
            crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
            views.append(transforms.augment_view(crops, params, spec, self.dtype))
        if self.finish is not None:
            views = self.finish(views, epoch, position)
        return {"views": views, "index": torch.from_numpy(kept), "skipped": skipped}


class _KeyDataset(torch.utils.data.Dataset):
    """dataset[key] is the batch of key = (epoch, position, indices)."""

    def __init__(self, make_batch: BatchMaker):
        self.make_batch = make_batch

    def __getitem__(self, key) -> dict:
        return self.make_batch(key)


class _EpochKeys(torch.utils.data.Sampler):
    """The keys of the current epoch; the engine swaps them between epochs (workers persist)."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


_PRELOAD = ["torch", "numpy", "PIL.Image", "sslfast.data.torch_backend"]


def worker_context():
    """How to start the workers: the platform's default (fork on Linux, the cheapest) unless this
    process runs other threads or has DALI loaded, whose locks and thread pools a forked child
    inherits in an undefined state (workers crashed with SIGSEGV that way). Then the workers
    come from a forkserver that has imported torch and this module once, in a clean process."""
    import multiprocessing
    import sys
    import threading

    if "nvidia.dali" not in sys.modules and threading.active_count() == 1:
        return None
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # applies when the server first starts
    return context


class TorchEngine:
    """Runs epochs through one DataLoader whose `num_workers` worker processes persist across
    epochs (each builds whole batches; see BatchMaker)."""

    name = "torch"

    def __init__(self, images, specs, *, seed: int, num_workers: int, dtype: Optional[torch.dtype],
                 finish: Optional[Callable] = None, prefetch: int = 2, pin_memory: bool = False):
        self.make_batch = BatchMaker(images, specs, seed=seed, dtype=dtype, finish=finish)
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self.keys = _EpochKeys()
        self.loader = None

    def _dataloader(self):
        if self.loader is None:
            workers = self.num_workers > 0
            self.loader = torch.utils.data.DataLoader(
                _KeyDataset(self.make_batch), batch_size=None, sampler=self.keys,
                num_workers=self.num_workers, pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch if workers else None, persistent_workers=workers,
                multiprocessing_context=worker_context() if workers else None,
            )
        return self.loader

    def run(self, epoch: int, batches: list, first_position: int = 0):
        """Yields (views, indices, skipped) per batch, in order. An epoch abandoned half-way
        leaves results in flight that the next epoch's start discards."""
        self.keys.keys = [(epoch, first_position + k, b) for k, b in enumerate(batches)]
        for out in self._dataloader():
            yield out["views"], out["index"].numpy(), out["skipped"]

    def close(self) -> None:
        if self.loader is not None:
            iterator = getattr(self.loader, "_iterator", None)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self.loader = None
