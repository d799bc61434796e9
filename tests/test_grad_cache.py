"""grad_cache_step gives the parameter gradients of the plain full-batch backward (float64)."""
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from _distributed import run_on_ranks
from sslfast import losses as L
from sslfast.train.grad_cache import grad_cache_step

TOL = dict(rtol=1e-10, atol=1e-12)


def _mlp(dim_in=6, dim_out=5, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim_in, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, dim_out)).double()


def _grads(*modules):
    return [p.grad.clone() for m in modules for p in m.parameters() if p.requires_grad]


def _zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


def _inputs(batch, dim=6, seed=1, views=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(views)]


@pytest.mark.parametrize("batch, chunk", [(10, 3), (10, 10), (10, 64), (7, 1)])
def test_simclr_matches_full_batch(batch, chunk):
    encoder, loss_fn = _mlp(), L.NTXentLoss(0.3)
    x0, x1 = _inputs(batch)
    want_loss = loss_fn(encoder(x0), encoder(x1))
    want_loss.mul(1.0).backward()
    want = _grads(encoder)
    _zero(encoder)
    got_loss = grad_cache_step(loss_fn, encoder, [x0, x1], chunk_size=chunk)
    torch.testing.assert_close(got_loss, want_loss.detach(), **TOL)
    for a, b in zip(_grads(encoder), want):
        torch.testing.assert_close(a, b, **TOL)


def test_dropout_is_replayed_exactly():
    """With dropout the reference is the same chunked forward run with autograd from the same
    RNG state: the replay must draw the very same masks."""
    encoder, loss_fn = _mlp(dropout=0.5), L.DCLLoss(0.2)
    x0, x1 = _inputs(11)
    torch.manual_seed(42)
    z0 = torch.cat([encoder(c) for c in x0.split(4)])
    z1 = torch.cat([encoder(c) for c in x1.split(4)])
    want_loss = loss_fn(z0, z1)
    want_loss.backward()
    want, state_after = _grads(encoder), torch.get_rng_state()
    _zero(encoder)
    torch.manual_seed(42)
    got_loss = grad_cache_step(loss_fn, encoder, [x0, x1], chunk_size=4)
    torch.testing.assert_close(got_loss, want_loss.detach(), **TOL)
    for a, b in zip(_grads(encoder), want):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(torch.get_rng_state(), state_after), "the replay must not advance the generator"
    # and the masks matter: another seed gives other gradients
    _zero(encoder)
    torch.manual_seed(43)
    grad_cache_step(loss_fn, encoder, [x0, x1], chunk_size=4)
    assert not torch.allclose(_grads(encoder)[0], want[0])


def test_two_encoder_clip_with_learnable_scale():
    image_encoder, text_encoder = _mlp(6, 5, seed=1), _mlp(9, 5, seed=2)
    loss_fn = L.CLIPLoss().double()
    images = _inputs(13, 6, seed=3, views=1)[0]
    tokens = _inputs(13, 9, seed=4, views=1)[0]
    want_loss = loss_fn(image_encoder(images), text_encoder(tokens))
    want_loss.backward()
    want = _grads(image_encoder, text_encoder, loss_fn)
    _zero(image_encoder, text_encoder, loss_fn)
    grad_cache_step(loss_fn, [image_encoder, text_encoder], [images, tokens], chunk_size=5)
    got = _grads(image_encoder, text_encoder, loss_fn)
    assert len(got) == len(want) == 9  # 4 + 4 encoder tensors and the logit scale
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_structured_inputs_and_frozen_encoder():
    """Tuple and dict inputs; a frozen (momentum) encoder is embedded but not replayed."""
    class TwoArg(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()

        def forward(self, x, y):
            return self.a(x) * self.b(y)

    query_encoder, key_encoder = TwoArg(), _mlp(5, 4, seed=9).requires_grad_(False)
    loss_fn = L.MoCoLoss(0.2, queue_size=8, dim=4).double()
    bank = loss_fn.queue.bank.clone()
    x, y = _inputs(6, 3, seed=5, views=1)[0], _inputs(6, 2, seed=6, views=1)[0]
    k_in = _inputs(6, 5, seed=7, views=1)[0]
    want_loss = loss_fn(query_encoder(x, y), key_encoder(k_in))
    want_loss.backward()
    want, want_bank = _grads(query_encoder), loss_fn.queue.bank.clone()
    _zero(query_encoder)
    loss_fn.queue.bank.copy_(bank)
    loss_fn.queue.bank_ptr.zero_()
    grad_cache_step(loss_fn, [query_encoder, key_encoder], [(x, y), {"input": k_in}], chunk_size=4)
    for a, b in zip(_grads(query_encoder), want):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(loss_fn.queue.bank, want_bank, **TOL)  # enqueued once
    assert int(loss_fn.queue.bank_ptr) == 6


@pytest.mark.parametrize("call, error, message", [
    (lambda e, x: grad_cache_step(L.NTXentLoss(), e, [x, x], chunk_size=0), ValueError, "chunk_size"),
    (lambda e, x: grad_cache_step(L.NTXentLoss(), [e], [x, x], chunk_size=2), ValueError, "pair up"),
    (lambda e, x: grad_cache_step(L.NTXentLoss(), e, x, chunk_size=2), TypeError, "inputs must be a non-empty list"),
    (lambda e, x: grad_cache_step(L.NTXentLoss(), e, [(x, x[:3])], chunk_size=2), ValueError, "share"),
    (lambda e, x: grad_cache_step(L.NTXentLoss(), [e, 3], [x, x], chunk_size=2), TypeError, r"encoders\[1\]"),
    (lambda e, x: grad_cache_step(L.NTXentLoss(), lambda t: t.sum(), [x, x], chunk_size=2), TypeError, "one row"),
    (lambda e, x: grad_cache_step(lambda a, b: a, e, [x, x], chunk_size=2), TypeError, "scalar"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(_mlp(), _inputs(6)[0])


@pytest.mark.distributed
def test_ddp_syncs_once_and_matches_single_process():
    single_encoder = _mlp(seed=3)
    x0, x1 = _inputs(8, seed=11)
    loss = L.NTXentLoss(0.3)(single_encoder(x0), single_encoder(x1))
    loss.backward()
    want = _grads(single_encoder)
    for rank_grads in run_on_ranks(_ddp_grad_cache_worker, world_size=2, args=(x0, x1)):
        for a, b in zip(rank_grads, want):
            torch.testing.assert_close(a, b, **TOL)


def _ddp_grad_cache_worker(rank, world_size, x0, x1):
    model = DistributedDataParallel(_mlp(seed=3))
    rows = slice(rank * 4, (rank + 1) * 4)
    grad_cache_step(L.NTXentLoss(0.3, gather_distributed=True), model, [x0[rows], x1[rows]], chunk_size=3)
    return _grads(model.module)
