"""Peak memory of one NT-Xent forward + backward: the chunked reference against dense forms.

Providers:
  sslfast-reference  sslfast.losses.NTXentLoss(backend="reference"): the chunked log-sum-exp,
                     O(N*D + N*chunk) memory (sslfast.reference.contrastive.nt_xent_loss)
  sslfast            the same loss with backend="auto" (the fused kernel where one runs)
  torch-eager        the naive dense form: normalize, (2N, 2N) logits, mask, cross_entropy
  lightly            lightly.loss.NTXentLoss (dense, four N x N blocks concatenated)

Each case runs in a fresh subprocess, so that one case's allocations cannot hide in another's
peak. On CPU the peak is the process's resident set: after the imports and the input
allocation the kernel's peak-RSS counter is reset (/proc/self/clear_refs, "5"), then
extra = VmHWM after forward + backward - VmRSS before (fallback where the reset is refused:
ru_maxrss after - VmRSS before). The extra memory includes the input gradients (2 * 2N * D *
itemsize). On CUDA (`--device cuda`, ready to run as is on a GPU machine) it is
torch.cuda.max_memory_allocated beyond what was allocated before the call.

Dense forms need ~3-4 (2N)^2 * 4 bytes (17 GB for the fp32 logits alone at 2N = 65536), so they
run only up to --dense-max (default 16384 on CPU: the 24 GB development machines are shared).

    python benchmarks/bench_memory_ntxent.py                      # CPU, 2N = 4096 ... 65536
    python benchmarks/bench_memory_ntxent.py --device cuda --dense-max 65536 --providers all
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # benchmarks/common.py, and this checkout's sslfast
from common import Results, Row  # noqa: E402

DENSE = ("torch-eager", "lightly")
PROVIDERS = ("sslfast-reference", "sslfast") + DENSE
TEMPERATURE = 0.5


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def naive_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """What people write: the full (2N, 2N) logits, self masked, cross-entropy."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    labels = torch.arange(z.shape[0], device=z.device).roll(z0.shape[0])
    return F.cross_entropy(logits, labels)


def _loss_fn(provider: str):
    if provider == "torch-eager":
        return lambda a, b: naive_nt_xent(a, b, TEMPERATURE)
    if provider == "lightly":
        from lightly.loss import NTXentLoss

        return NTXentLoss(temperature=TEMPERATURE)
    from sslfast.losses import NTXentLoss

    return NTXentLoss(temperature=TEMPERATURE, backend="reference" if provider == "sslfast-reference" else "auto")


def child(provider: str, rows: int, dim: int, dtype: str, device: str) -> dict:
    """One case, in this (fresh) process; returns the measurement as a dict."""
    device = torch.device(device)
    loss_fn = _loss_fn(provider)
    g = torch.Generator().manual_seed(0)
    z0, z1 = (torch.randn(rows // 2, dim, generator=g).to(device=device, dtype=getattr(torch, dtype)).requires_grad_()
              for _ in range(2))
    loss_fn(z0[:8], z1[:8]).backward()  # warm-up: lazy imports and one-time allocations
    z0.grad = z1.grad = None

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _proc_status("VmRSS")
        reset = _reset_peak_rss()
    start = time.perf_counter()
    loss = loss_fn(z0, z1)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        extra, how = torch.cuda.max_memory_allocated(device) - before, "cuda.max_memory_allocated"
    elif reset:
        extra, how = _proc_status("VmHWM") - before, "VmHWM after clear_refs reset"
    else:
        extra, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ru_maxrss"
    seconds = time.perf_counter() - start
    return {"extra_bytes": int(extra), "baseline_bytes": int(before), "method": how, "seconds": seconds,
            "loss": float(loss), "grad_norm": float(z0.grad.norm())}


def run_case(provider, rows, dim, dtype, device, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", provider, str(rows), str(dim), dtype, device]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="4096,8192,16384,32768,65536", help="2N values (rows of both views)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--dense-max", type=int, default=None,
                        help="largest 2N for the dense providers (default 16384 on cpu, 65536 on cuda)")
    parser.add_argument("--providers", default="sslfast-reference,torch-eager,lightly",
                        help=f"comma list from {PROVIDERS}, or 'all'")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--tag", default=None, help="results file suffix (default: the device)")
    parser.add_argument("--child", nargs=5, metavar=("PROVIDER", "ROWS", "DIM", "DTYPE", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        provider, rows, dim, dtype, device = args.child
        print(json.dumps(child(provider, int(rows), int(dim), dtype, device)))
        return

    providers = PROVIDERS if args.providers == "all" else tuple(args.providers.split(","))
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
    dense_max = args.dense_max or (16384 if args.device == "cpu" else 65536)
    device = torch.device(args.device)
    results = Results("memory_ntxent", device)
    print(f"{'provider':>18} {'2N':>7} {'D':>4} {'extra peak':>12} {'naive logits':>13} {'one iter':>9}  loss")
    for rows in (int(s) for s in args.sizes.split(",")):
        logits_bytes = rows * rows * 4
        for provider in providers:
            shape = f"2N={rows},D={args.dim}"
            if provider in DENSE and rows > dense_max:
                print(f"{provider:>18} {rows:>7} {args.dim:>4} {'skipped':>12}  (dense above --dense-max {dense_max})")
                continue
            m = run_case(provider, rows, args.dim, args.dtype, args.device, args.timeout)
            if "error" in m:
                print(f"{provider:>18} {rows:>7} {args.dim:>4} {'failed':>12}  {m['error']}")
                results.add(Row("nt_xent", provider, "fwd+bwd", shape, args.dtype, "peak_extra_bytes", None,
                                extra={"error": m["error"]}))
                continue
            print(f"{provider:>18} {rows:>7} {args.dim:>4} {m['extra_bytes'] / 2**20:>9.1f} MB "
                  f"{logits_bytes / 2**20:>10.1f} MB {m['seconds']:>8.2f}s  {m['loss']:.6f}")
            results.add(Row("nt_xent", provider, "fwd+bwd", shape, args.dtype, "peak_extra_bytes", m["extra_bytes"],
                            extra={"method": m["method"], "baseline_bytes": m["baseline_bytes"],
                                   "one_iteration_s": m["seconds"], "loss": m["loss"], "grad_norm": m["grad_norm"],
                                   "fp32_logits_bytes": logits_bytes,
                                   "input_grad_bytes": rows * args.dim * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()}))
    print("saved", results.save(tag=args.tag))


if __name__ == "__main__":
    main()
