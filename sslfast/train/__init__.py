"""Pretraining loop, models, optimisers and schedules behind `sslfast pretrain`.

    from sslfast.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig(method="vicreg", epochs=20))   # same as the command line
    print(result.initial_metrics["knn_top1"], result.final_metrics["knn_top1"])

Parts: `config` (every setting), `trainer` (the loop: DDP, cached embeddings, checkpoints,
exact resume), `methods` (SSL methods around sslfast.losses), `models` (backbones, heads),
`optim` (LARS, schedules), `monitor` (k-NN, RankMe, alignment/uniformity, logs, plot),
`checkpoint` (atomic files, RNG state, stop signals), `evaluate` (`sslfast knn`).
"""
from .config import PretrainConfig
from .methods import METHODS, build_method
from .models import BACKBONES, build_backbone
from .optim import LARS, LRSchedule
from .trainer import NonFiniteLossError, PretrainResult, Trainer, pretrain

__all__ = ["PretrainConfig", "pretrain", "Trainer", "PretrainResult", "NonFiniteLossError", "METHODS",
           "build_method", "BACKBONES", "build_backbone", "LARS", "LRSchedule"]
