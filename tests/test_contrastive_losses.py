"""Public contrastive losses (sslfast.losses modules, sslfast.functional): against lightly's
modules (memory bank included) in float64, module vs functional, the queue and iSogCLR state,
routing through the dispatched similarity_lse op, and clear errors on bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import sslfast.functional as SF
import sslfast.ops.similarity_lse as similarity_op
from sslfast import losses as L
from sslfast.reference import contrastive as C

F64 = dict(rtol=1e-10, atol=1e-12)
LIGHTLY = dict(rtol=1e-6, atol=1e-9)


def _pair(batch, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(batch, dim, generator=g, dtype=dtype)).requires_grad_() for _ in range(2)]


def _value_and_grads(loss, inputs, upstream=1.9):
    return (loss.detach(),) + torch.autograd.grad(loss, inputs, torch.tensor(upstream, dtype=loss.dtype))


def _assert_all_close(got, want, **tol):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **(tol or F64))


# ------------------------------------------------------------------------------------------------
# against lightly
# ------------------------------------------------------------------------------------------------

@given(batch=st.integers(1, 10), dim=st.integers(1, 8), temperature=st.floats(0.05, 1.5),
       seed=st.integers(0, 2**31 - 1))
def test_ntxent_module_matches_lightly(batch, dim, temperature, seed):
    from lightly.loss import NTXentLoss as LightlyNTXent

    z0, z1 = _pair(batch, dim, seed)
    ours = _value_and_grads(L.NTXentLoss(temperature=temperature)(z0, z1), (z0, z1))
    theirs = _value_and_grads(LightlyNTXent(temperature=temperature)(z0, z1), (z0, z1))
    _assert_all_close(ours, theirs, **LIGHTLY)


def test_ntxent_memory_bank_matches_lightly_over_steps():
    """Bank contents, pointer wrap (12 % 5 != 0 drops the overflow like lightly), values and grads."""
    from lightly.loss import NTXentLoss as LightlyNTXent

    torch.manual_seed(0)
    theirs_fn = LightlyNTXent(temperature=0.2, memory_bank_size=(12, 6)).double()
    ours_fn = L.NTXentLoss(temperature=0.2, memory_bank_size=(12, 6)).double()
    # lightly's bank is drawn in float32: renormalise in float64 so both start from unit vectors
    theirs_fn.memory_bank.bank.copy_(F.normalize(theirs_fn.memory_bank.bank, dim=1))
    ours_fn.memory_bank.bank.copy_(theirs_fn.memory_bank.bank)
    for step in range(5):
        z0, z1 = _pair(5, 6, step)
        ours = _value_and_grads(ours_fn(z0, z1), (z0, z1), upstream=0.8)
        theirs = _value_and_grads(theirs_fn(z0, z1), (z0, z1), upstream=0.8)
        _assert_all_close(ours, theirs, **LIGHTLY)
        torch.testing.assert_close(ours_fn.memory_bank.bank, theirs_fn.memory_bank.bank, **F64)
        assert int(ours_fn.memory_bank.bank_ptr) == int(theirs_fn.memory_bank.bank_ptr)
    # no update without gradient (evaluation), as lightly
    before = ours_fn.memory_bank.bank.clone()
    with torch.no_grad():
        ours_fn(*(z.detach() for z in _pair(5, 6, 99)))
    assert torch.equal(before, ours_fn.memory_bank.bank)


@given(batch=st.integers(2, 10), dim=st.integers(1, 8), temperature=st.floats(0.05, 1.5),
       sigma=st.floats(0.1, 2.0), seed=st.integers(0, 2**31 - 1))
def test_dcl_modules_match_lightly(batch, dim, temperature, sigma, seed):
    import warnings

    from lightly.loss import DCLLoss as LightlyDCL
    from lightly.loss import DCLWLoss as LightlyDCLW

    z0, z1 = _pair(batch, dim, seed)
    _assert_all_close(_value_and_grads(L.DCLLoss(temperature)(z0, z1), (z0, z1)),
                      _value_and_grads(LightlyDCL(temperature)(z0, z1), (z0, z1)), **LIGHTLY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lightly's torch.tensor(tensor) copy
        theirs = _value_and_grads(LightlyDCLW(temperature, sigma)(z0, z1), (z0, z1))
    _assert_all_close(_value_and_grads(L.DCLWLoss(temperature, sigma)(z0, z1), (z0, z1)), theirs, **LIGHTLY)


# ------------------------------------------------------------------------------------------------
# module == functional == reference
# ------------------------------------------------------------------------------------------------

# name: (module factory, the same loss through sslfast.functional given the module)
CASES = {
    "ntxent": (lambda: L.NTXentLoss(0.3), lambda a, b, m: SF.nt_xent_loss(a, b, temperature=0.3)),
    "dcl": (lambda: L.DCLLoss(0.2), lambda a, b, m: SF.dcl_loss(a, b, 0.2)),
    "dclw": (lambda: L.DCLWLoss(0.2, 0.7), lambda a, b, m: SF.dclw_loss(a, b, 0.2, 0.7)),
    "info_nce": (lambda: L.InfoNCELoss(0.1, symmetric=False),
                 lambda a, b, m: SF.info_nce_loss(a, b, 0.1, symmetric=False)),
    "clip": (lambda: L.CLIPLoss(0.05), lambda a, b, m: SF.clip_loss(a, b, m.logit_scale.detach().exp().to(a.dtype))),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_module_matches_functional(name, dtype, tol):
    make_module, functional = CASES[name]
    z0, z1 = _pair(7, 5, 3, dtype)
    module = make_module().to(dtype)
    _assert_all_close(_value_and_grads(module(z0, z1), (z0, z1)), _value_and_grads(functional(z0, z1, module), (z0, z1)),
                      **dict(zip(("rtol", "atol"), tol(dtype))))


def test_ntxent_multi_view_module():
    views = [v.requires_grad_() for v in torch.randn(4, 6, 5, dtype=torch.float64).unbind(0)]
    got = _value_and_grads(L.NTXentLoss(0.25)(*views), views)
    want = _value_and_grads(C.nt_xent_loss(*views, temperature=0.25), views)
    _assert_all_close(got, want)


def test_moco_module_queue_is_moco_ring_buffer():
    torch.manual_seed(1)
    loss_fn = L.MoCoLoss(temperature=0.2, queue_size=8, dim=4).double()
    queue = loss_fn.queue.bank.clone()
    for step in range(3):
        query, key = _pair(4, 4, step)
        key = key.detach()
        want = _value_and_grads(C.moco_loss(query, key, queue, 0.2), (query,))
        got = _value_and_grads(loss_fn(query, key), (query,))
        _assert_all_close(got, want)
        ptr = (4 * step) % 8  # MoCo: queue[:, ptr:ptr + B] = keys.T; ptr = (ptr + B) % K
        queue[ptr:ptr + 4] = F.normalize(key, dim=1)
        torch.testing.assert_close(loss_fn.queue.bank, queue, **F64)
        assert int(loss_fn.queue.bank_ptr) == (ptr + 4) % 8


def test_moco_queue_survives_state_dict_round_trip():
    loss_fn = L.MoCoLoss(queue_size=16, dim=4)
    loss_fn(torch.randn(4, 4, requires_grad=True), torch.randn(4, 4))
    restored = L.MoCoLoss(queue_size=16, dim=4)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.queue.bank, loss_fn.queue.bank) and int(restored.queue.bank_ptr) == 4


def test_clip_module_init_clamp_and_scale_gradient():
    loss_fn = L.CLIPLoss().double()
    assert math.isclose(loss_fn.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-7)  # a float32 parameter
    image, text = _pair(6, 5, 8)
    got = _value_and_grads(loss_fn(image, text), (image, text, loss_fn.logit_scale))
    scale = loss_fn.logit_scale.detach().clone().requires_grad_()
    want = _value_and_grads(C.clip_loss(image, text, scale.exp()), (image, text, scale))
    _assert_all_close(got, want)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)  # beyond log(100): the scale is 100 and the gradient 0
    loss = loss_fn(image, text)
    torch.testing.assert_close(loss, C.clip_loss(image, text, 100.0), **F64)
    (grad,) = torch.autograd.grad(loss, loss_fn.logit_scale)
    assert grad.item() == 0.0
    frozen = L.CLIPLoss(0.1, learnable=False)
    assert not list(frozen.parameters()) and "logit_scale" in dict(frozen.named_buffers())


def test_isogclr_module_updates_state_like_functional():
    module = L.ISogCLRLoss(num_samples=20, tau_init=0.1, rho=0.4, beta_u=0.5, eta=0.03).double()
    tau, s, u = (t.clone() for t in (module.tau, module.s, module.u))
    for step in range(3):
        z0, z1 = _pair(6, 4, step)
        index = torch.randperm(20, generator=torch.Generator().manual_seed(step))[:6]
        got = _value_and_grads(module(z0, z1, index), (z0, z1))
        want = _value_and_grads(SF.isogclr_loss(z0, z1, index, tau, s, u, rho=0.4, beta_u=0.5, eta=0.03), (z0, z1))
        _assert_all_close(got, want)
        _assert_all_close((module.tau, module.s, module.u), (tau, s, u))
    with torch.no_grad():  # evaluation does not move the state
        before = module.tau.clone()
        module(*(z.detach() for z in _pair(6, 4, 9)), torch.arange(6))
    assert torch.equal(before, module.tau)


def test_every_public_loss_runs_through_the_dispatched_op(monkeypatch):
    calls = []
    real = similarity_op.similarity_lse

    def spy(*args, backend=None, **kwargs):
        calls.append(backend)
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(similarity_op, "similarity_lse", spy)
    z0, z1 = _pair(4, 3, 0)
    index = torch.arange(4)
    for loss_fn, args in [
        (L.NTXentLoss(backend="reference"), (z0, z1)),
        (L.NTXentLoss(memory_bank_size=(8, 3), backend="reference"), (z0, z1)),
        (L.DCLLoss(backend="reference"), (z0, z1)),
        (L.DCLWLoss(backend="reference"), (z0, z1)),
        (L.InfoNCELoss(backend="reference"), (z0, z1)),
        (L.CLIPLoss(backend="reference"), (z0, z1)),
        (L.MoCoLoss(queue_size=8, dim=3, backend="reference"), (z0, z1)),
        (L.ISogCLRLoss(num_samples=4, backend="reference").double(), (z0, z1, index)),
    ]:
        before = len(calls)
        loss_fn.double()(*args)
        assert len(calls) > before and set(calls[before:]) == {"reference"}, type(loss_fn).__name__


def test_forced_backend_that_cannot_run_raises():
    """CPU tensors never run on the "cuda" backend: absent or not, forcing it must raise."""
    z0, z1 = _pair(4, 3, 0)
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        L.NTXentLoss(backend="cuda")(z0, z1)


def test_half_inputs_are_supported():
    z0, z1 = (torch.randn(8, 16).to(torch.bfloat16).requires_grad_() for _ in range(2))
    loss = L.NTXentLoss(0.2)(z0, z1)
    loss.backward()
    assert loss.dtype == torch.float32 and z0.grad.dtype == torch.bfloat16
    # against fp64 on the same (bf16-rounded) values: bf16 keeps 8 bits of mantissa
    w0, w1 = (z.detach().double().requires_grad_() for z in (z0, z1))
    want = L.NTXentLoss(0.2)(w0, w1)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z0.grad.double(), w0.grad, rtol=1e-2, atol=1e-2 * float(w0.grad.abs().max()))


def _op_is_a_library_op() -> bool:
    try:
        getattr(torch.ops.sslfast, "similarity_lse")
        return True
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.skipif(not _op_is_a_library_op(),
                    reason="similarity_lse is not yet a torch.library op (issue 8): the reference "
                           "autograd.Function and dispatch's logging are not traceable by Dynamo")
@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_compile_fullgraph(name):
    make_module, _ = CASES[name]
    z0, z1 = _pair(6, 4, 1, torch.float32)
    module = make_module()
    compiled = torch.compile(module, fullgraph=True)
    _assert_all_close(_value_and_grads(compiled(z0, z1), (z0, z1)), _value_and_grads(module(z0, z1), (z0, z1)),
                      rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument
# ------------------------------------------------------------------------------------------------

def _z(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD_CONSTRUCTORS = [
    (lambda: L.NTXentLoss(temperature=0.0), ValueError, "temperature"),
    (lambda: L.NTXentLoss(temperature=-0.5), ValueError, "temperature"),
    (lambda: L.NTXentLoss(temperature=float("nan")), ValueError, "temperature"),
    (lambda: L.NTXentLoss(temperature="0.5"), TypeError, "temperature"),
    (lambda: L.NTXentLoss(memory_bank_size=4096), ValueError, "memory_bank_size"),
    (lambda: L.NTXentLoss(memory_bank_size=(16, 0)), ValueError, "dim"),
    (lambda: L.NTXentLoss(memory_bank_size=(16, 4, 2)), ValueError, "memory_bank_size"),
    (lambda: L.NTXentLoss(gather_distributed="yes"), TypeError, "gather_distributed"),
    (lambda: L.NTXentLoss(backend="gpu"), ValueError, "backend"),
    # a backend the op does not have fails at construction, not at the first forward
    (lambda: L.NTXentLoss(backend="cuda"), ValueError, "backend 'cuda'"),
    (lambda: L.MoCoLoss(backend="numba"), ValueError, "backend 'numba'"),
    (lambda: L.DCLLoss(weight_fn=3), TypeError, "weight_fn"),
    (lambda: L.DCLWLoss(sigma=0), ValueError, "sigma"),
    (lambda: L.CLIPLoss(init_temperature=0), ValueError, "init_temperature"),
    (lambda: L.CLIPLoss(max_logit_scale=0.5), ValueError, "max_logit_scale"),
    # outside [1 / max_logit_scale, 1] the clamp would hold the scale at a bound with no gradient
    (lambda: L.CLIPLoss(init_temperature=2.0), ValueError, "init_temperature"),
    (lambda: L.CLIPLoss(init_temperature=0.005), ValueError, "init_temperature"),
    (lambda: L.InfoNCELoss(symmetric=1), TypeError, "symmetric"),
    (lambda: L.MoCoLoss(queue_size=0), ValueError, "queue_size"),
    (lambda: L.MoCoLoss(dim=2.0), TypeError, "dim"),
    (lambda: L.ISogCLRLoss(num_samples=0), ValueError, "num_samples"),
    (lambda: L.ISogCLRLoss(10, gamma=0.0), ValueError, "gamma"),
    (lambda: L.ISogCLRLoss(10, gamma=1.5), ValueError, "gamma"),
    (lambda: L.ISogCLRLoss(10, tau_min=0.001, tau_init=0.07), ValueError, "tau_min"),
    (lambda: L.ISogCLRLoss(10, tau_min=0.2, tau_max=0.1), ValueError, "tau_max"),
    (lambda: L.ISogCLRLoss(10, tau_init=2.0), ValueError, "tau_init"),
    (lambda: L.ISogCLRLoss(10, rho=float("inf")), TypeError, "rho"),
    (lambda: L.ISogCLRLoss(10, eta=-1.0), ValueError, "eta"),
]


@pytest.mark.parametrize("make, error, name", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


BAD_INPUTS = [
    (lambda: L.NTXentLoss()(_z(8, 4), _z(8, 5)), ValueError, "out0 and out1 must have the same shape"),
    (lambda: L.NTXentLoss()(_z(8, 4), _z(7, 4)), ValueError, "same shape"),
    (lambda: L.NTXentLoss()(_z(8), _z(8)), ValueError, "out0 must be 2-D"),
    (lambda: L.NTXentLoss()(_z(8, 4), _z(8, 4), _z(8, 3)), ValueError, "out2"),
    (lambda: L.NTXentLoss()(_z(0, 4), _z(0, 4)), ValueError, "out0 needs at least 1"),
    (lambda: L.NTXentLoss()(torch.ones(8, 4, dtype=torch.long), _z(8, 4)), TypeError, "out0 must be a floating"),
    (lambda: L.NTXentLoss()(_z(8, 4), _z(8, 4, dtype=torch.float64)), TypeError, "same dtype"),
    (lambda: L.NTXentLoss()(_z(8, 4), torch.full((8, 4), float("nan"))), ValueError, "out1 contains 32 NaN"),
    (lambda: L.NTXentLoss()(_z(8, 4), [[1.0]]), TypeError, "out1 must be a torch.Tensor"),
    (lambda: L.NTXentLoss(memory_bank_size=(16, 4))(_z(8, 4), _z(8, 4), _z(8, 4)), ValueError, "two views"),
    (lambda: L.NTXentLoss(memory_bank_size=(16, 4))(_z(8, 5), _z(8, 5)), ValueError, "feature dimension 4"),
    (lambda: L.DCLLoss()(_z(1, 4), _z(1, 4)), ValueError, "at least 2 samples"),
    (lambda: L.DCLWLoss()(_z(1, 4), _z(1, 4)), ValueError, "at least 2 samples"),
    (lambda: L.DCLLoss(weight_fn=lambda a, b: a.sum())(_z(4, 3), _z(4, 3)), ValueError, r"weight_fn must return"),
    (lambda: L.CLIPLoss()(_z(8, 4), _z(6, 4)), ValueError, "image_features and text_features"),
    (lambda: L.InfoNCELoss()(_z(8, 4), _z(8, 4).long()), TypeError, "key must be a floating"),
    (lambda: SF.clip_loss(_z(8, 4), _z(8, 4), torch.tensor([1.0, 2.0])), ValueError, "logit_scale"),
    (lambda: SF.clip_loss(_z(8, 4), _z(8, 4), torch.tensor(-1.0)), ValueError, "logit_scale must be > 0"),
    (lambda: SF.nt_xent_loss(_z(8, 4), _z(8, 4), temperature=0), ValueError, "temperature"),
    (lambda: SF.moco_loss(_z(8, 4), _z(8, 4), _z(16, 5)), ValueError, "feature dimension"),
    (lambda: SF.moco_loss(_z(8, 4), _z(8, 4), _z(0, 4)), ValueError, "negatives needs at least 1"),
    (lambda: L.MoCoLoss(queue_size=16, dim=4)(_z(8, 5), _z(8, 5)), ValueError, "dim=4"),
    (lambda: L.ISogCLRLoss(10)(_z(4, 3), _z(4, 3), torch.arange(3)), ValueError, r"index must have shape \(4,\)"),
    (lambda: L.ISogCLRLoss(10)(_z(4, 3), _z(4, 3), torch.tensor([0, 1, 2, 10])), ValueError, r"\[0, 10\)"),
    (lambda: L.ISogCLRLoss(10)(_z(4, 3), _z(4, 3), torch.tensor([0, 1, 1, 2])), ValueError, "repeat"),
    (lambda: L.ISogCLRLoss(10)(_z(4, 3), _z(4, 3), torch.arange(4.0)), TypeError, "index must be an integer"),
    (lambda: L.ISogCLRLoss(10)(_z(1, 3), _z(1, 3), torch.arange(1)), ValueError, "at least 2 samples"),
    (lambda: SF.isogclr_loss(_z(4, 3), _z(4, 3), torch.arange(4), torch.ones(10), torch.zeros(9), torch.zeros(10)),
     ValueError, "s must be 1-D with the shape of tau"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
