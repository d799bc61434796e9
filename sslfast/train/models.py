"""Backbones for pretraining: torchvision ResNets and a small Vision Transformer.

Every backbone maps (B, 3, H, W) images to (B, feature_dim) features (no classifier head) and
is built by `build_backbone(name, image_size=..., stem=...)`:

* "resnet18", "resnet34", "resnet50": torchvision's architectures, randomly initialised, with
  `fc` replaced by identity. `stem="imagenet"` keeps the 7x7/2 convolution + max-pool (for
  images of 96 px and more); `stem="cifar"` uses a 3x3/1 convolution and no pool, the usual
  choice for 32-64 px images (SimCLR's CIFAR-10 setup, solo-learn's cifar backbones), at 16x
  the activation cost of the ImageNet stem for the same image size.
* "vit-tiny", "vit-small", "vit-base": pre-norm ViTs (Dosovitskiy et al. 2021; DeiT sizes) with a
  class token and learned position embeddings. Attention is xformers' memory-efficient kernel
  when xformers is installed and the tensors are on CUDA, torch's scaled_dot_product_attention
  otherwise (which itself picks flash/efficient kernels on CUDA and the math path on CPU).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validation import check_choice, check_int

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
VITS = {  # name: (embed dim, depth, heads)
    "vit-tiny": (192, 12, 3),
    "vit-small": (384, 12, 6),
    "vit-base": (768, 12, 12),
}
BACKBONES = tuple(RESNETS) + tuple(VITS)
STEMS = ("imagenet", "cifar")


def build_backbone(name: str, *, image_size: int = 224, stem: str = "imagenet",
                   patch_size: Optional[int] = None) -> Tuple[nn.Module, int]:
    """(backbone, feature_dim) for a backbone name.

    Args:
        name: one of BACKBONES.
        image_size: training image side (the ViT's position embeddings are sized for it).
        stem: ResNet stem, "imagenet" (7x7/2 conv + max-pool) or "cifar" (3x3/1 conv, no pool).
        patch_size: ViT patch side (default 16, or 8 for images under 128 px).

    Example:
        >>> import torch
        >>> from sslfast.train.models import build_backbone
        >>> net, dim = build_backbone("resnet18", stem="cifar")
        >>> net(torch.randn(2, 3, 32, 32)).shape, dim
        (torch.Size([2, 512]), 512)
        >>> vit, dim = build_backbone("vit-tiny", image_size=32)
        >>> vit(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 192])
    """
    check_choice("backbone", name, BACKBONES)
    check_int("image_size", image_size, minimum=8)
    if name in RESNETS:
        check_choice("stem", stem, STEMS)
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        return net, RESNETS[name]
    dim, depth, heads = VITS[name]
    if patch_size is None:
        patch_size = 16 if image_size >= 128 else 8 if image_size >= 32 else 4
    return VisionTransformer(image_size, patch_size, dim, depth, heads), dim


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, heads, L, d) tensors.

    xformers' memory_efficient_attention on CUDA when installed (it takes (B, L, heads, d)),
    torch's scaled_dot_product_attention otherwise.
    """
    if q.is_cuda:
        try:
            from xformers.ops import memory_efficient_attention
        except ImportError:
            pass
        else:
            out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Pre-norm ViT returning the final class-token feature (after the last LayerNorm).

    Images whose side differs from `image_size` are accepted: the position embeddings of the
    patch grid are resized bicubically (as DINO's interpolate_pos_encoding does).
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        if dim % heads:
            raise ValueError(f"embedding dim {dim} must be divisible by heads {heads}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._position_embedding(h // self.patch_size, w // self.patch_size)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


def mlp(dims, *, batch_norm: bool = True, hidden_bias: Optional[bool] = None, last_bias: bool = True) -> nn.Sequential:
    """Linear (+ BatchNorm) + ReLU layers through `dims`, the last one a plain Linear.

    Hidden Linear layers have a bias only without BatchNorm unless `hidden_bias` says otherwise
    (lightly's ProjectionHead convention). mlp([2048, 8192, 8192, 8192], last_bias=False) is
    Barlow Twins' projector.
    """
    dims = list(dims)
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {dims}")
    if hidden_bias is None:
        hidden_bias = not batch_norm
    layers = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(d_in, d_out, bias=hidden_bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

