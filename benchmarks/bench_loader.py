"""Loader throughput: images/s of two augmented 224x224 views from ImageNet-sized JPEGs.

Providers (same number of CPU threads / DataLoader workers everywhere):

  sslfast-dali-cpu       DaliSSLLoader, DALI pipeline on CPU threads
  sslfast-dali-gpu       DaliSSLLoader, nvJPEG "mixed" decoding + GPU augmentation (CUDA only)
  sslfast-torch          DaliSSLLoader's PIL/PyTorch DataLoader fallback
  torchvision-dataloader ImageFolder + torchvision.transforms.v2 SimCLR views on PIL images
                         (RandomResizedCrop, flip, ColorJitter p=0.8, grayscale p=0.2,
                         GaussianBlur(23) p=0.5, normalise), DataLoader(num_workers=threads)
  lightly-dataloader     the same through lightly's SimCLRTransform (PIL blur)
  resnet50-simclr-step   (CUDA only) the rate at which a ResNet-50 SimCLR training step
                         (bf16 autocast, channels_last, 2 views) consumes images on that GPU

The bench set is ~2000 500x375 JPEGs (smooth colour fields plus texture, quality 90, sizes like
ImageNet's) generated once under $SSLFAST_CACHE_DIR/bench_loader_jpegs (default ~/.cache/sslfast),
never in git. Each provider runs a few warm-up batches (which start its persistent workers),
then `--repeats` timed epochs over the whole set, from creating the epoch's iterator to its
last batch; the providers' epochs are interleaved so that changes in the machine's load hit
them alike. Rows hold the median and 20th/80th percentiles of images/s over the epochs, and
the per-epoch ratios to the torchvision DataLoader measured in the same round. On GPU the
torchvision/lightly batches are moved to the GPU, as a training loop would.

    python benchmarks/bench_loader.py                      # CPU: DALI CPU vs torchvision, 2 threads
    python benchmarks/bench_loader.py --threads 8 --batch 256   # on a GPU machine: adds DALI GPU
                                                                # and the ResNet-50 step rate

Ready to run as is on a GPU machine with DALI installed; the GPU rows have not been measured
yet (no GPU was lent while this was written).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, Row  # noqa: E402

BENCH_SIZE = (500, 375)  # width, height: a typical ImageNet photo


def bench_image_dir(n: int = 2000, seed: int = 0) -> str:
    """Folder of n 500x375 JPEGs in 10 class subfolders, generated once and cached."""
    from PIL import Image

    from sslfast.data.files import default_cache_dir

    root = os.path.join(default_cache_dir(), "bench_loader_jpegs", f"n{n}-s{seed}")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    width, height = BENCH_SIZE
    for k in range(n):
        folder = os.path.join(root, f"class{k % 10:02d}")
        os.makedirs(folder, exist_ok=True)
        # Smooth colour field (bilinear upsampling of coarse noise) + fine texture: JPEGs of
        # 40-120 KB, like ImageNet's, so decoding costs what it costs on real photos.
        coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR),
                           dtype=np.float32)
        texture = rng.normal(0, rng.uniform(8, 30), size=(height, width, 1)).astype(np.float32)
        pixels = np.clip(field + texture, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{k:05d}.jpg"), quality=90)
    open(done, "w").close()
    return root


def torchvision_views(size: int = 224):
    import torchvision.transforms.v2 as T

    one = T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    return TwoViews(one)


class TwoViews:
    """Two independent draws of a transform (a class, so that DataLoader workers can unpickle it)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return [self.transform(img), self.transform(img)]


def lightly_views(size: int = 224):
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=size)


def _dataloader(root: str, transform, batch: int, threads: int, pin: bool):
    import torchvision

    from sslfast.data.torch_backend import worker_context

    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    # Persistent workers, started from a clean forkserver once DALI runs in this process (as
    # the sslfast fallback does): forked next to DALI's threads, workers can crash.
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=threads,
                                       drop_last=False, pin_memory=pin, prefetch_factor=2,
                                       persistent_workers=True, multiprocessing_context=worker_context())


def make_provider(name: str, root: str, args, device: torch.device):
    """(iterable whose iteration is one epoch, batch -> number of images moved to `device`, close)."""
    from sslfast.data import DaliSSLLoader

    gpu = device.type == "cuda"
    if name.startswith("sslfast-"):
        backend, where = {"sslfast-dali-cpu": ("dali", "cpu"), "sslfast-dali-gpu": ("dali", "gpu"),
                          "sslfast-torch": ("torch", "gpu" if gpu else "cpu")}[name]
        loader = DaliSSLLoader(root, args.batch, recipe="simclr", crop_size=224, device=where,
                               num_threads=args.threads, backend=backend, seed=1)

        def consume(batch):
            views = [v.to(device, non_blocking=True) for v in batch["views"]]
            return len(views[0])
        return loader, consume, loader.close
    transform = torchvision_views() if name == "torchvision-dataloader" else lightly_views()
    loader = _dataloader(root, transform, args.batch, args.threads, pin=gpu)

    def consume(batch):
        views, _ = batch
        views = [v.to(device, non_blocking=True) for v in views]
        return len(views[0])
    return loader, consume, lambda: None


def time_epoch(loader, consume, max_batches=None) -> float:
    """Images/s of one epoch, from creating its iterator (worker start-up, prefetch) to its end."""
    seen, start = 0, time.perf_counter()
    for k, batch in enumerate(loader):
        seen += consume(batch)
        if max_batches is not None and k + 1 >= max_batches:
            break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def resnet50_simclr_rate(batch: int, repeats: int) -> list:
    """Images/s a ResNet-50 SimCLR training step consumes (2 views of 224x224 per image)."""
    import torch.nn.functional as F
    import torchvision

    def loss_fn(z0, z1, temperature=0.5):  # eager NT-Xent: the step's cost is the ResNet's
        z = F.normalize(torch.cat([z0, z1]), dim=1)
        logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
        n = len(z0)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, target)

    model = torchvision.models.resnet50(num_classes=128).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    views = [torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last) for _ in range(2)]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(views[0]).float(), model(views[1]).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        rates.append(10 * batch / (time.perf_counter() - start))
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads / DataLoader workers per provider")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="warm-up batches per provider")
    parser.add_argument("--dataset-size", type=int, default=2000)
    parser.add_argument("--providers", default="auto", help="comma-separated, or auto")
    parser.add_argument("--tag", default=None, help="results file tag (default: the device)")
    args = parser.parse_args(argv)

    from sslfast.data.dali_backend import dali_unavailable_reason

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = bench_image_dir(args.dataset_size)
    if args.providers == "auto":
        providers = ["torchvision-dataloader", "lightly-dataloader", "sslfast-torch"]
        if dali_unavailable_reason() is None:
            providers.insert(0, "sslfast-dali-cpu")
            if device.type == "cuda":
                providers.insert(0, "sslfast-dali-gpu")
    else:
        providers = args.providers.split(",")

    results = Results("loader", device)
    shape = f"B={args.batch},views=2x224x224,threads={args.threads},images={args.dataset_size}x500x375jpeg"
    made = {name: make_provider(name, root, args, device) for name in providers}
    for name, (loader, consume, _) in made.items():  # warm-up: imports, caches, DALI build
        time_epoch(loader, consume, max_batches=args.warmup)
    rates = {name: [] for name in providers}
    # Passes interleave the providers, so that a change in the machine's load hits them alike.
    for _ in range(args.repeats):
        for name, (loader, consume, _) in made.items():
            rates[name].append(time_epoch(loader, consume))
            print(f"  {name:<24} pass {len(rates[name])}: {rates[name][-1]:8.1f} img/s", flush=True)
    medians = {}
    base = rates.get("torchvision-dataloader")
    for name in providers:
        got = sorted(rates[name])
        q = lambda f: float(np.quantile(got, f))  # noqa: E731
        medians[name] = q(0.5)
        extra = {"threads": args.threads, "passes": [round(r, 1) for r in rates[name]]}
        if base:
            extra["ratio_vs_torchvision_per_pass"] = [round(a / b, 3) for a, b in zip(rates[name], base)]
        results.add(Row("ssl_loader", name, "epoch", shape, "float32", "images_per_s", q(0.5), q(0.2), q(0.8),
                        extra=extra))
        print(f"{name:<24} {q(0.5):8.1f} img/s  (p20 {q(0.2):.1f}, p80 {q(0.8):.1f})", flush=True)
    for _, _, close in made.values():
        close()
    if device.type == "cuda":
        rates = sorted(resnet50_simclr_rate(args.batch, args.repeats))
        medians["resnet50-simclr-step"] = float(np.median(rates))
        results.add(Row("resnet50_simclr_step", "torch-eager", "fwd+bwd", f"B={args.batch},views=2x224x224",
                        "bfloat16", "images_per_s", float(np.median(rates)), float(np.quantile(rates, 0.2)),
                        float(np.quantile(rates, 0.8))))
        print(f"{'resnet50-simclr-step':<24} {medians['resnet50-simclr-step']:8.1f} img/s consumed")
    for name in providers:
        if base and name != "torchvision-dataloader":
            per_pass = [a / b for a, b in zip(rates[name], base)]
            print(f"  {name} / torchvision-dataloader = {medians[name] / medians['torchvision-dataloader']:.2f}x "
                  f"(per round: {', '.join(f'{r:.2f}' for r in per_pass)})")
    path = results.save(tag=args.tag)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
