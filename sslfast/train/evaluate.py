"""`sslfast knn`: k-NN accuracy and RankMe of a pretrained checkpoint's backbone.

The backbone is rebuilt from the run's configuration and loaded from the checkpoint; the bank
is the training images (all of them unless capped), the queries the held-out split, both
un-augmented (resize + centre crop to the run's crop size), as the online monitor does.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from . import checkpoint as ckpt
from .config import PretrainConfig
from .data import resolve_data
from .models import build_backbone
from .monitor import EvalImages, representation_metrics, subsample


def load_backbone(state: dict) -> torch.nn.Module:
    """The monitored backbone of a pretraining checkpoint, in eval mode on the CPU."""
    from .trainer import resolve_stem

    config = PretrainConfig.from_dict(state["config"])
    backbone, _ = build_backbone(config.backbone, image_size=config.crop_size, stem=resolve_stem(config))
    prefix = "backbone."
    weights = {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state["model"].items() if k.startswith(prefix)}
    backbone.load_state_dict(weights)
    return backbone.eval()


def evaluate_checkpoint(path: str, *, data: Optional[str] = None, val_data: Optional[str] = None, k: int = 200,
                        temperature: float = 0.07, batch_size: int = 256, device: str = "auto",
                        train_samples: Optional[int] = None) -> Dict[str, object]:
    state = ckpt.load(path)
    config = PretrainConfig.from_dict(state["config"])
    if data is not None or val_data is not None:
        config = dataclasses.replace(config, data=data if data is not None else config.data, val_data=val_data)
    config.validate()
    split = resolve_data(config, verbose=True)
    if split.val is None:
        raise ValueError("the data have no labelled held-out split to score: pass --val-data")
    from ..data import scan_images

    train = split.train if not isinstance(split.train, str) else None
    if train is None:
        images = scan_images(split.train, labels=True)
        train = list(zip(images.paths, images.labels.tolist()))
    if train_samples is not None:
        train = subsample(train, train_samples, config.seed)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backbone = load_backbone(state).to(device)
    metrics = representation_metrics(backbone, EvalImages(train, config.crop_size),
                                     EvalImages(split.val, config.crop_size), device, k=k, temperature=temperature,
                                     channels_last=False, autocast_dtype=None, batch_size=batch_size)
    return {"checkpoint": path, "step": state["step"], "bank": len(train), "queries": len(split.val), **metrics}
