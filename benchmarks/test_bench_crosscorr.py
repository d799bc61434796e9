"""pytest-benchmark cases of bench_crosscorr.py's CPU sizes (kept out of the default test run:
`python -m pytest benchmarks/test_bench_crosscorr.py --benchmark-only`). lightly's D x D form
takes seconds per call at D = 8192, so each case runs a few rounds only."""
import pytest
import torch
from lightly.loss import BarlowTwinsLoss, VICRegLoss

from sslfast import functional as SF

SIZES = [(256, 8192), (1024, 8192)]
PROVIDERS = {
    ("barlow_twins", "sslfast-reference"): lambda a, b: SF.barlow_twins_loss(a, b, backend="reference"),
    ("barlow_twins", "lightly"): BarlowTwinsLoss(),
    ("vicreg", "sslfast-reference"): lambda a, b: SF.vicreg_loss(a, b, backend="reference"),
    ("vicreg", "lightly"): VICRegLoss(),
}


@pytest.mark.parametrize("n,d", SIZES, ids=[f"N{n}-D{d}" for n, d in SIZES])
@pytest.mark.parametrize("loss,provider", list(PROVIDERS), ids=["-".join(k) for k in PROVIDERS])
def test_fwd_bwd(benchmark, loss, provider, n, d):
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(n, d, generator=g, requires_grad=True)
    z1 = torch.randn(n, d, generator=g, requires_grad=True)
    fn = PROVIDERS[(loss, provider)]

    def step():
        z0.grad = z1.grad = None
        fn(z0, z1).backward()

    benchmark.group = f"{loss} N={n} D={d} fwd+bwd"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
