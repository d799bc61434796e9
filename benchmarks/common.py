"""Shared benchmark plumbing: timing, peak memory, environment and result rows.

Every row records op, provider, mode, shape, dtype, metric, p50/p20/p80, device name,
torch/triton versions, git sha and timestamp (CONVENTIONS.md). GPU timings come from
triton.testing.do_bench (median, 20th, 80th percentile); CPU timings from
torch.utils.benchmark (the same percentiles over its measured blocks).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(fn: Callable[[], object], device: torch.device, *, min_run_time: float = 0.5) -> tuple:
    """(p50, p20, p80) milliseconds per call of fn."""
    if device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return float(p50), float(p20), float(p80)
    import torch.utils.benchmark as tub

    fn()  # warm-up (allocations, lazy init, compilation)
    m = tub.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    times = sorted(m.times)
    pick = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))] * 1e3  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def peak_cuda_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated during one call of fn, beyond what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


@dataclass
class Row:
    op: str
    provider: str
    mode: str  # "fwd" | "bwd" | "fwd+bwd"
    shape: str
    dtype: str
    metric: str  # "time_ms" | "peak_bytes" | "images_per_s" | ...
    p50: Optional[float]
    p20: Optional[float] = None
    p80: Optional[float] = None
    extra: dict = field(default_factory=dict)


class Results:
    """Rows of one benchmark run plus its environment; saved as JSON and CSV."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.env, self.rows = name, environment(device), []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_records(self) -> list:
        return [{**asdict(r), **self.env} for r in self.rows]

    def save(self, directory: str = RESULTS_DIR, tag: Optional[str] = None) -> str:
        os.makedirs(directory, exist_ok=True)
        device = self.env["device"].split(":")[0].split("(")[0].strip().replace(" ", "-").lower()
        stem = os.path.join(directory, f"{self.name}-{tag or device}")
        records = self.to_records()
        with open(stem + ".json", "w") as fh:
            json.dump({"benchmark": self.name, "environment": self.env, "rows": records}, fh, indent=1)
        with open(stem + ".csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]) if records else ["op"])
            writer.writeheader()
            for rec in records:
                writer.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in rec.items()})
        return stem + ".json"
