"""gather_distributed=True on 2 gloo processes against one process on the concatenated batch:
loss values equal on every rank, each rank's input gradients W times the single-process ones
(sslfast.distributed's convention), and parameter gradients equal after DDP's averaging (the
gradient-scaling bug lightly fixed in its PR #1980)."""
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from _distributed import run_on_ranks
from sslfast import functional as SF
from sslfast.losses import BarlowTwinsLoss

pytestmark = pytest.mark.distributed

WORLD, LOCAL, DIM_IN = 2, 4, 6
# (loss, backend, dtype, D): D = 5 < N = 8 and D = 11 > N exercise both sides of the cost model
CASES = [(loss, "reference", torch.float64, d) for loss in ("barlow_twins", "vicreg", "mixed") for d in (5, 11)]
CASES += [(loss, "triton", torch.float32, 11) for loss in ("barlow_twins", "vicreg", "mixed")]
ALPHAS = (0.3, 0.8)  # each rank mixes with its own alpha, as the official code draws one per process


def _global_batch(d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, WORLD * LOCAL, d, generator=g, dtype=torch.float64) + torch.randn(d, generator=g)
    index = torch.cat([torch.randperm(LOCAL, generator=g) for _ in range(WORLD)])  # each rank's own permutation
    upstream = torch.rand((), generator=g, dtype=torch.float64) + 0.5
    return z.to(dtype), index, upstream


def _loss(loss, z0, z1, zm, index, alpha, mode, backend, gather):
    kw = dict(mode=mode, gather_distributed=gather, backend=backend)
    if loss == "barlow_twins":
        return SF.barlow_twins_loss(z0, z1, 0.3, **kw)
    if loss == "vicreg":
        return SF.vicreg_loss(z0, z1, 2.0, 3.0, 0.5, **kw)
    return SF.mixed_barlow_twins_loss(z0, z1, zm, index, alpha, 0.2, 3.0, **kw)


def _mixed_with_row_alphas(z0, z1, zm, global_index, alpha_rows, lam=0.2, scale=3.0, eps=1e-5):
    """The official CIFAR form on the global batch with a per-row alpha (each rank's own)."""
    n = z0.shape[0]
    std = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0) + eps)  # noqa: E731
    a, b, m = std(z0), std(z1), std(zm)
    c = a.T @ b / n
    loss_bt = (torch.diagonal(c) - 1).pow(2).sum() + lam * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())
    w = alpha_rows[:, None]
    residual = m - w * a - (1 - w) * b[global_index]
    return loss_bt + scale * lam * ((residual.T @ a).pow(2).sum() + (residual.T @ b).pow(2).sum()) / n ** 2


def _worker(rank, world_size):
    out = {}
    for case_id, (loss, backend, dtype, d) in enumerate(CASES):
        z, index, upstream = _global_batch(d, dtype, seed=case_id)
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        for mode in ("gram", "cross"):
            local = [v[rows].clone().requires_grad_() for v in z]
            value = _loss(loss, *local, index[rows], ALPHAS[rank], mode, backend, True)
            grads = torch.autograd.grad(value, local if loss == "mixed" else local[:2], upstream.to(value.dtype))
            out[(case_id, mode)] = (value.detach(), [g.detach() for g in grads])
    # DDP: parameter gradients after averaging equal the single-process ones
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(DIM_IN, 9).double())
    x = torch.randn(2, WORLD * LOCAL, DIM_IN, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss_fn = BarlowTwinsLoss(0.3, gather_distributed=True)
    loss_fn(model(x[0, rows]), model(x[1, rows])).backward()
    out["ddp"] = [p.grad.detach().clone() for p in model.parameters()]
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_on_ranks(_worker, world_size=WORLD)


@pytest.mark.parametrize("mode", ["gram", "cross"])
@pytest.mark.parametrize("case_id", range(len(CASES)), ids=[f"{c[0]}-{c[1]}-D{c[3]}" for c in CASES])
def test_gathered_loss_equals_single_process(ranks, case_id, mode):
    loss, backend, dtype, d = CASES[case_id]
    z, index, upstream = _global_batch(d, dtype, seed=case_id)
    single = [v.clone().requires_grad_() for v in z]
    if loss == "mixed":
        global_index = index + torch.arange(WORLD).repeat_interleave(LOCAL) * LOCAL
        alpha_rows = torch.tensor(ALPHAS, dtype=torch.float64).repeat_interleave(LOCAL)
        value = _mixed_with_row_alphas(*[v.double() for v in single], global_index, alpha_rows)
        inputs = single
    else:
        value = _loss(loss, *single, None, None, mode, backend, False)
        inputs = single[:2]
    grads = torch.autograd.grad(value, inputs, upstream.to(value.dtype))
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    for rank in range(WORLD):
        got_value, got_grads = ranks[rank][(case_id, mode)]
        torch.testing.assert_close(got_value.double(), value.detach().double(), rtol=rtol, atol=0)
        for got, want in zip(got_grads, grads):
            want_rows = WORLD * want[rank * LOCAL:(rank + 1) * LOCAL].double()
            torch.testing.assert_close(got.double(), want_rows, rtol=rtol, atol=rtol * float(want.abs().max()))


def test_ddp_parameter_gradients_equal_single_process(ranks):
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM_IN, 9).double()
    x = torch.randn(2, WORLD * LOCAL, DIM_IN, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    BarlowTwinsLoss(0.3)(model(x[0]), model(x[1])).backward()
    for rank in range(WORLD):
        for got, want in zip(ranks[rank]["ddp"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
