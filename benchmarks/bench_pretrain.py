"""Throughput of `sslfast pretrain` against the same model fed by a torchvision DataLoader and
trained with an eager PyTorch NT-Xent.

Providers (same model, head, batch, precision and number of CPU workers):

  sslfast            the real `sslfast pretrain` loop (sslfast.train.Trainer): DaliSSLLoader
                     (DALI "mixed" nvJPEG decoding + GPU augmentation on CUDA, DALI CPU here),
                     SimCLR with sslfast's NTXentLoss (fused kernel where dispatch picks one),
                     bf16 autocast and channels_last on CUDA
  torchvision-eager  torchvision ImageFolder + transforms.v2 SimCLR views (RandomResizedCrop,
                     flip, ColorJitter p=0.8, grayscale p=0.2, GaussianBlur p=0.5, normalise) in a
                     DataLoader(num_workers, pin_memory), and NT-Xent written in eager PyTorch
                     (normalise, matmul, mask the diagonal, cross_entropy)

Metric: images per second (source images; each gives two views) over the timed steps, after
warm-up steps; p50/p20/p80 over per-step rates. The images are 500x375 JPEGs in 10 class
folders (smooth colour fields with texture, quality 90), generated once under
$SSLFAST_CACHE_DIR/bench_pretrain (default ~/.cache/sslfast).

    python benchmarks/bench_pretrain.py            # CUDA: ResNet-50, 224 px, batch 256, bf16
                                                   # CPU:  ResNet-18, 64 px, batch 32, fp32
    python benchmarks/bench_pretrain.py --backbone resnet18 --batch 128 --steps 30

The GPU case is the comparison of issue 6 and is ready to run as is on a CUDA machine with
DALI; it has not been measured yet (no GPU was available while it was written). On a CPU the
same script runs the CPU-sized case.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, Row  # noqa: E402

IMAGE_SIZE = (500, 375)  # width, height: a typical ImageNet photo
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def jpeg_folder(count: int, seed: int = 0) -> str:
    """<cache>/bench_pretrain/n<count>/{train,val}/class<k>/*.jpg, generated once (val: 10 per class)."""
    from PIL import Image

    cache = os.environ.get("SSLFAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sslfast")
    root = os.path.join(cache, "bench_pretrain", f"n{count}-s{seed}")
    if os.path.isfile(os.path.join(root, ".complete")):
        return root
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    for split, n in (("train", count), ("val", 100)):
        for k in range(n):
            folder = os.path.join(root, split, f"class{k % 10}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
            pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{k:06d}.jpg"), quality=90)
    open(os.path.join(root, ".complete"), "w").close()
    return root


def rates(times: list, images_per_step: int) -> tuple:
    per_step = sorted(images_per_step / dt for dt in np.diff(times) if dt > 0)
    if not per_step:
        return None, None, None
    pick = lambda q: float(per_step[min(len(per_step) - 1, int(q * (len(per_step) - 1) + 0.5))])  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def bench_sslfast(args, root: str, device: torch.device) -> tuple:
    """Images/s of the sslfast pretraining loop, read from its per-step log."""
    from sslfast.train.config import PretrainConfig
    from sslfast.train.trainer import pretrain

    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(
            data=root, method="simclr", backbone=args.backbone, crop_size=args.crop, batch=args.batch,
            epochs=1000, max_steps=args.warmup + args.steps, optimizer="lars", lr=0.3, num_workers=args.workers,
            device=device.type, precision=args.precision, knn_train_samples=100, knn_val_samples=50, knn_every=1000,
            log_every=1, progress=False, tensorboard=False, out=os.path.join(out, "run"))
        pretrain(config, log=lambda message: None)
        with open(os.path.join(out, "run", "steps.csv")) as fh:
            times = [float(r["time_s"]) for r in csv.DictReader(fh)]
    return rates(times[args.warmup:], args.batch)


def _eager_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
    n = z0.shape[0]
    logits = (z @ z.T) / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class _TwoViews:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def bench_torchvision(args, root: str, device: torch.device) -> tuple:
    import torchvision
    import torchvision.transforms.v2 as T

    from sslfast.train.models import build_backbone, mlp
    from sslfast.train.optim import build_optimizer, parameter_groups

    transform = T.Compose([
        T.RandomResizedCrop(args.crop, scale=(0.08, 1.0), antialias=True), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=_TwoViews(transform))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    backbone, dim = build_backbone(args.backbone, image_size=args.crop, stem="imagenet")
    projector = mlp([dim, dim, 128])  # SimCLR's head, as sslfast.train.methods builds it
    model = torch.nn.Sequential(backbone, projector).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer("lars", parameter_groups([model], 1e-6), lr=0.3 * args.batch / 256, weight_decay=1e-6)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    times, step = [], 0
    while step < args.warmup + args.steps:
        for (v0, v1), _ in loader:
            v0 = v0.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            v1 = v1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = _eager_nt_xent(model(v0), model(v1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss)  # the sslfast loop also reads the loss every step
            times.append(time.perf_counter())
            step += 1
            if step >= args.warmup + args.steps:
                break
    return rates(times[args.warmup:], args.batch)


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50" if cuda else "resnet18")
    parser.add_argument("--crop", type=int, default=224 if cuda else 64, help="view side in pixels")
    parser.add_argument("--batch", type=int, default=256 if cuda else 32, help="images per step (two views each)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    parser.add_argument("--steps", type=int, default=50 if cuda else 6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10 if cuda else 2, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="DALI threads / DataLoader workers")
    parser.add_argument("--images", type=int, default=8192 if cuda else 512, help="training images to generate")
    parser.add_argument("--providers", default="sslfast,torchvision-eager")
    parser.add_argument("--tag", default=None, help="suffix of the result files (default: the device)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    root = jpeg_folder(args.images)
    results = Results("pretrain", device)
    shape = f"{args.backbone} {args.crop}px batch {args.batch}x2 views"
    runners = {"sslfast": bench_sslfast, "torchvision-eager": bench_torchvision}
    for provider in [p.strip() for p in args.providers.split(",") if p.strip()]:
        if provider not in runners:
            parser.error(f"unknown provider {provider!r}; known: {list(runners)}")
        p50, p20, p80 = runners[provider](args, root, device)
        results.add(Row(op="pretrain-step", provider=provider, mode="fwd+bwd", shape=shape, dtype=args.precision,
                        metric="images_per_s", p50=p50, p20=p20, p80=p80,
                        extra={"workers": args.workers, "steps": args.steps, "warmup": args.warmup}))
        print(f"{provider:<18} {shape}: {p50:.1f} images/s (p20 {p20:.1f}, p80 {p80:.1f})", flush=True)
    print("saved", results.save(tag=args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
