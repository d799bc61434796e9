"""Cross-correlation losses (Barlow Twins, VICReg): sslfast against lightly and the official code.

    python benchmarks/bench_crosscorr.py                  # CPU: N = 256, 1024, D = 8192, fp32
    python benchmarks/bench_crosscorr.py --device cuda    # GPU sweep of issue 3 (runs as is on H100/H200)
    python benchmarks/bench_crosscorr.py --device cuda --targets   # only the three issue-3 targets

Every case times forward + backward of the loss on fixed random (N, D) embeddings (the same
inputs for every provider), median and 20th/80th percentiles (benchmarks/common.py), and on a
GPU the peak memory allocated during one forward + backward beyond the inputs. Providers:

    sslfast-reference   sslfast's PyTorch reference, mode="auto" (the Gram form when N < D)
    sslfast-triton      sslfast's Triton kernels, mode="auto" (GPU only)
    *-gram / *-cross    the same with the mode forced, where the case asks for it
    lightly             lightly.loss.BarlowTwinsLoss / VICRegLoss
    official-eager      the official code: BatchNorm1d(affine=False) + matmul + loss (Barlow
                        Twins), or the official VICReg forward (GPU only, as on CPU it is lightly)
    official-compile    torch.compile of official-eager (GPU only)

Achieved FLOP/s use the explicit per-mode formulas of sslfast.reference.crosscorr.mode_costs
(the FLOPs the provider's algorithm needs: 6 N D^2 for the cross form of Barlow Twins, 8 N D^2
for VICReg's two branches; the Gram form's k N^2 D) next to the measured matmul roofline of the
same device. Results go to benchmarks/results/bench_crosscorr-<device>.{json,csv}; the ratio
table is printed and belongs in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Results, Row, peak_cuda_memory, time_ms  # noqa: E402

from sslfast import functional as SF  # noqa: E402
from sslfast.reference import crosscorr as ref  # noqa: E402

CPU_SIZES = [(256, 8192), (1024, 8192)]
GPU_SIZES = [(n, d) for n in (256, 1024, 2048, 8192) for d in (2048, 8192, 16384)]
# issue 3's bars: >= 4x eager at N=2048, D=8192 bf16 (gram); no D x D buffer in gram mode;
# >= 1.3x eager when N >= D
GPU_TARGETS = [(2048, 8192, torch.bfloat16), (8192, 2048, torch.bfloat16), (8192, 2048, torch.float32)]


def off_diagonal(x):
    n, m = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_barlow_twins(z1, z2, lambd=5e-3):
    """facebookresearch/barlowtwins main.py, one process: BatchNorm1d(affine=False) is
    F.batch_norm in training mode without running statistics."""
    bn1 = F.batch_norm(z1, None, None, training=True)
    bn2 = F.batch_norm(z2, None, None, training=True)
    c = bn1.T @ bn2
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


def official_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg main_vicreg.py, one process."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(2).sum().div(
        num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def providers(loss: str, device: torch.device, modes: bool) -> dict:
    """name -> (loss function of (z0, z1), the algorithm's mode for the FLOP formula or None)."""
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    sslfast_fn = SF.barlow_twins_loss if loss == "barlow_twins" else SF.vicreg_loss
    out = {"lightly": ((BarlowTwinsLoss() if loss == "barlow_twins" else VICRegLoss()), "cross")}
    backends = ["reference"] + (["triton"] if device.type == "cuda" else [])
    for backend in backends:
        out[f"sslfast-{backend}"] = (lambda a, b, _b=backend: sslfast_fn(a, b, backend=_b), "auto")
        if modes:
            for mode in ("gram", "cross"):
                out[f"sslfast-{backend}-{mode}"] = (
                    lambda a, b, _b=backend, _m=mode: sslfast_fn(a, b, mode=_m, backend=_b), mode)
    if device.type == "cuda":
        official = official_barlow_twins if loss == "barlow_twins" else official_vicreg
        out["official-eager"] = (official, "cross")
        out["official-compile"] = (torch.compile(official, dynamic=False), "cross")
    return out


def fwd_bwd(fn, z0, z1):
    def run():
        z0.grad = z1.grad = None
        fn(z0, z1).backward()
    return run


def matmul_roofline(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of one large square matmul: the ceiling the products here can reach."""
    size = 4096 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    p50, _, _ = time_ms(lambda: a @ b, device)
    return 2 * size ** 3 / (p50 * 1e-3)


def cpu_interleaved(runs: dict, rounds: int) -> dict:
    """name -> (p50, p20, p80) ms on the CPU: one torch.utils.benchmark sample per provider per
    round, providers interleaved, so that the load of a shared machine drifts over every
    provider alike (the ratios are what this measures)."""
    import torch.utils.benchmark as tub

    samples = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in runs.items():
            timer = tub.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
            samples[name].append(timer.timeit(1).median * 1e3)
    pick = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]  # noqa: E731
    return {name: (pick(xs, 0.5), pick(xs, 0.2), pick(xs, 0.8)) for name, xs in samples.items()}


def run_case(results, loss, n, d, dtype, device, selected, modes, rounds, reference_budget):
    g = torch.Generator(device="cpu").manual_seed(n + d)
    base = torch.randn(n, d, generator=g)
    z0 = (base + 0.5 * torch.randn(n, d, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    z1 = (base + 0.5 * torch.randn(n, d, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    shape, dtype_name = f"N={n},D={d}", str(dtype).replace("torch.", "")
    cases = {}
    for name, (fn, mode) in providers(loss, device, modes).items():
        if selected and name not in selected:
            continue
        kernels = ref.REFERENCE_KERNELS
        if name.startswith("sslfast-triton"):
            from sslfast.ops.crosscorr import TRITON_KERNELS as kernels
        algo = ref.choose_mode(loss, n, d, mode, kernels)
        if device.type == "cpu" and algo == "cross" and name.startswith("sslfast") and n * d * d > reference_budget:
            continue  # the reference's D x D form is lightly's algorithm: skipped at the largest sizes
        # lightly and the official code run the cross form: their FLOPs are counted as the
        # reference's cross form, a lower bound of what they execute
        cases[name] = (fwd_bwd(fn, z0, z1), algo, ref.mode_costs(loss, n, d, kernels)[algo][0])

    timings, peaks = {}, {}
    if device.type == "cpu":
        timings = cpu_interleaved({name: run for name, (run, _, _) in cases.items()}, rounds)
    else:
        for name, (run, _, _) in cases.items():
            try:
                timings[name] = time_ms(run, device)
                peaks[name] = peak_cuda_memory(run, device)
            except torch.cuda.OutOfMemoryError:
                print(f"{loss:<13} {shape:<16} {dtype_name:<9} {name:<26} out of memory", flush=True)
    for name, (p50, p20, p80) in timings.items():
        _, algo, flops = cases[name]
        extra = {"algorithm": algo, "flops": flops, "tflops_per_s": flops / (p50 * 1e-3) / 1e12}
        results.add(Row(loss, name, "fwd+bwd", shape, dtype_name, "time_ms", p50, p20, p80, extra))
        peak = peaks.get(name)
        if peak is not None:
            results.add(Row(loss, name, "fwd+bwd", shape, dtype_name, "peak_bytes", peak))
        print(f"{loss:<13} {shape:<16} {dtype_name:<9} {name:<26} {algo:<6} {p50:10.2f} ms "
              f"[{p20:.2f}, {p80:.2f}]  {extra['tflops_per_s'] * 1e3:8.1f} GFLOP/s"
              + (f"  peak {peak / 2**20:9.1f} MiB" if peak is not None else ""), flush=True)
    for baseline in ("lightly", "official-eager"):
        if baseline in timings:
            for name, (p50, _, _) in timings.items():
                if name != baseline:
                    results.add(Row(loss, name, "fwd+bwd", shape, dtype_name, f"speedup_vs_{baseline}",
                                    timings[baseline][0] / p50))
    return timings


def ratio_table(results) -> str:
    rows = [r for r in results.rows if r.metric.startswith("speedup_vs_")]
    lines = ["| loss | shape | dtype | provider | baseline | speedup (p50 ratio) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.provider} | {r.metric[len('speedup_vs_'):]} | "
                     f"{r.p50:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--losses", nargs="+", default=["barlow_twins", "vicreg"], choices=["barlow_twins", "vicreg"])
    parser.add_argument("--providers", nargs="+", default=None, help="only these providers")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--sizes", nargs="+", default=None, help="N,D pairs, e.g. 256,8192")
    parser.add_argument("--targets", action="store_true", help="GPU: only the issue-3 target cases")
    parser.add_argument("--modes", action="store_true", help="also time mode=gram and mode=cross forced")
    parser.add_argument("--tag", default=None, help="suffix of the result files (default: the device)")
    parser.add_argument("--threads", type=int, default=None, help="CPU: torch.set_num_threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="CPU: interleaved samples per provider")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch._dynamo.config.cache_size_limit = 256  # one compiled graph per shape
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every provider
    results = Results("bench_crosscorr", device)
    if args.sizes:
        cases = [(int(s.split(",")[0]), int(s.split(",")[1]), getattr(torch, t))
                 for s in args.sizes for t in (args.dtypes or ["float32"])]
    elif device.type == "cpu":
        cases = [(n, d, torch.float32) for n, d in CPU_SIZES]
    elif args.targets:
        cases = GPU_TARGETS
    else:
        cases = [(n, d, getattr(torch, t)) for n, d in GPU_SIZES for t in (args.dtypes or ["bfloat16", "float32"])]

    print(f"device: {results.env['device']}  torch {results.env['torch']}  triton {results.env['triton']}  "
          f"git {results.env['git_sha']}")
    for dtype in sorted({c[2] for c in cases}, key=str):
        peak = matmul_roofline(device, dtype)
        results.add(Row("matmul", "torch-mm", "fwd", "roofline", str(dtype).replace("torch.", ""), "tflops_per_s",
                        peak / 1e12))
        print(f"measured matmul roofline ({dtype}): {peak / 1e9:.1f} GFLOP/s")
    for loss in args.losses:
        for n, d, dtype in cases:
            run_case(results, loss, n, d, dtype, device, args.providers, args.modes, args.rounds,
                     reference_budget=256 * 8192 ** 2)
    path = results.save(tag=args.tag)
    print(f"\nwrote {path}\n")
    print(ratio_table(results))


if __name__ == "__main__":
    main()
