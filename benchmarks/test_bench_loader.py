"""One epoch of bench_loader.py's providers on a 256-image set, as pytest-benchmark tests kept
out of the default test run: `python -m pytest benchmarks/test_bench_loader.py --benchmark-only`."""
import argparse

import pytest
import torch

from bench_loader import bench_image_dir, make_provider, time_epoch


@pytest.mark.parametrize("provider", ["sslfast-dali-cpu", "sslfast-torch", "torchvision-dataloader"])
def test_loader_epoch_cpu(benchmark, provider):
    if provider == "sslfast-dali-cpu":
        from sslfast.data.dali_backend import dali_unavailable_reason

        if dali_unavailable_reason():
            pytest.skip(dali_unavailable_reason())
    args = argparse.Namespace(batch=32, threads=2)
    loader, consume, close = make_provider(provider, bench_image_dir(256), args, torch.device("cpu"))
    try:
        rate = benchmark.pedantic(time_epoch, args=(loader, consume), rounds=3, warmup_rounds=1)
        assert rate > 0
    finally:
        close()
