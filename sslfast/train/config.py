"""`PretrainConfig`: every setting of a pretraining run, its defaults and its checks.

The defaults are the short run that `sslfast pretrain` does with no arguments: the built-in
synthetic set, SimCLR on a ResNet-18, a few minutes on a 2-core CPU (see DEFAULT_RUN_NOTE). A
value of None means "the method's default" (its official setting) where the field says so.

Configs load from YAML or JSON files whose keys are the field names (dashes or underscores),
and are saved next to every run as config.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional

from .._validation import check_choice, check_int, check_nonnegative, check_positive

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
LOADER_DEVICES = ("auto", "cpu", "gpu")
LOADER_BACKENDS = ("auto", "dali", "torch")
STEM_CHOICES = ("auto", "imagenet", "cifar")


@dataclass
class PretrainConfig:
    # --- data ---------------------------------------------------------------------------------
    data: Optional[str] = None
    """ImageFolder root (class subfolders), or a folder holding train/ and val/ ImageFolders.
    None: the built-in synthetic set (generated once into the cache folder)."""
    val_data: Optional[str] = None
    """Held-out ImageFolder for the k-NN monitor (default: <data>/val when it exists)."""
    synthetic_image_size: int = 64
    synthetic_train_per_class: int = 500
    synthetic_val_per_class: int = 100
    crop_size: int = 64
    recipe: Optional[str] = None
    """Augmentation recipe of the loader: simclr, byol or barlowtwins (None: the method's)."""
    crop_min_scale: Optional[float] = None
    """Smallest crop area as a fraction of the image (None: the recipe's, 0.08)."""
    blur: Optional[bool] = None
    """Gaussian blur of the recipe on or off (None: on for crops of 96 px and more, off below,
    as SimCLR does for ImageNet and CIFAR)."""
    random_fields: bool = False
    """Random-field augmentation (sslfast.augment) on top of the recipe."""
    loader_device: str = "auto"
    """Where the loader decodes and augments: gpu (DALI), cpu, or auto (gpu on CUDA)."""
    loader_backend: str = "auto"
    """dali, torch (the PIL/DataLoader fallback) or auto (DALI where installed)."""
    num_workers: int = 2

    # --- model and method ----------------------------------------------------------------------
    method: str = "simclr"
    backbone: str = "resnet18"
    stem: str = "auto"
    """ResNet stem: imagenet (7x7/2 + pool), cifar (3x3/1), auto (cifar below 96 px)."""
    proj_hidden_dim: Optional[int] = None
    proj_output_dim: Optional[int] = None
    temperature: Optional[float] = None
    ema_momentum: Optional[float] = None
    queue_size: Optional[int] = None

    # --- optimisation ----------------------------------------------------------------------------
    epochs: int = 10
    """10 keeps the no-argument run on the built-in data near 8 minutes on a 2-core CPU (12 took
    8.5-9.4 min there, too close to the 10-minute budget of a first run)."""
    batch: int = 256
    """Images per process per forward/backward chunk."""
    effective_batch: Optional[int] = None
    """Images per optimizer step over all processes (> batch * world: cached-embeddings path)."""
    optimizer: str = "adamw"
    lr: float = 2e-3
    """Peak learning rate per 256 images of effective batch (scaled linearly)."""
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.0
    cooldown_fraction: float = 0.2
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (the schedule still spans all epochs)."""

    # --- execution -----------------------------------------------------------------------------
    device: str = "auto"
    precision: str = "auto"
    """bf16 autocast (auto: on CUDA) or fp32."""
    channels_last: bool = True
    compile: bool = False
    backend: Optional[str] = None
    """sslfast kernel backend for the loss (None: auto)."""
    seed: int = 0
    deterministic: bool = False

    # --- monitoring and checkpoints --------------------------------------------------------------
    out: Optional[str] = None
    """Run folder (default: sslfast_runs/<method>-<backbone>-<time>)."""
    knn_k: int = 200
    knn_temperature: float = 0.07
    knn_every: int = 1
    """Evaluate the monitors every this many epochs (and always before and after training)."""
    knn_train_samples: int = 10000
    knn_val_samples: int = 5000
    monitor_pairs: int = 2048
    """Pairs of training embeddings kept per epoch for alignment/uniformity/std."""
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    """Also log to TensorBoard when the tensorboard package is installed."""

    extra: Dict[str, Any] = field(default_factory=dict)
    """Method-specific options passed through (e.g. lambda_param for Barlow Twins)."""

    def validate(self) -> "PretrainConfig":
        from .methods import METHODS
        from .models import BACKBONES
        from .optim import OPTIMIZERS, SCHEDULES

        check_choice("method", self.method, METHODS)
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("stem", self.stem, STEM_CHOICES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_choice("loader_device", self.loader_device, LOADER_DEVICES)
        check_choice("loader_backend", self.loader_backend, LOADER_BACKENDS)
        for name in ("epochs", "batch", "crop_size", "synthetic_image_size", "synthetic_train_per_class",
                     "synthetic_val_per_class", "knn_k", "knn_every", "knn_train_samples", "knn_val_samples",
                     "monitor_pairs", "log_every"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("num_workers", self.num_workers, minimum=0)
        check_int("seed", self.seed, minimum=0)
        for name in ("effective_batch", "max_steps", "proj_hidden_dim", "proj_output_dim", "queue_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_positive("lr", self.lr)
        check_positive("knn_temperature", self.knn_temperature)
        for name in ("weight_decay", "momentum", "warmup_epochs", "final_lr_ratio", "cooldown_fraction"):
            check_nonnegative(name, getattr(self, name))
        if self.temperature is not None:
            check_positive("temperature", self.temperature)
        if self.crop_min_scale is not None and not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if self.ema_momentum is not None and not 0 <= self.ema_momentum <= 1:
            raise ValueError(f"ema_momentum must be in [0, 1], got {self.ema_momentum}")
        if self.data is not None and not os.path.isdir(self.data):
            raise FileNotFoundError(f"data: {self.data!r} is not a folder (expected an ImageFolder root, "
                                    f"or a folder with train/ and val/)")
        if self.val_data is not None and not os.path.isdir(self.val_data):
            raise FileNotFoundError(f"val_data: {self.val_data!r} is not a folder")
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra must be a dict of method options, got {type(self.extra).__name__}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str) -> "PretrainConfig":
        return cls.from_dict(read_config_file(path))


def read_config_file(path: str) -> Dict[str, Any]:
    """A flat mapping from a .yaml/.yml or .json file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path) as fh:
        text = fh.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text)
    elif path.endswith(".json"):
        values = json.loads(text)
    else:
        raise ValueError(f"config file {path!r} must end in .yaml, .yml or .json")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of option: value, got {type(values).__name__}")
    return values
