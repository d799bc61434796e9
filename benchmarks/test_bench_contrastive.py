"""The CPU-sized NT-Xent cases of bench_contrastive.py as pytest-benchmark tests, kept out of the
default test run: `python -m pytest benchmarks/test_bench_contrastive.py --benchmark-only`."""
import pytest
import torch

from bench_contrastive import _step, make_loss


@pytest.mark.parametrize("provider", ["sslfast-reference", "torch-eager", "lightly"])
@pytest.mark.parametrize("two_n", [1024, 4096])
def test_ntxent_forward_backward_cpu(benchmark, provider, two_n):
    device = torch.device("cpu")
    loss_fn, need = make_loss(provider, two_n // 2, 128, torch.float32, device)
    if loss_fn is None:
        pytest.skip(need)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(two_n // 2, 128, generator=g).requires_grad_()
    z1 = torch.randn(two_n // 2, 128, generator=g).requires_grad_()
    grads = benchmark(_step(loss_fn, z0, z1))
    assert all(torch.isfinite(gr).all() for gr in grads)
