"""gather_distributed=True on 2 gloo processes against one process on the concatenated batch:
loss values (mean over ranks), embedding gradients (each rank's are W times the single-process
ones, see sslfast.distributed), parameter gradients after DDP's averaging, and the state of the
stateful losses (queue, iSogCLR temperatures), over two steps."""
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from _distributed import run_on_ranks
from sslfast import losses as L

pytestmark = pytest.mark.distributed

WORLD, BATCH, DIM_IN, DIM, STEPS, NUM_SAMPLES = 2, 3, 4, 5, 2, 16

CASES = ["ntxent", "ntxent_3_views", "ntxent_memory_bank", "dcl", "dcl_weight_fn", "dclw", "info_nce", "clip",
         "moco", "isogclr"]


def _loss(name, gather):
    torch.manual_seed(123)  # the same queue on every rank and in the single process
    g = dict(gather_distributed=gather, backend="reference")
    return {
        "ntxent": lambda: L.NTXentLoss(0.3, **g),
        "ntxent_3_views": lambda: L.NTXentLoss(0.4, **g),
        "ntxent_memory_bank": lambda: L.NTXentLoss(0.2, memory_bank_size=(10, DIM), **g),
        "dcl": lambda: L.DCLLoss(0.2, **g),
        "dcl_weight_fn": lambda: L.DCLLoss(0.2, weight_fn=lambda a, b: ((a - b) ** 2).sum(1), **g),
        "dclw": lambda: L.DCLWLoss(0.2, 0.6, **g),
        "info_nce": lambda: L.InfoNCELoss(0.1, symmetric=False, **g),
        "clip": lambda: L.CLIPLoss(0.07, **g),
        "moco": lambda: L.MoCoLoss(0.2, queue_size=8, dim=DIM, **g),
        "isogclr": lambda: L.ISogCLRLoss(NUM_SAMPLES, tau_init=0.1, rho=0.4, beta_u=0.5, eta=0.05, **g),
    }[name]().double()


def _num_views(name):
    return 3 if name == "ntxent_3_views" else 2


def _inputs(name, step):
    """The global batch of one step: views (V, W*B, DIM_IN) and dataset indices (W*B,)."""
    g = torch.Generator().manual_seed(1000 * step + len(name))
    views = torch.randn(_num_views(name), WORLD * BATCH, DIM_IN, generator=g, dtype=torch.float64)
    index = torch.randperm(NUM_SAMPLES, generator=g)[:WORLD * BATCH]
    return views, index


def _encoder():
    torch.manual_seed(7)
    return torch.nn.Linear(DIM_IN, DIM).double()


def _state(loss_fn):
    return {name: buf.clone() for name, buf in loss_fn.named_buffers()}


def _step(name, model, loss_fn, views, index):
    """One forward/backward; returns the loss, the embedding gradients and the parameter gradients."""
    model.zero_grad()
    loss_fn.zero_grad()
    num_views, batch = views.shape[0], views.shape[1]
    z = model(views.reshape(num_views * batch, DIM_IN))  # one forward for all views (DDP: one per backward)
    z.retain_grad()
    embeddings = z.reshape(num_views, batch, DIM).unbind(0)
    if name == "moco":
        embeddings = (embeddings[0], embeddings[1].detach())  # the key comes from a momentum encoder
    loss = loss_fn(*embeddings, index) if name == "isogclr" else loss_fn(*embeddings)
    loss.backward()
    encoder = getattr(model, "module", model)  # DDP wraps the encoder
    grads = {f"param.{n}": p.grad.clone() for n, p in encoder.named_parameters()}
    grads.update({f"loss.{n}": p.grad.clone() for n, p in loss_fn.named_parameters()})
    return loss.detach(), z.grad.reshape(num_views, batch, DIM).clone(), grads


def _worker(rank, world_size, names):
    out = {}
    for name in names:
        model = DistributedDataParallel(_encoder())
        loss_fn = _loss(name, gather=True)
        for step in range(STEPS):
            views, index = _inputs(name, step)
            rows = slice(rank * BATCH, (rank + 1) * BATCH)
            result = _step(name, model, loss_fn, views[:, rows], index[rows])
        out[name] = result + (_state(loss_fn),)
    # DCL needs 2 samples over the global batch, not per rank
    torch.manual_seed(rank)
    out["dcl_local_batch_of_one"] = L.DCLLoss(gather_distributed=True)(torch.randn(1, 4), torch.randn(1, 4))
    # batches of different sizes on the ranks: a clear error on every rank, not a crash in all_gather
    z = torch.randn(2 + rank, 4)
    try:
        L.NTXentLoss(gather_distributed=True)(z, z + 1)
        out["unequal_batches"] = "no error"
    except ValueError as exc:
        out["unequal_batches"] = str(exc)
    return out


def _single(name):
    model, loss_fn = _encoder(), _loss(name, gather=False)
    for step in range(STEPS):
        result = _step(name, model, loss_fn, *_inputs(name, step))
    return result + (_state(loss_fn),)


@pytest.fixture(scope="module")
def distributed_results():
    return run_on_ranks(_worker, world_size=WORLD, args=(CASES,))


@pytest.mark.parametrize("name", CASES)
def test_gather_distributed_equals_single_process(name, distributed_results):
    loss, z_grad, grads, state = _single(name)
    per_rank = [r[name] for r in distributed_results]
    tol = dict(rtol=1e-10, atol=1e-12)

    torch.testing.assert_close(sum(r[0] for r in per_rank) / WORLD, loss, **tol)
    for rank, (_, rank_z_grad, rank_grads, rank_state) in enumerate(per_rank):
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        torch.testing.assert_close(rank_z_grad / WORLD, z_grad[:, rows], **tol)
        for key, value in grads.items():
            if key.startswith("param."):  # averaged by DDP: the single-process gradient on every rank
                torch.testing.assert_close(rank_grads[key], value, **tol)
        for key, value in state.items():  # queue contents and iSogCLR state identical on every rank
            torch.testing.assert_close(rank_state[key], value, **tol)
    for key, value in grads.items():
        if key.startswith("loss."):  # e.g. CLIP's logit scale, outside DDP: the mean over ranks
            torch.testing.assert_close(sum(r[2][key] for r in per_rank) / WORLD, value, **tol)


def test_unequal_batches_across_ranks_are_a_clear_error_on_every_rank(distributed_results):
    for result in distributed_results:
        assert "the same number of rows on every rank" in result["unequal_batches"], result["unequal_batches"]
        assert "[2, 3]" in result["unequal_batches"]


def test_local_batch_of_one_is_enough_when_gathering(distributed_results):
    assert all(torch.isfinite(r["dcl_local_batch_of_one"]) for r in distributed_results)
