"""CPU-sized timing of the contrastive reference losses (forward + backward) next to the dense
forms, as pytest-benchmark cases: `python -m pytest benchmarks/ --benchmark-only`. Kept out of
the default test run (testpaths = tests). Peak memory: bench_memory_ntxent.py."""
import pytest
import torch

from sslfast import losses as L

ROWS, DIM = 1024, 128  # 2N rows over both views


def _naive_nt_xent(z0, z1):
    from bench_memory_ntxent import naive_nt_xent  # benchmarks/ is on sys.path under pytest

    return naive_nt_xent(z0, z1, 0.5)


def _lightly_nt_xent():
    from lightly.loss import NTXentLoss

    return NTXentLoss(temperature=0.5)


PROVIDERS = {
    "sslfast-reference/nt_xent": lambda: L.NTXentLoss(0.5, backend="reference"),
    "sslfast-reference/dcl": lambda: L.DCLLoss(0.1, backend="reference"),
    "sslfast-reference/clip": lambda: L.CLIPLoss(backend="reference"),
    "torch-eager/nt_xent": lambda: _naive_nt_xent,
    "lightly/nt_xent": _lightly_nt_xent,
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_fwd_bwd(benchmark, provider):
    loss_fn = PROVIDERS[provider]()
    z0, z1 = (torch.randn(ROWS // 2, DIM, requires_grad=True) for _ in range(2))

    def step():
        loss_fn(z0, z1).backward()

    benchmark.extra_info.update(rows=ROWS, dim=DIM, dtype="float32", mode="fwd+bwd")
    benchmark(step)
