"""Random-field augmentation benchmarks (issue 4). Runs as is on a CPU or a CUDA machine.

CPU (`--device cpu`): the numba kernel vs the PyTorch reference on uint8 batches of 64 x 64 and
224 x 224 -> ImageNet-normalised float32, "medium" preset (every parameter active). Two modes:
"apply" (the same pre-sampled fields for both: the kernels' work) and "sample+apply" (what a
user pays per call). Both run with the same number of threads (--threads, default: torch's).
Both wall time (torch.utils.benchmark, p50; median over 3 rounds that alternate the providers)
and the least process CPU time per call (also over alternating rounds) are recorded, with the
1-minute load average before and after each case: on a machine whose cores are shared with
other jobs the single-thread CPU time is the steadier figure. Bar: numba >= 3x the reference.

GPU (`--device cuda`): batch 256 of 224 x 224 RGB uint8 -> normalised float32:
  sslfast-cuda, sslfast-triton     fused kernels, fast fields (sampling timed separately too)
  sslfast-reference-spectral       FFT fields + grid_sample + colour ops (the issue's baseline)
  sslfast-reference                fast fields + grid_sample + colour ops
  torchvision-v2                   per-image RandomAffine + ColorJitter + Normalize (global only)
plus the device's copy bandwidth (clone of 1 GiB), the kernels' effective bandwidth on the bytes
that must move (read B*3*H*W uint8, write B*3*H*W float32) and its fraction of the copy
bandwidth, and a ResNet-50 fwd+bwd step (bf16 autocast, channels_last, SGD) on the same batch.
Bars: >= 10x the reference; >= 50% of the copy bandwidth; < 5% of the ResNet-50 step.

    python benchmarks/bench_augment.py --device cpu
    python benchmarks/bench_augment.py --device cuda
Results go to benchmarks/results/bench_augment-<device>.{json,csv}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Results, Row, peak_cuda_memory, time_ms  # noqa: E402
from sslfast import dispatch  # noqa: E402
from sslfast.augment import IMAGENET_MEAN, IMAGENET_STD, PRESETS, RandomFieldAugment  # noqa: E402

OP = "random_field"


def _augment(backend, sampler="fast", seed=0):
    return RandomFieldAugment(**PRESETS["medium"], sampler=sampler, generator=seed, mean=IMAGENET_MEAN,
                              std=IMAGENET_STD, backend=backend)


def _images(batch, size, device):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, size, size), generator=gen, dtype=torch.uint8).to(device)


def cpu_time_ms(fn, min_cpu_time: float, min_calls: int = 5) -> float:
    """Least process CPU time of one call (all threads) over repeated calls: on cores that
    other processes share, the least CPU time is the steadiest figure of the work a call does
    (wall time absorbs every preemption). Meaningful at 1 thread; with more, spinning worker
    threads count too."""
    fn()
    best, calls, spent = float("inf"), 0, 0.0
    while calls < min_calls or spent < min_cpu_time:
        start = time.process_time()
        fn()
        took = time.process_time() - start
        best, calls, spent = min(best, took), calls + 1, spent + took
    return best * 1e3


def bench_cpu(results: Results, threads: int, min_run_time: float, rounds: int = 3) -> list:
    import numba

    import sslfast.augment._numba_warp  # noqa: F401  (selects the threading layer the library uses)

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    device = torch.device("cpu")
    lines = []
    for batch, size in [(64, 64), (16, 224)]:
        images = _images(batch, size, device)
        shape = f"B={batch},3x{size}x{size},uint8->f32"
        for mode in ("apply", "sample+apply"):
            load_before = os.getloadavg()[0]  # other jobs on the cores: context for the figures
            calls = {}
            for backend in ("numba", "reference"):
                aug = _augment(backend)
                params = aug.sample_params(images)
                calls[backend] = (lambda a=aug, p=params: a.apply(images, p)) if mode == "apply" else (lambda a=aug: a(images))
            # The least CPU time over rounds that alternate the two providers: a burst of load
            # from other jobs then hits both alike instead of one.
            cpu = {backend: float("inf") for backend in calls}
            for _ in range(rounds):
                for backend, fn in calls.items():
                    cpu[backend] = min(cpu[backend], cpu_time_ms(fn, min_run_time / rounds))
            # Wall time alternates the providers too: per provider, the median over the rounds
            # of each quantile (p50, p20, p80) of torch.utils.benchmark's blocks.
            walls = {backend: [] for backend in calls}
            for _ in range(rounds):
                for backend, fn in calls.items():
                    walls[backend].append(time_ms(fn, device, min_run_time=min_run_time / rounds))
            times = {backend: (*(statistics.median(q) for q in zip(*walls[backend])), cpu[backend])
                     for backend in calls}
            load = {"loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}
            for backend in calls:
                p50, p20, p80, cpu_ms = times[backend]
                results.add(Row(OP, f"sslfast-{backend}", mode, shape, "uint8", "time_ms", p50, p20, p80,
                                extra={"threads": threads, "preset": "medium", **load}))
                results.add(Row(OP, f"sslfast-{backend}", mode, shape, "uint8", "min_cpu_time_ms", cpu_ms,
                                extra={"threads": threads, "preset": "medium", "rounds": rounds, **load}))
            wall = times["reference"][0] / times["numba"][0]
            cpu = times["reference"][3] / times["numba"][3]
            results.add(Row(OP, "numba-vs-reference", mode, shape, "uint8", "speedup_wall", wall,
                            extra={"threads": threads, **load}))
            results.add(Row(OP, "numba-vs-reference", mode, shape, "uint8", "speedup_cpu_time", cpu,
                            extra={"threads": threads, **load}))
            lines.append(f"{shape:<26} {mode:<12} threads={threads}  wall: numba {times['numba'][0]:7.1f} ms, "
                         f"reference {times['reference'][0]:7.1f} ms, {wall:5.2f}x | cpu time: numba "
                         f"{times['numba'][3]:7.1f} ms, reference {times['reference'][3]:7.1f} ms, {cpu:5.2f}x "
                         f"(bar >= 3x) | load {load['loadavg_1min_before']:.1f} -> {load['loadavg_1min_after']:.1f}")
    return lines


def _copy_bandwidth_gbs(device) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    p50, _, _ = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / (p50 * 1e-3) / 1e9  # read + write


def _torchvision_v2():
    from torchvision.transforms import v2

    geometry = v2.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=5.0)
    colour = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.3, hue=0.05)
    tail = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda batch: tail(torch.stack([colour(geometry(img)) for img in batch]))


def _resnet50_step(images_f32, device):
    import torchvision

    model = torchvision.models.resnet50().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    target = torch.randint(0, 1000, (images_f32.shape[0],), device=device)
    x = images_f32.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


def bench_gpu(results: Results, batch: int, size: int) -> list:
    device = torch.device("cuda")
    images = _images(batch, size, device)
    shape = f"B={batch},3x{size}x{size},uint8->f32"
    lines = []
    moved = images.numel() * (1 + 4)  # uint8 in, float32 out
    copy_gbs = _copy_bandwidth_gbs(device)
    results.add(Row(OP, "torch-copy", "fwd", "1GiB", "uint8", "GB/s", copy_gbs))
    lines.append(f"copy bandwidth {copy_gbs:.0f} GB/s (clone of 1 GiB, read + write)")
    times = {}
    kernels = [n for n, b in dispatch.backends(OP).items() if n in ("cuda", "triton")
               and not b.not_supported_reasons(images, forced=True)]
    for name in kernels:
        aug = _augment(name)
        params = aug.sample_params(images)
        p50, p20, p80 = time_ms(lambda a=aug, p=params: a.apply(images, p), device)
        gbs = moved / (p50 * 1e-3) / 1e9
        times[name] = p50
        results.add(Row(OP, f"sslfast-{name}", "apply", shape, "uint8", "time_ms", p50, p20, p80,
                        extra={"GB/s": gbs, "fraction_of_copy": gbs / copy_gbs,
                               "peak_bytes": peak_cuda_memory(lambda a=aug, p=params: a.apply(images, p), device)}))
        lines.append(f"sslfast-{name:<10} apply {p50:8.3f} ms  {gbs:7.0f} GB/s = {100 * gbs / copy_gbs:5.1f}% of copy "
                     "(bar >= 50%)")
        p50, p20, p80 = time_ms(lambda a=aug: a(images), device)
        times[name + "+sample"] = p50
        results.add(Row(OP, f"sslfast-{name}", "sample+apply", shape, "uint8", "time_ms", p50, p20, p80))
        lines.append(f"sslfast-{name:<10} sample+apply {p50:8.3f} ms")
    fast_sample = _augment("reference")
    p50, p20, p80 = time_ms(lambda: fast_sample.sample_params(images), device)
    results.add(Row(OP, "sslfast-fast-sampler", "sample", shape, "uint8", "time_ms", p50, p20, p80))
    lines.append(f"fast field sampling alone {p50:8.3f} ms")
    for provider, sampler in (("sslfast-reference-spectral", "spectral"), ("sslfast-reference", "fast")):
        aug = _augment("reference", sampler=sampler)
        p50, p20, p80 = time_ms(lambda a=aug: a(images), device)
        times[provider] = p50
        results.add(Row(OP, provider, "sample+apply", shape, "uint8", "time_ms", p50, p20, p80))
        lines.append(f"{provider:<28} sample+apply {p50:8.3f} ms")
    tv = _torchvision_v2()
    p50, p20, p80 = time_ms(lambda: tv(images), device)
    times["torchvision-v2"] = p50
    results.add(Row(OP, "torchvision-v2", "sample+apply", shape, "uint8", "time_ms", p50, p20, p80,
                    extra={"note": "per-image global affine + colour jitter (no random fields)"}))
    lines.append(f"torchvision-v2 (per image, global)  {p50:8.3f} ms")
    step = _resnet50_step(_augment("reference")(images), device)
    p50, p20, p80 = time_ms(step, device)
    times["resnet50"] = p50
    results.add(Row("resnet50_step", "torch-eager", "fwd+bwd", shape, "bf16-autocast", "time_ms", p50, p20, p80))
    lines.append(f"ResNet-50 fwd+bwd+SGD step (bf16 autocast, channels_last) {p50:8.3f} ms")
    for name in kernels:
        total = times[name + "+sample"]
        for base in ("sslfast-reference-spectral", "sslfast-reference", "torchvision-v2"):
            ratio = times[base] / total
            results.add(Row(OP, f"{name}-vs-{base}", "sample+apply", shape, "uint8", "speedup", ratio))
            lines.append(f"{name} (sample+apply) vs {base}: {ratio:6.1f}x" + ("  (bar >= 10x)" if "spectral" in base else ""))
        share = total / times["resnet50"]
        results.add(Row(OP, f"{name}-share-of-resnet50-step", "sample+apply", shape, "uint8", "fraction", share))
        lines.append(f"{name} augmentation / ResNet-50 step: {100 * share:5.2f}% (bar < 5%)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, nargs="*", default=None, help="CPU thread counts (default: torch's)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="CPU seconds per measurement")
    parser.add_argument("--batch", type=int, default=256, help="GPU batch (default 256)")
    parser.add_argument("--size", type=int, default=224, help="GPU image side (default 224)")
    parser.add_argument("--tag", default=None, help="suffix of the result files (default: the device)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = Results("bench_augment", device)
    if device.type == "cpu":
        lines = []
        for threads in args.threads or [torch.get_num_threads()]:
            lines += bench_cpu(results, threads, args.min_run_time)
    else:
        lines = bench_gpu(results, args.batch, args.size)
    print(f"# {results.env['device']}  torch {results.env['torch']}  triton {results.env['triton']}  "
          f"git {results.env['git_sha']}")
    print("\n".join(lines))
    print("saved", results.save(tag=args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
