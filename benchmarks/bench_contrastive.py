"""NT-Xent forward + backward, every provider side by side in one run (issue 8's benchmark).

Providers
    sslfast-triton     sslfast.losses.NTXentLoss(T, backend="triton"): similarity_lse(z, None, 1/T,
                       arange, normalize=True) on the fused Triton kernels (the symmetric
                       upper-triangle path), positives in O(N D) torch
    sslfast-reference  the same module with backend="reference" (chunked pure PyTorch)
    torch-eager        normalize, matmul, mask the diagonal, cross_entropy (the naive loss)
    torch-compile      torch.compile of torch-eager
    lightly            lightly.loss.NTXentLoss (if lightly is installed)
    inf-cl             Inf-CL's cal_flash_loss (pip install inf-cl; MIT licence, not vendored):
                       it has no self-exclusion, so it runs the same-size 2N x 2N InfoNCE of the
                       2N rows against a permutation of them: equal work, not the same loss

Shapes: z0, z1 of (N, D), 2N rows in the loss. GPU defaults: 2N in {4096 ... 1048576}, D in
{128, 256}, bfloat16 and float32 (tf32). CPU defaults (this repository's machines): 2N in {1024,
4096}, D = 128, float32, the providers that run on a CPU (no Triton: the interpreter is a test
tool, 100-1000x slower than torch).

Metrics per (provider, shape, dtype): time of one forward + backward (p50/p20/p80 ms; do_bench on
a GPU; on a CPU, whose cores other jobs share, one thread and interleaved rounds that call each
provider in turn), peak memory beyond the inputs (GPU: max_memory_allocated;
CPU: peak RSS growth with glibc's mmap threshold pinned, Linux), and achieved TFLOP/s counted as PASSES = 3 similarity-sized products
of 2 * (2N)^2 * D FLOPs each (S = Z Z^T forward; dS Z and dS^T Z backward), i.e. the naive loss's
work whatever the provider actually executes, so that the TFLOP/s of two providers compare like
their speeds. On a GPU the script first measures the device's bf16 matmul rate (8192^3) and
reports each TFLOP/s as a fraction of it.

Run as is on an H100/H200 (`python benchmarks/bench_contrastive.py`, bf16 and D = 128 first): cases
a provider cannot hold in memory, whose predicted time exceeds --max-seconds, or that would start
after --budget-seconds (420 s, so that one 10-minute device call suffices) are recorded as skipped
with the reason.
Results go to benchmarks/results/bench_contrastive-<device>.{json,csv}.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import Results, Row, peak_cuda_memory, time_ms  # noqa: E402

from sslfast.losses import NTXentLoss  # noqa: E402

OP = "ntxent"
TEMPERATURE = 0.1
PASSES = 3
PROVIDERS = ("sslfast-triton", "sslfast-reference", "torch-eager", "torch-compile", "lightly", "inf-cl")
GPU_DEFAULTS = dict(sizes=(4096, 16384, 65536, 262144, 1048576), dims=(128, 256), dtypes=("bfloat16", "float32"))
CPU_DEFAULTS = dict(sizes=(1024, 4096), dims=(128,), dtypes=("float32",))
CPU_PROVIDERS = ("sslfast-reference", "torch-eager", "torch-compile", "lightly")


# ---------------------------------------------------------------------------------------------
# the losses
# ---------------------------------------------------------------------------------------------
def ntxent_eager(z0, z1, diagonal, labels):
    """The naive NT-Xent: a (2N, 2N) logit matrix, the diagonal masked, cross_entropy."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = (z @ z.T / TEMPERATURE).masked_fill(diagonal, float("-inf"))
    return F.cross_entropy(logits, labels)


def _eager_constants(n, device):
    m = 2 * n
    diagonal = torch.eye(m, dtype=torch.bool, device=device)
    labels = torch.cat([torch.arange(n, m), torch.arange(0, n)]).to(device)
    return diagonal, labels


# ---------------------------------------------------------------------------------------------
# providers: (loss function of (z0, z1), bytes it needs beyond the inputs) or a reason to skip
# ---------------------------------------------------------------------------------------------
def make_loss(provider, n, d, dtype, device):
    m, itemsize = 2 * n, torch.empty(0, dtype=dtype).element_size()
    if provider == "sslfast-triton":
        if device.type != "cuda":
            return None, "the Triton backend runs on CUDA (the CPU interpreter is a test tool)"
        return NTXentLoss(TEMPERATURE, backend="triton"), 8 * m * d * 4
    if provider == "sslfast-reference":
        return NTXentLoss(TEMPERATURE, backend="reference"), 3 * (1 << 24) * 4 + 8 * m * d * 4
    naive_bytes = m * m * (3 * itemsize + 4 + 1)  # logits, softmax, grad, fp32 temporaries, mask
    if provider == "torch-eager":
        diagonal, labels = _eager_constants(n, device)
        return (lambda z0, z1: ntxent_eager(z0, z1, diagonal, labels)), naive_bytes
    if provider == "torch-compile":
        diagonal, labels = _eager_constants(n, device)
        compiled = torch.compile(ntxent_eager)
        return (lambda z0, z1: compiled(z0, z1, diagonal, labels)), naive_bytes
    if provider == "lightly":
        try:
            from lightly.loss import NTXentLoss as LightlyNTXentLoss
        except ImportError as exc:
            return None, f"lightly not importable ({exc}); pip install lightly"
        loss = LightlyNTXentLoss(temperature=TEMPERATURE)
        return (lambda z0, z1: loss(z0, z1)), naive_bytes
    if provider == "inf-cl":
        if device.type != "cuda":
            return None, "Inf-CL runs on CUDA only"
        try:
            from inf_cl import cal_flash_loss
        except ImportError as exc:
            return None, f"inf_cl not importable ({exc}); pip install inf-cl"
        perm = torch.randperm(m, device=device)

        def inf_cl_loss(z0, z1):
            z = F.normalize(torch.cat([z0, z1]), dim=1)
            return cal_flash_loss(z, z[perm], scale=1.0 / TEMPERATURE, head_dim=d).mean()
        return inf_cl_loss, 2 * m * d * 4 * 3
    raise ValueError(f"unknown provider {provider!r}")


def _step(loss_fn, z0, z1):
    def step():
        loss = loss_fn(z0, z1)
        return torch.autograd.grad(loss, (z0, z1))
    return step


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def bf16_matmul_tflops(device) -> float:
    """The device's bf16 dense matmul rate (8192^3), the roofline TFLOP/s are compared with."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    p50, _, _ = time_ms(lambda: a @ b, device)
    return 2 * 8192 ** 3 / (p50 * 1e-3) / 1e12


def _return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold after a large free and then keeps freed blocks, which hides
    a step's peak from the resident set size: pin the threshold at 64 KiB (Linux/glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_cpu_rss(fn) -> int | None:
    """Peak resident-set growth during one call of fn (Linux: reset VmHWM through clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) * 1024
    except OSError:
        return None


def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def free_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    return info.get("MemAvailable", 0)


def flops(n, d) -> float:
    m = 2 * n
    return PASSES * 2.0 * m * m * d


def interleaved_times_ms(steps: dict, rounds: int) -> dict:
    """CPU timing on shared cores: each round calls every provider once, in turn, so that load that
    drifts over minutes hits all providers alike; (p50, p20, p80) over the rounds."""
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, times in samples.items():
        times.sort()
        pick = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))]  # noqa: E731
        out[name] = (pick(0.5), pick(0.2), pick(0.8))
    return out


def _skip(results, provider, shape, dtype_name, reason):
    print(f"{provider:18s} {shape:18s} {dtype_name:9s} skipped: {reason}")
    results.add(Row(OP, provider, "fwd+bwd", shape, dtype_name, "skipped", None, extra={"reason": reason}))


def run(args) -> Results:
    device = torch.device(args.device)
    if device.type == "cpu":
        _return_freed_memory_to_the_os()
        torch.set_num_threads(args.threads)
    results = Results("bench_contrastive", device)
    matmul_rate = bf16_matmul_tflops(device) if device.type == "cuda" else None
    if matmul_rate is not None:
        print(f"measured bf16 matmul rate: {matmul_rate:.0f} TFLOP/s")
        results.add(Row("matmul", "torch", "fwd", "8192x8192x8192", "bfloat16", "tflops", matmul_rate))
    last_ms: dict = {}
    started = time.perf_counter()
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        for d in args.dims:
            for m in args.sizes:
                n, shape = m // 2, f"2N={m},D={d}"
                if time.perf_counter() - started > args.budget_seconds:
                    for provider in args.providers:
                        _skip(results, provider, shape, dtype_name, f"the run's {args.budget_seconds:.0f} s budget is spent")
                    continue
                g = torch.Generator(device="cpu").manual_seed(0)
                z0 = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
                z1 = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
                steps = {}
                for provider in args.providers:
                    tag = (provider, dtype_name, d)
                    loss_fn, need = make_loss(provider, n, d, dtype, device)
                    if loss_fn is None:
                        _skip(results, provider, shape, dtype_name, need)
                        continue
                    if need > 0.8 * free_bytes(device):
                        _skip(results, provider, shape, dtype_name, f"needs ~{need / 2**30:.1f} GiB beyond the "
                              f"inputs, {free_bytes(device) / 2**30:.1f} GiB free")
                        continue
                    if tag in last_ms and last_ms[tag][1] * (m / last_ms[tag][0]) ** 2 > args.max_seconds * 1e3:
                        _skip(results, provider, shape, dtype_name,
                              f"predicted > {args.max_seconds:.0f} s per step from the previous size")
                        continue
                    step = _step(loss_fn, z0, z1)
                    try:
                        step()  # warm-up: compilation, autotuning, allocator
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # OOM or a failed compile
                        _skip(results, provider, shape, dtype_name, f"{type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    steps[provider] = step
                if device.type == "cuda":
                    times = {name: time_ms(step, device) for name, step in steps.items()}
                else:
                    times = interleaved_times_ms(steps, args.rounds)
                for provider, step in steps.items():
                    p50, p20, p80 = times[provider]
                    peak = peak_cuda_memory(step, device) if device.type == "cuda" else peak_cpu_rss(step)
                    last_ms[(provider, dtype_name, d)] = (m, p50)
                    tflops = flops(n, d) / (p50 * 1e-3) / 1e12
                    extra = {"tflops": tflops, "passes_counted": PASSES, "peak_bytes": peak,
                             "naive_logits_bytes": m * m * itemsize, "temperature": TEMPERATURE}
                    if matmul_rate:
                        extra["fraction_of_bf16_matmul"] = tflops / matmul_rate
                    results.add(Row(OP, provider, "fwd+bwd", shape, dtype_name, "time_ms", p50, p20, p80, extra))
                    mem = f"{peak / 2**20:9.1f} MiB" if peak is not None else "        n/a"
                    print(f"{provider:18s} {shape:18s} {dtype_name:9s} {p50:10.3f} ms  [{p20:.3f}, {p80:.3f}]"
                          f"  peak {mem}  {tflops:7.3f} TFLOP/s", flush=True)
                del z0, z1, steps
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print_ratios(results)
    return results


def print_ratios(results: Results) -> None:
    """Speed of every provider relative to torch-eager and torch-compile measured in the same run."""
    times = {(r.provider, r.shape, r.dtype): r.p50 for r in results.rows if r.metric == "time_ms"}
    print("\nratios (baseline time / provider time, same run):")
    for (provider, shape, dtype), t in sorted(times.items()):
        parts = []
        for base in ("torch-eager", "torch-compile", "lightly"):
            if base != provider and (base, shape, dtype) in times:
                parts.append(f"vs {base} {times[(base, shape, dtype)] / t:5.2f}x")
        print(f"  {provider:18s} {shape:18s} {dtype:9s} " + "  ".join(parts))


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=list(defaults["sizes"]), help="2N values")
    p.add_argument("--dims", type=int, nargs="+", default=list(defaults["dims"]))
    p.add_argument("--dtypes", nargs="+", default=list(defaults["dtypes"]))
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS if cuda else CPU_PROVIDERS), choices=PROVIDERS)
    p.add_argument("--max-seconds", type=float, default=2.0 if cuda else 60.0,
                   help="skip a case whose predicted time per step exceeds this")
    p.add_argument("--budget-seconds", type=float, default=420.0,
                   help="start no new case after this many seconds (one device call is limited to 10 min); "
                        "cases run in order of importance: first dtype, first D, growing 2N")
    p.add_argument("--rounds", type=int, default=7, help="CPU: interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads. Default 1: on cores shared with other jobs, two OpenMP threads stall "
                        "at every parallel region (measured here: ~300 ms instead of 1-2 ms for a 2N=256 step)")
    p.add_argument("--tag", default=None, help="results file suffix (default: the device)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.device.startswith("cuda") and not all(s % 2 == 0 for s in args.sizes):
        raise SystemExit("--sizes are 2N: even numbers")
    results = run(args)
    path = results.save(tag=args.tag)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
