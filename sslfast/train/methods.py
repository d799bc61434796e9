"""SSL methods: which encoders see which views, the projector heads, and the loss.

A method is an nn.Module holding the backbone(s), the projector head(s), any momentum copies
and the loss module (whose state, e.g. a MoCo queue, iSogCLR's per-sample temperatures or
CLIP's learnable logit scale, is then saved and restored with the model). One training step is
three calls, split so that the cached-embeddings path can run the middle one in chunks:

    context = method.prepare(views, index)          # inputs per branch; no-grad work (keys, mixing)
    z = [method.encode(branch, x) for branch, x in context.inputs]
    loss = method.loss(z, context)

`forward(task, ...)` routes "step" (the three at once), "encode" and "loss" through the module
itself, so that a DistributedDataParallel wrapper sees every differentiable call.

Heads default to the official sizes (feature dim F of the backbone; `proj_hidden_dim` and
`proj_output_dim` override them):

=================  ==============================================  ============================
method             projector                                       loss (sslfast.losses)
=================  ==============================================  ============================
simclr             F - F - 128, BN + ReLU (SimCLR; lightly)        NTXentLoss(T=0.5; 2+ views)
dcl, dclw          as simclr                                       DCLLoss / DCLWLoss (T=0.1)
isogclr            as simclr                                       ISogCLRLoss (per-sample T)
moco               F - F - 128, ReLU, no BN (MoCo v2)              MoCoLoss (T=0.2), momentum
                                                                   encoder, shuffled key BN
barlowtwins        F - 8192 - 8192 - 8192 (Barlow Twins)           BarlowTwinsLoss (5e-3)
mixed-barlowtwins  as barlowtwins                                  MixedBarlowTwinsLoss
vicreg             F - 8192 - 8192 - 8192 (VICReg)                 VICRegLoss (25, 25, 1)
clip               F - 512 linear, one per encoder (CLIP)          CLIPLoss (learnable scale)
=================  ==============================================  ============================

"clip" trains two encoders of the same architecture with separate weights, one per view (the
two-tower form of CLIP on two views of an image); the k-NN monitor reads the first.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .models import mlp

METHODS = ("simclr", "dcl", "dclw", "isogclr", "moco", "barlowtwins", "mixed-barlowtwins", "vicreg", "clip")


@dataclass
class StepContext:
    """What `prepare` hands to `encode` and `loss`: the inputs of each branch, and extras."""

    inputs: List[Tuple[str, torch.Tensor]]
    index: Optional[torch.Tensor] = None
    extras: Dict[str, object] = field(default_factory=dict)


def _loss_modules():
    try:
        from .. import losses
    except ImportError as exc:  # pragma: no cover - sslfast.losses is part of the package
        raise ImportError(f"sslfast.losses could not be imported ({exc})") from exc
    return losses


def _need(losses, name: str):
    if not hasattr(losses, name):
        raise ImportError(f"sslfast.losses.{name} is not available in this installation of sslfast")
    return getattr(losses, name)


class SSLMethod(nn.Module):
    """Base class: one online encoder (backbone + projector) and a loss over two or more views.

    Args:
        backbone: (B, 3, H, W) -> (B, feature_dim) features.
        feature_dim: width of the backbone's features.
        views: global views per image.
        hidden_dim, output_dim: projector widths (None: the method's official sizes).
        gather_distributed: the loss gathers the embeddings of every rank.
        backend: the sslfast kernel backend of the loss.
        num_samples: size of the training set (methods with per-sample state need it).
        options: method-specific settings (temperature, lambda_param, ...).
        make_backbone: builds another backbone like `backbone` (CLIP's second tower).
    """

    name = "ssl"
    recipe = "simclr"
    min_views = 2
    max_views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, *, views: int = 2, hidden_dim: Optional[int] = None,
                 output_dim: Optional[int] = None, gather_distributed: bool = False, backend: Optional[str] = None,
                 num_samples: int = 0, options: Optional[dict] = None,
                 make_backbone: Optional[Callable[[], nn.Module]] = None):
        super().__init__()
        self.make_backbone = make_backbone
        if not self.min_views <= views <= self.max_views:
            allowed = str(self.min_views) if self.min_views == self.max_views else f"{self.min_views}..{self.max_views}"
            raise ValueError(f"method {self.name!r} takes {allowed} views, got views={views}")
        self.views = views
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.options = dict(options or {})
        self.projector = self.make_projector(feature_dim, hidden_dim, output_dim)
        self.loss_fn = self.make_loss(gather_distributed=gather_distributed, backend=backend,
                                      num_samples=num_samples, output_dim=self.output_dim)
        unused = sorted(set(self.options) - self.consumed_options)
        if unused:
            raise ValueError(f"method {self.name!r} does not take option(s) {unused}")

    # ---- what subclasses define ---------------------------------------------------------------
    consumed_options: frozenset = frozenset()

    def make_projector(self, feature_dim: int, hidden_dim: Optional[int], output_dim: Optional[int]) -> nn.Module:
        raise NotImplementedError

    def make_loss(self, *, gather_distributed: bool, backend: Optional[str], num_samples: int,
                  output_dim: int) -> nn.Module:
        raise NotImplementedError

    def option(self, key: str, default):
        return self.options.get(key, default)

    # ---- the step -------------------------------------------------------------------------------
    def prepare(self, views: List[torch.Tensor], index: torch.Tensor) -> StepContext:
        return StepContext(inputs=[("online", v) for v in views], index=index)

    def encoder(self, branch: str) -> nn.Module:
        if branch != "online":
            raise KeyError(f"method {self.name!r} has no branch {branch!r}")
        return self.online

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def encode(self, branch: str, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(branch)(x)

    def loss(self, embeddings: List[torch.Tensor], context: StepContext) -> torch.Tensor:
        return self.loss_fn(*embeddings)

    def step(self, context: StepContext) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(loss, embeddings) of one batch, every branch encoded in one graph."""
        embeddings = [self.encode(branch, x) for branch, x in context.inputs]
        return self.loss(embeddings, context), embeddings

    def forward(self, task: str, *args):
        """"step" (context), "encode" (branch, x) or "loss" (embeddings, context): one entry
        point, so that DistributedDataParallel sees every differentiable call."""
        if task == "step":
            return self.step(*args)
        if task == "encode":
            return self.encode(*args)
        if task == "loss":
            return self.loss(*args)
        raise ValueError(f"task must be 'step', 'encode' or 'loss', got {task!r}")

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (momentum encoders update here)."""

    @property
    def monitored_backbone(self) -> nn.Module:
        return self.backbone


# ---- contrastive --------------------------------------------------------------------------------

def _simclr_head(feature_dim, hidden_dim, output_dim):
    return mlp([feature_dim, hidden_dim or feature_dim, output_dim or 128])


class SimCLR(SSLMethod):
    name = "simclr"
    max_views = 8
    consumed_options = frozenset({"temperature"})

    def make_projector(self, feature_dim, hidden_dim, output_dim):
        self.output_dim = output_dim or 128
        return _simclr_head(feature_dim, hidden_dim, output_dim)

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        return _need(_loss_modules(), "NTXentLoss")(temperature=self.option("temperature", 0.5),
                                                    gather_distributed=gather_distributed, backend=backend)


class DCL(SimCLR):
    name = "dcl"
    max_views = 2

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        return _need(_loss_modules(), "DCLLoss")(temperature=self.option("temperature", 0.1),
                                                 gather_distributed=gather_distributed, backend=backend)


class DCLW(SimCLR):
    name = "dclw"
    max_views = 2
    consumed_options = frozenset({"temperature", "sigma"})

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        return _need(_loss_modules(), "DCLWLoss")(temperature=self.option("temperature", 0.1),
                                                  sigma=self.option("sigma", 0.5),
                                                  gather_distributed=gather_distributed, backend=backend)


class ISogCLR(SimCLR):
    name = "isogclr"
    max_views = 2
    consumed_options = frozenset({"temperature", "rho", "gamma", "eta", "beta_u", "tau_min", "tau_max"})

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        if num_samples < 1:
            raise ValueError("isogclr keeps one temperature per training sample: num_samples must be the "
                             "size of the training set")
        keys = ("rho", "gamma", "eta", "beta_u", "tau_min", "tau_max")
        kwargs = {k: self.options[k] for k in keys if k in self.options}
        return _need(_loss_modules(), "ISogCLRLoss")(num_samples=num_samples,
                                                     tau_init=self.option("temperature", 0.07), **kwargs,
                                                     gather_distributed=gather_distributed, backend=backend)

    def loss(self, embeddings, context):
        return self.loss_fn(embeddings[0], embeddings[1], context.index)


class MoCo(SSLMethod):
    """MoCo v2: queries from the online encoder on view 0, keys from a momentum copy on view 1.

    The key encoder runs on the batch in a random order split into `bn_splits` groups, so its
    BatchNorm statistics come from other samples than the queries' (MoCo's shuffling BN,
    emulated on one process as in the official CIFAR demo's SplitBatchNorm).
    """

    name = "moco"
    consumed_options = frozenset({"temperature", "queue_size", "ema_momentum", "bn_splits"})

    def make_projector(self, feature_dim, hidden_dim, output_dim):
        self.output_dim = output_dim or 128
        return mlp([feature_dim, hidden_dim or feature_dim, self.output_dim], batch_norm=False)

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        self.momentum = float(self.option("ema_momentum", 0.99))
        self.bn_splits = int(self.option("bn_splits", 8))
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        return _need(_loss_modules(), "MoCoLoss")(temperature=self.option("temperature", 0.2),
                                                  queue_size=int(self.option("queue_size", 4096)), dim=output_dim,
                                                  gather_distributed=gather_distributed, backend=backend)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        order = torch.randperm(x.shape[0], device=x.device)
        splits = max(1, min(self.bn_splits, x.shape[0] // 2))
        shuffled = torch.cat([self.key_projector(self.key_backbone(chunk))
                              for chunk in x[order].chunk(splits)])
        return torch.empty_like(shuffled).index_copy_(0, order, shuffled)

    def prepare(self, views, index):
        return StepContext(inputs=[("online", views[0])], index=index, extras={"keys": self.keys(views[1])})

    def loss(self, embeddings, context):
        return self.loss_fn(embeddings[0], context.extras["keys"].to(embeddings[0].dtype))

    @torch.no_grad()
    def after_step(self, step, total_steps):
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        momentum = list(self.key_backbone.parameters()) + list(self.key_projector.parameters())
        torch._foreach_lerp_(momentum, online, 1.0 - self.momentum)


class CLIP(SSLMethod):
    """Two towers of the same architecture, one per view, with CLIP's symmetric InfoNCE."""

    name = "clip"
    consumed_options = frozenset({"temperature"})

    def make_projector(self, feature_dim, hidden_dim, output_dim):
        if hidden_dim is not None:
            raise ValueError("clip's projections are linear: proj_hidden_dim does not apply")
        self.output_dim = output_dim or 512
        if self.make_backbone is not None:  # a second, independently initialised tower
            self.second_backbone = self.make_backbone()
        else:  # same architecture; each layer's default initialisation
            self.second_backbone = copy.deepcopy(self.backbone)
            for module in self.second_backbone.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.second_projector = nn.Linear(feature_dim, self.output_dim, bias=False)
        return nn.Linear(feature_dim, self.output_dim, bias=False)

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        return _need(_loss_modules(), "CLIPLoss")(init_temperature=self.option("temperature", 0.07),
                                                  gather_distributed=gather_distributed, backend=backend)

    def prepare(self, views, index):
        return StepContext(inputs=[("online", views[0]), ("second", views[1])], index=index)

    def encoder(self, branch):
        if branch == "second":
            return self.second
        return super().encoder(branch)

    def second(self, x):
        return self.second_projector(self.second_backbone(x))


# ---- cross-correlation --------------------------------------------------------------------------

def _barlow_head(feature_dim, hidden_dim, output_dim, *, hidden_bias):
    # Barlow Twins' projector: Linear(bias=False) + BN + ReLU twice, then Linear(bias=False);
    # VICReg's is the same with biases in the hidden Linear layers.
    hidden = hidden_dim or 8192
    return mlp([feature_dim, hidden, hidden, output_dim or 8192], hidden_bias=hidden_bias, last_bias=False)


class BarlowTwins(SSLMethod):
    name = "barlowtwins"
    recipe = "barlowtwins"
    consumed_options = frozenset({"lambda_param"})

    def make_projector(self, feature_dim, hidden_dim, output_dim):
        self.output_dim = output_dim or 8192
        return _barlow_head(feature_dim, hidden_dim, output_dim, hidden_bias=False)

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        return _need(_loss_modules(), "BarlowTwinsLoss")(lambda_param=self.option("lambda_param", 5e-3),
                                                         gather_distributed=gather_distributed, backend=backend)


class MixedBarlowTwins(BarlowTwins):
    """Barlow Twins plus the regulariser of a mixed input alpha x0 + (1 - alpha) x1[perm]."""

    name = "mixed-barlowtwins"
    consumed_options = frozenset({"lambda_param", "mixup_loss_scale"})

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        kwargs = {k: self.options[k] for k in ("lambda_param", "mixup_loss_scale") if k in self.options}
        return _need(_loss_modules(), "MixedBarlowTwinsLoss")(gather_distributed=gather_distributed,
                                                              backend=backend, **kwargs)

    def prepare(self, views, index):
        mixed, perm, alpha = type(self.loss_fn).mix(views[0], views[1])
        return StepContext(inputs=[("online", views[0]), ("online", views[1]), ("online", mixed)], index=index,
                           extras={"perm": perm, "alpha": float(alpha)})

    def loss(self, embeddings, context):
        return self.loss_fn(embeddings[0], embeddings[1], embeddings[2], context.extras["perm"],
                            context.extras["alpha"])


class VICReg(SSLMethod):
    name = "vicreg"
    recipe = "barlowtwins"  # VICReg uses the Barlow Twins / BYOL augmentations
    consumed_options = frozenset({"lambda_param", "mu_param", "nu_param"})

    def make_projector(self, feature_dim, hidden_dim, output_dim):
        self.output_dim = output_dim or 8192
        return _barlow_head(feature_dim, hidden_dim, output_dim, hidden_bias=True)

    def make_loss(self, *, gather_distributed, backend, num_samples, output_dim):
        kwargs = {k: self.options[k] for k in ("lambda_param", "mu_param", "nu_param") if k in self.options}
        return _need(_loss_modules(), "VICRegLoss")(gather_distributed=gather_distributed, backend=backend, **kwargs)


METHOD_CLASSES = {cls.name: cls for cls in (SimCLR, DCL, DCLW, ISogCLR, MoCo, BarlowTwins, MixedBarlowTwins,
                                            VICReg, CLIP)}
assert tuple(METHOD_CLASSES) == METHODS


def build_method(name: str, backbone: nn.Module, feature_dim: int, **kwargs) -> SSLMethod:
    """The method `name` around `backbone` (see SSLMethod for the keyword arguments).

    Example:
        >>> import torch
        >>> from sslfast.train.methods import build_method
        >>> from sslfast.train.models import build_backbone
        >>> net, dim = build_backbone("resnet18", stem="cifar")
        >>> method = build_method("simclr", net, dim, options={"temperature": 0.2})
        >>> views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
        >>> context = method.prepare(views, torch.arange(4))
        >>> z = [method.encode(branch, x) for branch, x in context.inputs]
        >>> method.loss(z, context).shape, z[0].shape
        (torch.Size([]), torch.Size([4, 128]))
    """
    if name not in METHOD_CLASSES:
        raise ValueError(f"method must be one of {list(METHODS)}, got {name!r}")
    return METHOD_CLASSES[name](backbone, feature_dim, **kwargs)
