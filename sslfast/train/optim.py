r"""Optimisers and learning-rate schedules for pretraining.

* `LARS` (You et al. 2017, arXiv 1708.03888) in the form of the official Barlow Twins code
  (facebookresearch/barlowtwins, main.py, class LARS), which SimCLR, BYOL and VICReg also use:

      g <- grad + wd * w                                   (groups with weight decay)
      g <- g * eta * ||w|| / ||g||   if ||w|| > 0 and ||g|| > 0   (groups with adaptation)
      m <- momentum * m + g ;   w <- w - lr * m

  Biases and normalisation parameters (every 1-D parameter) get neither weight decay nor the
  adaptation, as in that code and in SimCLR.
* AdamW (torch.optim.AdamW) with the same parameter split.
* Schedules: a pure function of the step, so that resuming at step t gives the same rate:
  "cosine" (linear warmup, then cosine decay to final_lr_ratio * peak) and "infinite"
  (linear warmup, a constant plateau, then a cooldown over the last cooldown_fraction of the
  steps; the 1 - sqrt shape of Hägele et al. 2024, arXiv 2405.18392, by default). A run with
  the infinite schedule can be extended from any checkpoint taken on the plateau.
"""
from __future__ import annotations

import math
from typing import Iterable, List

import torch
import torch.nn as nn

from .._validation import check_choice, check_int, check_nonnegative, check_positive

OPTIMIZERS = ("lars", "adamw", "sgd")
SCHEDULES = ("cosine", "infinite", "constant")
COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (Barlow Twins' implementation).

    Args:
        params: parameters or parameter groups; a group may set `weight_decay` and
            `lars_adaptation` (bool) of its own (see `parameter_groups`).
        lr: learning rate.
        momentum: heavy-ball momentum.
        weight_decay: L2 penalty added to the gradient before the adaptation.
        eta: trust coefficient.

    Example:
        >>> import torch
        >>> from sslfast.train.optim import LARS
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
        >>> w.grad = torch.tensor([2.0, 0.0, 0.0])
        >>> opt.step()
        >>> [round(v, 4) for v in w.tolist()]  # step of eta * ||w|| = 0.1732 along the gradient
        [0.8268, 1.0, 1.0]
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 1e-3):
        check_positive("lr", lr)
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_positive("eta", eta)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_adaptation=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    param_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["eta"] * param_norm / update_norm, torch.ones_like(param_norm))
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float) -> List[dict]:
    """Two groups: weights (decayed, LARS-adapted) and 1-D parameters (biases, norms: neither).

    Parameters shared between modules are listed once; frozen ones (requires_grad=False) are left out.
    """
    seen, decayed, plain = set(), [], []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (plain if p.ndim <= 1 else decayed).append(p)
    groups = [{"params": decayed, "weight_decay": weight_decay, "lars_adaptation": True}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars_adaptation": False})
    return groups


def build_optimizer(name: str, groups: List[dict], *, lr: float, weight_decay: float,
                    momentum: float = 0.9, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """LARS, AdamW or SGD over `parameter_groups(...)`; `lr` is the peak rate (schedules scale it)."""
    check_choice("optimizer", name, OPTIMIZERS)
    check_positive("lr", lr)
    check_nonnegative("weight_decay", weight_decay)
    for group in groups:
        group["base_lr"] = lr
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    groups = [{k: v for k, v in g.items() if k != "lars_adaptation"} for g in groups]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class LRSchedule:
    """Learning-rate multiplier in [0, 1] as a pure function of the step (resume-safe).

    Args:
        kind: "cosine", "infinite" (warmup, plateau, cooldown) or "constant" (warmup, plateau).
        total_steps: steps of the whole run.
        warmup_steps: linear warmup from 1/warmup_steps to 1.
        final_lr_ratio: the multiplier at the last step ("cosine" and "infinite").
        cooldown_fraction: share of the steps in the cooldown ("infinite").
        cooldown_shape: "1-sqrt" (Hägele et al. 2024), "linear" or "cosine".

    Example:
        >>> from sslfast.train.optim import LRSchedule
        >>> s = LRSchedule("infinite", total_steps=100, warmup_steps=10, cooldown_fraction=0.2)
        >>> [round(s(t), 3) for t in (0, 9, 50, 79, 80, 89, 99)]  # cooldown over the last 20 steps
        [0.1, 1.0, 1.0, 1.0, 0.776, 0.293, 0.0]
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, *, final_lr_ratio: float = 0.0,
                 cooldown_fraction: float = 0.2, cooldown_shape: str = "1-sqrt"):
        self.kind = check_choice("schedule", kind, SCHEDULES)
        self.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.final_lr_ratio = check_nonnegative("final_lr_ratio", final_lr_ratio)
        if self.final_lr_ratio > 1:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio}")
        self.cooldown_fraction = check_nonnegative("cooldown_fraction", cooldown_fraction)
        if self.cooldown_fraction > 1:
            raise ValueError(f"cooldown_fraction must be in [0, 1], got {cooldown_fraction}")
        self.cooldown_shape = check_choice("cooldown_shape", cooldown_shape, COOLDOWN_SHAPES)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        floor = self.final_lr_ratio
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps - 1)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        cooldown_steps = int(round(self.cooldown_fraction * self.total_steps))
        cooldown_start = self.total_steps - cooldown_steps
        if step < cooldown_start or cooldown_steps == 0:
            return 1.0
        progress = min(1.0, (step - cooldown_start + 1) / cooldown_steps)
        if self.cooldown_shape == "1-sqrt":
            decay = 1 - math.sqrt(progress)
        elif self.cooldown_shape == "linear":
            decay = 1 - progress
        else:
            decay = 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * decay

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr to its base_lr times the multiplier; return the first group's lr."""
        factor = self(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return optimizer.param_groups[0]["lr"]
