"""sslfast.reference.contrastive against dense naive forms written here, lightly and the official
iSogCLR update, in float64: values, gradients with random upstream gradients, gradcheck."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sslfast.reference import contrastive as C
from sslfast.reference.similarity import similarity_lse

F64 = dict(rtol=1e-10, atol=1e-12)


def _views(num_views, batch, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # scales away from 1 so that the normalisation and its gradient matter
    return [(torch.randn(batch, dim, generator=g, dtype=dtype) * (0.5 + 2 * torch.rand(1, generator=g).item()))
            .requires_grad_() for _ in range(num_views)]


def _grads(loss, inputs, upstream):
    return torch.autograd.grad(loss, inputs, torch.as_tensor(upstream, dtype=loss.dtype))


def _assert_same(ours, theirs, inputs, upstream=1.7, **tol):
    tol = tol or F64
    torch.testing.assert_close(ours, theirs, **tol)
    for a, b in zip(_grads(ours, inputs, upstream), _grads(theirs, inputs, upstream)):
        torch.testing.assert_close(a, b, **tol)


def chunked_lse(chunk_rows):
    """The reference primitive with tiny chunks, to exercise chunk boundaries inside the losses."""
    def lse(q, k, scale, self_index=None, exclude_period=0, normalize=False):
        if normalize:
            q = F.normalize(q, dim=1)
            k = None if k is None else F.normalize(k, dim=1)
        return similarity_lse(q, q if k is None else k, scale, self_index, exclude_period, chunk_rows=chunk_rows)
    return lse


# ------------------------------------------------------------------------------------------------
# dense naive forms
# ------------------------------------------------------------------------------------------------

def naive_supcon(views, temperature):
    """SupCon L_out with labels = sample ids, written with the full (VB, VB) matrix."""
    z = F.normalize(torch.cat(views), dim=1)
    batch = views[0].shape[0]
    ids = torch.arange(batch).repeat(len(views))
    logits = z @ z.T / temperature
    eye = torch.eye(len(ids), dtype=torch.bool)
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (ids[:, None] == ids[None, :]) & ~eye
    return -((log_prob * positive).sum(1) / positive.sum(1)).mean()


def naive_dcl(z0, z1, temperature, w0=None, w1=None):
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    batch = z0.shape[0]
    z = torch.cat([z0, z1])
    logits = z @ z.T / temperature
    ids = torch.arange(batch).repeat(2)
    negatives = logits.masked_fill(ids[:, None] == ids[None, :], float("-inf"))
    positive = (z0 * z1).sum(1) / temperature
    w0 = torch.ones(batch, dtype=z.dtype) if w0 is None else w0
    w1 = torch.ones(batch, dtype=z.dtype) if w1 is None else w1
    return (torch.logsumexp(negatives, 1) - torch.cat([w0 * positive, w1 * positive])).mean()


def naive_clip(image, text, scale, symmetric=True, normalize=True):
    if normalize:
        image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0])
    loss = F.cross_entropy(logits, labels)
    return 0.5 * (loss + F.cross_entropy(logits.T, labels)) if symmetric else loss


def naive_moco(query, key, queue, temperature):
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ F.normalize(queue, dim=1).T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def official_isogclr_step(f1, f2, index, tau_state, s_state, u_state, gamma=0.8, rho=6.0, eta=1e-3, beta_u=0.9,
                          tau_min=0.05, tau_max=1.0, grad_clip=3.0):
    """SogCLR_DRO_Loss.forward of zhqiu/contrastive-learning-iSogCLR (unimodal_exps/losses.py),
    transcribed on the dense (2B, 2B) matrix, the epoch > 0 path that main_supcon.py runs."""
    bsz = f1.shape[0]
    features = torch.cat([F.normalize(f1, dim=1), F.normalize(f2, dim=1)])
    sim = features @ features.T
    pos_sim = torch.cat([torch.diagonal(sim, offset=bsz), torch.diagonal(sim, offset=-bsz)])[:, None]
    tau = tau_state[index].repeat(2)
    sim_d_temps = (sim / tau[:, None]).detach()
    mask_neg = (1.0 - torch.eye(bsz, dtype=sim.dtype)).repeat(2, 2)
    num_neg = 2 * bsz - 2
    exp_sim = torch.exp(sim_d_temps) * mask_neg
    g = exp_sim.sum(1, keepdim=True) / num_neg
    s1 = (1 - gamma) * s_state[index] + gamma * g.squeeze()[:bsz]
    s2 = (1 - gamma) * s_state[index] + gamma * g.squeeze()[bsz:]
    s_state[index] = (s1 + s2) / 2
    w1, w2 = exp_sim[:bsz] / s1[:, None], exp_sim[bsz:] / s2[:, None]
    loss_1 = (w1 * sim[:bsz]).sum(1, keepdim=True) / num_neg - pos_sim[:bsz]
    loss_2 = (w2 * sim[bsz:]).sum(1, keepdim=True) / num_neg - pos_sim[bsz:]
    grad_tau_1 = torch.log(s1) + rho - (w1 * sim_d_temps[:bsz]).sum(1) / num_neg
    grad_tau_2 = torch.log(s2) + rho - (w2 * sim_d_temps[bsz:]).sum(1) / num_neg
    grad_tau = ((grad_tau_1 + grad_tau_2) / 2).clamp(-grad_clip, grad_clip)
    u_state[index] = (1 - beta_u) * u_state[index] + beta_u * grad_tau
    tau_state[index] = (tau_state[index] - eta * u_state[index]).clamp(tau_min, tau_max)
    return (loss_1 + loss_2).mean()


# ------------------------------------------------------------------------------------------------
# NT-Xent
# ------------------------------------------------------------------------------------------------

@given(num_views=st.integers(2, 4), batch=st.integers(1, 9), dim=st.integers(1, 7),
       temperature=st.floats(0.05, 2.0), chunk=st.integers(1, 11), seed=st.integers(0, 2**31 - 1))
def test_nt_xent_matches_dense_supcon(num_views, batch, dim, temperature, chunk, seed):
    views = _views(num_views, batch, dim, seed)
    ours = C.nt_xent_loss(*views, temperature=temperature, lse=chunked_lse(chunk))
    _assert_same(ours, naive_supcon(views, temperature), views, upstream=-0.6)


@given(batch=st.integers(1, 9), dim=st.integers(1, 7), temperature=st.floats(0.05, 2.0),
       seed=st.integers(0, 2**31 - 1))
def test_nt_xent_matches_lightly(batch, dim, temperature, seed):
    from lightly.loss import NTXentLoss

    views = _views(2, batch, dim, seed)
    ours = C.nt_xent_loss(*views, temperature=temperature)
    _assert_same(ours, NTXentLoss(temperature=temperature)(*views), views, upstream=2.3, rtol=1e-6, atol=1e-9)


def test_nt_xent_two_views_is_simclr_formula():
    """V = 2 is the plain SimCLR cross-entropy: positive at column i + B (mod 2B), self excluded."""
    z0, z1 = _views(2, 6, 5, 3)
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = (z @ z.T / 0.3).fill_diagonal_(float("-inf"))
    labels = torch.arange(12).roll(6)
    _assert_same(C.nt_xent_loss(z0, z1, temperature=0.3), F.cross_entropy(logits, labels), [z0, z1])


def test_nt_xent_independent_of_embedding_scale():
    z0, z1, z2 = _views(3, 5, 4, 7)
    torch.testing.assert_close(C.nt_xent_loss(z0, z1, z2, temperature=0.2),
                               C.nt_xent_loss(3 * z0, 0.1 * z1, z2, temperature=0.2), **F64)


# ------------------------------------------------------------------------------------------------
# DCL / DCLW
# ------------------------------------------------------------------------------------------------

@given(batch=st.integers(2, 9), dim=st.integers(1, 7), temperature=st.floats(0.05, 2.0),
       chunk=st.integers(1, 11), seed=st.integers(0, 2**31 - 1))
def test_dcl_matches_dense(batch, dim, temperature, chunk, seed):
    z0, z1 = _views(2, batch, dim, seed)
    ours = C.dcl_loss(z0, z1, temperature, lse=chunked_lse(chunk))
    _assert_same(ours, naive_dcl(z0, z1, temperature), [z0, z1], upstream=0.4)


@given(batch=st.integers(2, 9), dim=st.integers(1, 7), temperature=st.floats(0.05, 2.0),
       sigma=st.floats(0.1, 2.0), seed=st.integers(0, 2**31 - 1))
def test_dcl_and_dclw_match_lightly(batch, dim, temperature, sigma, seed):
    from lightly.loss import DCLLoss, DCLWLoss

    z0, z1 = _views(2, batch, dim, seed)
    tol = dict(rtol=1e-6, atol=1e-9)
    _assert_same(C.dcl_loss(z0, z1, temperature), DCLLoss(temperature)(z0, z1), [z0, z1], upstream=-1.3, **tol)
    with pytest.warns(UserWarning):  # lightly copy-constructs its weights with torch.tensor(tensor)
        theirs = DCLWLoss(temperature, sigma)(z0, z1)
    _assert_same(C.dclw_loss(z0, z1, temperature, sigma), theirs, [z0, z1], upstream=0.9, **tol)
    weight_fn = lambda a, b: torch.sum((a - b) ** 2, dim=1) + 0.5  # noqa: E731 - lightly's docstring example
    _assert_same(C.dcl_loss(z0, z1, temperature, weight_fn), DCLLoss(temperature, weight_fn)(z0, z1), [z0, z1],
                 upstream=1.1, **tol)


def test_dclw_weights_are_the_von_mises_fisher_formula():
    z0, z1 = (F.normalize(v.detach(), dim=1) for v in _views(2, 7, 4, 11))
    expected = 2 - 7 * torch.softmax((z0 * z1).sum(1) / 0.3, dim=0)
    torch.testing.assert_close(C.negative_mises_fisher_weights(z0, z1, 0.3), expected, **F64)
    z0, z1 = _views(2, 7, 4, 11)
    w = 2 - 7 * torch.softmax((F.normalize(z0, dim=1) * F.normalize(z1, dim=1)).sum(1).detach() / 0.3, dim=0)
    _assert_same(C.dclw_loss(z0, z1, 0.2, 0.3), naive_dcl(z0, z1, 0.2, w, w), [z0, z1])


# ------------------------------------------------------------------------------------------------
# InfoNCE / CLIP
# ------------------------------------------------------------------------------------------------

@given(batch=st.integers(1, 9), dim=st.integers(1, 7), scale=st.floats(0.5, 100.0), symmetric=st.booleans(),
       normalize=st.booleans(), chunk=st.integers(1, 11), seed=st.integers(0, 2**31 - 1))
def test_info_nce_matches_cross_entropy(batch, dim, scale, symmetric, normalize, chunk, seed):
    image, text = _views(2, batch, dim, seed)
    if not normalize:  # unnormalised logits of scale ~100 * |x|^2 are a test of exp overflow, not of the loss
        image, text = (F.normalize(v.detach(), dim=1).mul(0.9).requires_grad_() for v in (image, text))
    scale_t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    ours = C.info_nce_loss(image, text, scale_t, symmetric=symmetric, normalize=normalize, lse=chunked_lse(chunk))
    theirs = naive_clip(image, text, scale_t, symmetric, normalize)
    _assert_same(ours, theirs, [image, text, scale_t], upstream=-2.1)


def test_clip_loss_is_open_clip_convention():
    """open_clip ClipLoss on normalised features with logit_scale = exp(log(1/0.07))."""
    image, text = (F.normalize(v, dim=1) for v in _views(2, 8, 6, 5))
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    ours = C.clip_loss(image, text, logit_scale.exp())
    logits_per_image = logit_scale.exp() * image @ text.T
    labels = torch.arange(8)
    theirs = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2
    _assert_same(ours, theirs, [logit_scale])


# ------------------------------------------------------------------------------------------------
# MoCo
# ------------------------------------------------------------------------------------------------

@given(batch=st.integers(1, 9), queue=st.integers(1, 20), dim=st.integers(1, 7), temperature=st.floats(0.05, 2.0),
       chunk=st.integers(1, 11), seed=st.integers(0, 2**31 - 1))
def test_moco_matches_dense(batch, queue, dim, temperature, chunk, seed):
    query, key = _views(2, batch, dim, seed)
    negatives = F.normalize(torch.randn(queue, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)),
                            dim=1)
    ours = C.moco_loss(query, key, negatives, temperature, lse=chunked_lse(chunk))
    _assert_same(ours, naive_moco(query, key, negatives, temperature), [query, key], upstream=3.1)


# ------------------------------------------------------------------------------------------------
# iSogCLR
# ------------------------------------------------------------------------------------------------

def _isogclr_state(num_samples, tau_init=0.07):
    return [torch.full((num_samples,), tau_init, dtype=torch.float64), torch.zeros(num_samples, dtype=torch.float64),
            torch.zeros(num_samples, dtype=torch.float64)]


@given(batch=st.integers(2, 8), dim=st.integers(1, 6), chunk=st.integers(1, 11), seed=st.integers(0, 2**31 - 1),
       hyper=st.sampled_from([{}, dict(rho=0.4, beta_u=0.5, eta=0.03, tau_init=0.1),
                              dict(gamma=1.0, rho=-1.0, eta=0.2, grad_clip=0.5, tau_min=0.02, tau_max=0.3)]))
def test_isogclr_matches_official_over_steps(batch, dim, chunk, seed, hyper):
    hyper = dict(hyper)
    tau_init = hyper.pop("tau_init", 0.07)
    num_samples = 3 * batch
    official_state, our_state = _isogclr_state(num_samples, tau_init), _isogclr_state(num_samples, tau_init)
    g = torch.Generator().manual_seed(seed)
    for step in range(3):  # revisits samples, so the moving averages and the new tau are used
        z0, z1 = _views(2, batch, dim, seed + step)
        index = torch.randperm(num_samples, generator=g)[:batch]
        theirs = official_isogclr_step(z0, z1, index, *official_state, **hyper)
        ours = C.isogclr_loss(z0, z1, index, *our_state, lse=chunked_lse(chunk), **hyper)
        _assert_same(ours, theirs, [z0, z1], upstream=0.7, rtol=1e-9, atol=1e-11)
        for mine, official in zip(our_state, official_state):
            torch.testing.assert_close(mine, official, rtol=1e-9, atol=1e-11)
    assert not torch.equal(our_state[0], torch.full_like(our_state[0], tau_init)), "tau never moved"


def test_isogclr_without_update_leaves_state():
    z0, z1 = _views(2, 5, 4, 2)
    state = _isogclr_state(10)
    before = [t.clone() for t in state]
    C.isogclr_loss(z0, z1, torch.arange(5), *state, update_state=False)
    for a, b in zip(state, before):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# gradcheck, half precision, memory
# ------------------------------------------------------------------------------------------------

# DCLW's weights and iSogCLR's estimators are constants by design (stop-gradient in lightly and in
# the official code), so their gradients are not the derivatives of their values: they are checked
# against those implementations above instead of by finite differences.
@pytest.mark.parametrize("name", ["nt_xent", "nt_xent_3", "dcl", "info_nce", "moco"])
def test_gradcheck_fp64(name):
    z0, z1, z2 = (v.detach().requires_grad_() for v in _views(3, 5, 4, 13))
    queue = F.normalize(torch.randn(7, 4, dtype=torch.float64), dim=1)
    lse = chunked_lse(3)
    fn = {
        "nt_xent": lambda a, b, c: C.nt_xent_loss(a, b, temperature=0.4, lse=lse),
        "nt_xent_3": lambda a, b, c: C.nt_xent_loss(a, b, c, temperature=0.4, lse=lse),
        "dcl": lambda a, b, c: C.dcl_loss(a, b, 0.3, lambda x, y: (x * y).sum(1) + 2, lse=lse),
        "info_nce": lambda a, b, c: C.info_nce_loss(a, b, c.pow(2).sum() + 1, lse=lse),
        "moco": lambda a, b, c: C.moco_loss(a, b, queue, 0.3, lse=lse),
    }[name]
    assert torch.autograd.gradcheck(fn, (z0, z1, z2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32_loss_close_to_fp64(dtype, tol):
    z0, z1 = (v.detach() for v in _views(2, 16, 8, 19, dtype=torch.float32))
    want = C.nt_xent_loss(z0.double(), z1.double(), temperature=0.2)
    got = C.nt_xent_loss(z0.to(dtype), z1.to(dtype), temperature=0.2)
    assert got.dtype == torch.float32
    rtol = 1e-5 if dtype == torch.float32 else 5e-3 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol)


def test_losses_never_build_the_full_matrix():
    """With chunk_rows=4 and 2N = 64 rows, nothing autograd saves for backward has O(N^2) entries
    (a dense loss saves its (2N, 2N) logits)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    z0, z1 = _views(2, 32, 3, 23)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for loss in (C.nt_xent_loss(z0, z1, lse=chunked_lse(4)), C.dcl_loss(z0, z1, lse=chunked_lse(4))):
            loss.backward()
    assert sizes and max(sizes) < 64 * 64 / 4, max(sizes)


def test_lse_argument_is_what_serves_the_loss():
    calls = []

    def spy(q, k, scale, self_index=None, exclude_period=0, normalize=False):
        calls.append((q.shape, None if k is None else k.shape, exclude_period, normalize))
        return C.reference_lse(q, k, scale, self_index, exclude_period, normalize)

    z0, z1 = _views(2, 4, 3, 1)
    C.nt_xent_loss(z0, z1, lse=spy)
    C.dcl_loss(z0, z1, lse=spy)
    assert calls == [((8, 3), None, 0, True), ((8, 3), None, 4, True)]
