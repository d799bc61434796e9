"""`sslfast preview-aug IMAGE --out grid.png`: see what a random-field setting does.

The grid shows, top row, the image and the nine parameter fields sampled for the first view of
the middle preset (diverging colour map, symmetric limits, units in the titles); then one row
per strength preset: a checkerboard warped by the first view's geometry, followed by views of
the image at that strength. Every view is a fresh draw from one seeded generator, so a seed
reproduces the picture.

    python -m sslfast.augment.preview photo.jpg --out grid.png
    python -m sslfast.augment.preview photo.jpg --presets mild,strong --views 6 --seed 3
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import torch

from . import params as P
from .fields import upsample_field_grid
from .random_field import PRESETS, RandomFieldAugment, apply_random_fields

_FIELD_TITLES = {
    "translate_x": "translate x (px)", "translate_y": "translate y (px)", "rotate": "rotate (deg)",
    "scale": "log scale", "shear": "shear (deg)", "brightness": "brightness v", "contrast": "contrast v",
    "saturation": "saturation v", "hue": "hue (turns)",
}


def load_image(path: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) uint8: the image's shorter side resized to `size`, centre-cropped."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        resized = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                             Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).unsqueeze(0).contiguous()


def checkerboard(size: int, squares: int = 8) -> torch.Tensor:
    """(1, 3, size, size) uint8 black-and-white checkerboard."""
    idx = torch.arange(size) * squares // size
    board = ((idx[:, None] + idx[None, :]) % 2).to(torch.uint8) * 255
    return board.expand(1, 3, size, size).contiguous()


def render(image: torch.Tensor, presets: Sequence[str], views: int, seed: int, length_scale: Optional[float],
           backend: Optional[str]):
    """The preview figure (matplotlib Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    size = image.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    columns = max(1 + views, 1 + P.NUM_FIELDS)
    fig = Figure(figsize=(1.6 * columns, 1.75 * (1 + len(presets))), dpi=100)
    axes = fig.subplots(1 + len(presets), columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def show(ax, img, title=None):
        ax.imshow(img[0].permute(1, 2, 0).numpy())
        if title:
            ax.set_title(title, fontsize=8)

    show(axes[0, 0], image, "original")
    batch = image.expand(views, -1, -1, -1).contiguous()
    rows = []
    for name in presets:
        overrides = {} if length_scale is None else {"length_scale": length_scale}
        aug = RandomFieldAugment.preset(name, generator=gen, out_dtype=torch.uint8, backend=backend, **overrides)
        params = aug.sample_params(batch)
        rows.append((name, aug, params, aug.apply(batch, params)))
    _, middle_aug, middle, _ = rows[len(rows) // 2]
    theta = upsample_field_grid(middle.fields[0], size, size)
    for k, name in enumerate(P.FIELD_NAMES):
        values = theta[k]
        if name in ("rotate", "shear"):
            values = values * (180.0 / math.pi)
        limit = float(values.abs().max()) or 1.0
        ax = axes[0, 1 + k]
        ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{_FIELD_TITLES[name]}\n+-{limit:.3g}", fontsize=7)
    for r, (name, aug, params, out) in enumerate(rows, start=1):
        geometry = P.RandomFieldParams(fields=params.fields[:1], flags=params.flags & P.F_GEOMETRY)
        board = apply_random_fields(checkerboard(size), geometry, padding=aug.padding, out_dtype=torch.uint8,
                                    backend=backend)
        show(axes[r, 0], board, f"{name}: geometry")
        for v in range(views):
            show(axes[r, 1 + v], out[v:v + 1], f"{name} view {v + 1}" if v == 0 else None)
    ell = middle_aug.config.length_scale
    fig.suptitle(f"random-field augmentation, seed {seed}; fields of the first '{rows[len(rows) // 2][0]}' view "
                 f"(length scale {ell:g} of the image)", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sslfast preview-aug", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="an image file PIL can read")
    parser.add_argument("--out", default="grid.png", help="output PNG (default: grid.png)")
    parser.add_argument("--size", type=int, default=224, help="side of the square views (default: 224)")
    parser.add_argument("--views", type=int, default=9, help="views per strength (default: 9)")
    parser.add_argument("--presets", default="mild,medium,strong",
                        help=f"comma-separated strengths from {sorted(PRESETS)} (default: mild,medium,strong)")
    parser.add_argument("--length-scale", type=float, default=None,
                        help="override the presets' length scale (fraction of the image side)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="auto (default), numba or reference")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: 100)")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if not presets or unknown:
        parser.error(f"--presets must name presets from {sorted(PRESETS)}, got {args.presets!r}")
    if args.size < 8 or args.views < 1:
        parser.error(f"--size must be >= 8 and --views >= 1, got {args.size} and {args.views}")
    try:
        image = load_image(args.image, args.size)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read image {args.image!r}: {exc}")
    fig = render(image, presets, args.views, args.seed, args.length_scale, args.backend)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
