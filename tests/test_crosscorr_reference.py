"""The cross-correlation losses (reference backend and public API): against lightly, against the
official code written out naively here, Gram form against cross form, gradcheck, hypothesis over
coefficients and shapes, zero-variance features, half precision, validation errors, auto mode."""
import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lightly.loss import BarlowTwinsLoss as LightlyBarlowTwinsLoss
from lightly.loss import VICRegLoss as LightlyVICRegLoss

from sslfast import functional as SF
from sslfast.losses import BarlowTwinsLoss, MixedBarlowTwinsLoss, VICRegLoss
from sslfast.reference import crosscorr as ref

# (N, D) covering N in {2, 3, 64, 130, 512} and D in {1, 7, 128, 300, 2048}. lightly's VICRegLoss
# costs seconds at D = 2048 in fp64, so the widest shapes run once per loss, in Gram form.
SHAPES = [(2, 1), (3, 7), (64, 128), (130, 300), (512, 7), (3, 300), (130, 1)]
WIDE = [(512, 2048, "gram")]
LIGHTLY_CASES = [(n, d, mode) for n, d in SHAPES for mode in ("gram", "cross")] + WIDE
GRAM_VS_CROSS_SHAPES = [(2, 2048), (64, 2048), (130, 300), (3, 7), (512, 7), (2, 1)]


def _pair(n, d, dtype=torch.float64, seed=0, k=2):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    # correlated views with per-feature offsets and scales, as embeddings are
    views = [(base + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)) * (0.5 + torch.rand(d, generator=g))
             + 3 * torch.randn(d, generator=g) for _ in range(k)]
    return [v.to(dtype).requires_grad_() for v in views]


def _grads(loss, inputs, seed=1):
    upstream = torch.randn((), generator=torch.Generator().manual_seed(seed), dtype=loss.dtype) + 2.0
    return torch.autograd.grad(loss, inputs, upstream)


def _assert_close(got, want, rtol, atol_scale=1e-12):
    """Relative to the largest entry, so that near-zero entries do not dominate."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol_scale + rtol * float(want.detach().abs().max()))


# ------------------------------------------------------------------------------------------------
# The official code, written out as it is (facebookresearch/barlowtwins, facebookresearch/vicreg,
# wgcban/mix-bt main.py) for one process.
# ------------------------------------------------------------------------------------------------

def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_barlow_twins(z1, z2, lambd=0.0051):
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


def official_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    batch_size, num_features = x.shape
    repr_loss = torch.nn.functional.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(torch.relu(1 - std_x)) / 2 + torch.mean(torch.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(2).sum().div(
        num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def official_mixed_barlow_twins(out_1, out_2, out_m, index, alpha, lmbda=0.005, mixup_loss_scale=5.0, eps=0.0):
    """main.py's train() after the three forward passes; eps=0 is the official code."""
    batch_size = out_1.shape[0]
    std = lambda z: torch.sqrt(z.var(dim=0) + eps)  # noqa: E731  (z.std(dim=0) when eps == 0)
    out_1_norm = (out_1 - out_1.mean(dim=0)) / std(out_1)
    out_2_norm = (out_2 - out_2.mean(dim=0)) / std(out_2)
    c = torch.matmul(out_1_norm.T, out_2_norm) / batch_size
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    loss_bt = on_diag + lmbda * off_diag
    out_m_norm = (out_m - out_m.mean(dim=0)) / std(out_m)
    cc_m_1 = torch.matmul(out_m_norm.T, out_1_norm) / batch_size
    cc_m_1_gt = alpha * torch.matmul(out_1_norm.T, out_1_norm) / batch_size + \
        (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_1_norm) / batch_size
    cc_m_2 = torch.matmul(out_m_norm.T, out_2_norm) / batch_size
    cc_m_2_gt = alpha * torch.matmul(out_1_norm.T, out_2_norm) / batch_size + \
        (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_2_norm) / batch_size
    loss_mix = mixup_loss_scale * lmbda * ((cc_m_1 - cc_m_1_gt).pow_(2).sum() + (cc_m_2 - cc_m_2_gt).pow_(2).sum())
    return loss_bt, loss_mix


def _official_mix_eps(n):
    """The official code has no eps (eps=1e-300 is none in fp64). At N = 2 the unbiased
    standardisation without eps maps any batch to +-1/sqrt(2): the exact gradient is zero and
    both sides return rounding noise, so that case is compared with eps = 1e-5 on both sides."""
    return 1e-300 if n > 2 else 1e-5


# ------------------------------------------------------------------------------------------------
# Against lightly and the official code, fp64, values and gradients
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,d,mode", LIGHTLY_CASES)
def test_barlow_twins_matches_lightly(n, d, mode):
    z0, z1 = _pair(n, d, seed=n + d)
    got = BarlowTwinsLoss(mode=mode)(z0, z1)
    want = LightlyBarlowTwinsLoss()(z0, z1)
    _assert_close(got, want, 1e-9)
    for g, w in zip(_grads(got, (z0, z1)), _grads(want, (z0, z1))):
        _assert_close(g, w, 1e-8)


@pytest.mark.parametrize("n,d,mode", LIGHTLY_CASES)
def test_vicreg_matches_lightly(n, d, mode):
    z0, z1 = _pair(n, d, seed=2 * n + d)
    got = VICRegLoss(mode=mode)(z0, z1)
    want = LightlyVICRegLoss()(z0, z1)
    _assert_close(got, want, 1e-9)
    for g, w in zip(_grads(got, (z0, z1)), _grads(want, (z0, z1))):
        _assert_close(g, w, 1e-8)


@pytest.mark.parametrize("mode", ["gram", "cross"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_matches_the_official_code(n, d, mode):
    z0, z1, zm = _pair(n, d, seed=3 * n + d, k=3)
    got = SF.barlow_twins_loss(z0, z1, 0.0051, mode=mode)
    want = official_barlow_twins(z0, z1, 0.0051)
    _assert_close(got, want, 1e-9)
    for g, w in zip(_grads(got, (z0, z1)), _grads(want, (z0, z1))):
        _assert_close(g, w, 1e-8)

    got = SF.vicreg_loss(z0, z1, 25.0, 25.0, 1.0, mode=mode)
    want = official_vicreg(z0, z1)
    _assert_close(got, want, 1e-9)
    for g, w in zip(_grads(got, (z0, z1)), _grads(want, (z0, z1))):
        _assert_close(g, w, 1e-8)

    index = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    eps = _official_mix_eps(n)
    got = SF.mixed_barlow_twins_loss(z0, z1, zm, index, 0.37, 0.0078125, 4.0, eps=eps, mode=mode,
                                     return_terms=True)
    want = official_mixed_barlow_twins(z0, z1, zm, index, 0.37, 0.0078125, 4.0, eps=eps)
    for g, w in zip(got, want):
        _assert_close(g, w, 1e-9)
    for g, w in zip(_grads(sum(got), (z0, z1, zm)), _grads(sum(want), (z0, z1, zm))):
        _assert_close(g, w, 1e-8)


def test_official_defaults_differ_from_lightly_only_in_lambda():
    z0, z1 = _pair(32, 64)
    torch.testing.assert_close(BarlowTwinsLoss(lambda_param=0.0051)(z0, z1), official_barlow_twins(z0, z1))
    assert BarlowTwinsLoss().lambda_param == LightlyBarlowTwinsLoss().lambda_param == 5e-3


# ------------------------------------------------------------------------------------------------
# Gram form == cross form, gradcheck, hypothesis
# ------------------------------------------------------------------------------------------------

def _all_losses(z0, z1, zm, index, mode, **kw):
    return [
        SF.barlow_twins_loss(z0, z1, kw.get("lam", 5e-3), mode=mode),
        SF.vicreg_loss(z0, z1, kw.get("lam", 25.0), kw.get("mu", 25.0), kw.get("nu", 1.0), mode=mode),
        SF.mixed_barlow_twins_loss(z0, z1, zm, index, kw.get("alpha", 0.3), kw.get("lam", 5e-3), kw.get("scale", 5.0),
                                   mode=mode),
    ]


@pytest.mark.parametrize("n,d", GRAM_VS_CROSS_SHAPES)
def test_gram_equals_cross(n, d):
    z0, z1, zm = _pair(n, d, seed=n * d, k=3)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(d))
    for gram, cross in zip(_all_losses(z0, z1, zm, index, "gram"), _all_losses(z0, z1, zm, index, "cross")):
        torch.testing.assert_close(gram, cross, rtol=1e-5, atol=0)
        torch.testing.assert_close(gram, cross, rtol=1e-10, atol=1e-12)
        for g, c in zip(_grads(gram, (z0, z1, zm)[:2]), _grads(cross, (z0, z1, zm)[:2])):
            _assert_close(g, c, 1e-9)


@pytest.mark.parametrize("mode", ["gram", "cross"])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (4, 9)])
def test_gradcheck(n, d, mode):
    z0, z1, zm = _pair(n, d, seed=11, k=3)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda a, b: SF.barlow_twins_loss(a, b, 0.7, mode=mode), (z0, z1))
    assert torch.autograd.gradcheck(lambda a, b: SF.vicreg_loss(a, b, 1.5, 2.0, 3.0, mode=mode), (z0, z1))
    assert torch.autograd.gradcheck(
        lambda a, b, m: SF.mixed_barlow_twins_loss(a, b, m, index, 0.4, 0.8, 2.0, mode=mode), (z0, z1, zm))


@pytest.mark.parametrize("rows", [(0, 3), (2, 5), (5, 5), (0, 5)])
def test_primitives_gradcheck(rows):
    """The split primitives used when gathering: Gram rows and column blocks of the cross form."""
    x, y = _pair(5, 4, seed=5)
    assert torch.autograd.gradcheck(lambda a: ref.gram(a, *rows), (x,))
    cols = (rows[0] % 4, min(rows[1], 4))
    assert torch.autograd.gradcheck(lambda a, b: ref.cross_sq(a, b, *cols), (x, y))
    assert torch.autograd.gradcheck(lambda a: ref.cross_sq(a, None, *cols), (x,))
    assert torch.autograd.gradcheck(lambda a, b: ref.standardize(a, b, 1e-3, 1, True)[2], (x, y))


@given(
    n=st.integers(2, 24), d=st.integers(1, 40), mode=st.sampled_from(["auto", "gram", "cross"]),
    lam=st.floats(0, 10), mu=st.floats(0, 50), nu=st.floats(0, 5), alpha=st.floats(0, 1),
    scale=st.floats(0, 8), seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_against_official(n, d, mode, lam, mu, nu, alpha, scale, seed):
    z0, z1, zm = _pair(n, d, seed=seed, k=3)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    got = SF.barlow_twins_loss(z0, z1, lam, mode=mode)
    _assert_close(got, official_barlow_twins(z0, z1, lam), 1e-9)
    got = SF.vicreg_loss(z0, z1, lam, mu, nu, mode=mode)
    _assert_close(got, official_vicreg(z0, z1, lam, mu, nu), 1e-9)
    eps = _official_mix_eps(n)
    got = SF.mixed_barlow_twins_loss(z0, z1, zm, index, alpha, lam, scale, eps=eps, mode=mode)
    want = sum(official_mixed_barlow_twins(z0, z1, zm, index, alpha, lam, scale, eps=eps))
    _assert_close(got, want, 1e-9)
    for g, w in zip(_grads(got, (z0, z1, zm)), _grads(want, (z0, z1, zm))):
        _assert_close(g, w, 1e-8)


# ------------------------------------------------------------------------------------------------
# Edge cases and precision
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["gram", "cross"])
def test_zero_variance_feature_is_finite(mode):
    z0, z1, zm = _pair(16, 6, k=3)
    with torch.no_grad():
        for z in (z0, z1, zm):
            z[:, 2] = 1.5  # a dead feature in every view
    index = torch.randperm(16)
    for loss, want in zip(_all_losses(z0, z1, zm, index, mode), [
            LightlyBarlowTwinsLoss()(z0, z1), LightlyVICRegLoss()(z0, z1),
            sum(official_mixed_barlow_twins(z0, z1, zm, index, 0.3, eps=1e-5))]):
        _assert_close(loss, want, 1e-9)
        grads = _grads(loss, (z0, z1))
        assert all(torch.isfinite(g).all() for g in grads)


def test_batch_of_two_is_finite():
    z0, z1 = _pair(2, 5)
    for loss in (SF.barlow_twins_loss(z0, z1), SF.vicreg_loss(z0, z1)):
        assert torch.isfinite(loss)
        assert all(torch.isfinite(g).all() for g in _grads(loss, (z0, z1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["gram", "cross"])
def test_low_precision_against_fp64(dtype, mode, tol):
    """Float32 accumulation: the loss of half inputs is float32 and close to the fp64 truth of the
    rounded inputs (the standardised matrices themselves are rounded to the input dtype)."""
    z0, z1, zm = _pair(48, 96, k=3)
    index = torch.randperm(48)
    low = [z.detach().to(dtype).requires_grad_() for z in (z0, z1, zm)]
    exact = [z.detach().to(dtype).double().requires_grad_() for z in (z0, z1, zm)]
    rtol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for got, want in zip(_all_losses(*low, index, mode), _all_losses(*exact, index, mode)):
        assert got.dtype == torch.float32
        _assert_close(got.double(), want, rtol)
        for g, w in zip(_grads(got, low[:2]), _grads(want, exact[:2])):
            assert g.dtype == dtype
            _assert_close(g.double(), w, 20 * rtol)


def test_mixed_barlow_twins_terms_and_mix():
    x0, x1 = torch.randn(2, 12, 3, 4).unbind(0)
    mixed, index, alpha = MixedBarlowTwinsLoss.mix(x0, x1, generator=torch.Generator().manual_seed(0))
    assert 0 <= alpha <= 1 and sorted(index.tolist()) == list(range(12))
    torch.testing.assert_close(mixed, alpha * x0 + (1 - alpha) * x1[index])
    fixed, _, given_alpha = MixedBarlowTwinsLoss.mix(x0, x1, alpha=0.25)
    assert given_alpha == 0.25
    z0, z1, zm = _pair(12, 20, k=3)
    bt, mix = SF.mixed_barlow_twins_loss(z0, z1, zm, index, alpha, return_terms=True)
    torch.testing.assert_close(MixedBarlowTwinsLoss()(z0, z1, zm, index, alpha), bt + mix)
    # alpha = 1 and z_mixed = z0 standardised the same way: the regulariser vanishes
    _, mix = SF.mixed_barlow_twins_loss(z0, z1, z0, index, 1.0, return_terms=True)
    assert mix.item() < 1e-20


def test_module_equals_functional_and_repr():
    z0, z1, zm = _pair(10, 12, k=3)
    index = torch.randperm(10)
    torch.testing.assert_close(BarlowTwinsLoss(0.02, False, 1e-4, "cross")(z0, z1),
                               SF.barlow_twins_loss(z0, z1, 0.02, eps=1e-4, mode="cross"))
    torch.testing.assert_close(VICRegLoss(2.0, 3.0, 4.0, False, 1e-3, "gram")(z0, z1),
                               SF.vicreg_loss(z0, z1, 2.0, 3.0, 4.0, eps=1e-3, mode="gram"))
    torch.testing.assert_close(MixedBarlowTwinsLoss(0.01, 2.0)(z0, z1, zm, index, 0.5),
                               SF.mixed_barlow_twins_loss(z0, z1, zm, index, 0.5, 0.01, 2.0))
    assert "lambda_param=0.02" in repr(BarlowTwinsLoss(0.02)) and "mode='auto'" in repr(VICRegLoss())


# ------------------------------------------------------------------------------------------------
# Auto mode: the cost model and its visibility
# ------------------------------------------------------------------------------------------------

def test_auto_mode_follows_the_cost_model(caplog):
    assert ref.choose_mode("barlow_twins", 256, 8192) == "gram"
    assert ref.choose_mode("barlow_twins", 8192, 2048) == "cross"
    assert ref.choose_mode("vicreg", 2048, 8192) == "gram"
    assert ref.choose_mode("mixed_barlow_twins", 4096, 4096) == "gram"  # 12 N^2 D < 18 N D^2
    assert ref.choose_mode("barlow_twins", 4096, 4096) == "cross"  # 8 N^2 D > 6 N D^2
    assert ref.choose_mode("barlow_twins", 10, 20, "cross") == "cross"
    flops = ref.mode_costs("barlow_twins", 256, 8192)
    assert flops["cross"][0] / flops["gram"][0] == pytest.approx(6 / 8 * 8192 / 256)
    z0, z1 = _pair(8, 64)
    with caplog.at_level(logging.DEBUG, logger="sslfast.dispatch"):
        SF.barlow_twins_loss(z0, z1)
    assert "barlow_twins (reference): mode gram for N=8, D=64" in caplog.text
    assert any("auto ->" in line for line in ref.describe_modes())


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument
# ------------------------------------------------------------------------------------------------

GOOD = torch.randn(4, 3)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((torch.randn(1, 3), torch.randn(1, 3)), {}, ValueError, "z0 needs at least 2 samples"),
    ((torch.randn(4, 3), torch.randn(5, 3)), {}, ValueError, "z0 and z1 must have the same shape"),
    ((torch.randn(4, 3), torch.randn(4, 2)), {}, ValueError, "z0 and z1 must have the same shape"),
    ((torch.randn(4), torch.randn(4)), {}, ValueError, "z0 must be 2-D"),
    ((torch.randn(2, 3, 4), torch.randn(2, 3, 4)), {}, ValueError, "z0 must be 2-D"),
    ((torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64)), {}, TypeError, "floating"),
    ((torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2)), {}, ValueError, "z0 contains 1 NaN"),
    ((GOOD, GOOD.clone().fill_(float("inf"))), {}, ValueError, "z1 contains 12 NaN or Inf"),
    ((GOOD, GOOD.double()), {}, TypeError, "same dtype"),
    ((GOOD, torch.randn(4, 0)), {}, ValueError, "z1 must have a non-empty feature dimension"),
    ((torch.randn(4, 0), torch.randn(4, 0)), {}, ValueError, "non-empty feature dimension"),
    (([[1.0]], GOOD), {}, TypeError, "z0 must be a torch.Tensor"),
    ((GOOD, GOOD), {"lambda_param": -1.0}, ValueError, "lambda_param must be a finite number >= 0"),
    ((GOOD, GOOD), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
    ((GOOD, GOOD), {"mode": "dense"}, ValueError, "mode must be one of"),
    ((GOOD, GOOD), {"gather_distributed": 1}, TypeError, "gather_distributed must be a bool"),
    ((GOOD, GOOD), {"backend": "cudnn"}, ValueError, "backend must be one of"),
])
def test_barlow_twins_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        SF.barlow_twins_loss(*args, **kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"mu_param": -1.0}, ValueError, "mu_param must be a finite number >= 0"),
    ({"nu_param": float("nan")}, ValueError, "nu_param"),
    ({"lambda_param": "25"}, TypeError, "lambda_param must be a real number"),
    ({"eps": -1e-4}, ValueError, "eps must be a finite number > 0"),
])
def test_vicreg_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        SF.vicreg_loss(GOOD, GOOD, **kwargs)
    with pytest.raises(ValueError, match="z0 needs at least 2 samples"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.parametrize("args,error,match", [
    ((GOOD, GOOD, torch.randn(4, 2), torch.arange(4), 0.5), ValueError, "z0 and z_mixed must have the same shape"),
    ((GOOD, GOOD, GOOD, torch.arange(3), 0.5), ValueError, r"index must have shape \(4,\)"),
    ((GOOD, GOOD, GOOD, torch.arange(4.0), 0.5), TypeError, "index must be an integer tensor"),
    ((GOOD, GOOD, GOOD, torch.tensor([0, 1, 2, 4]), 0.5), ValueError, r"index must lie in \[0, 4\)"),
    ((GOOD, GOOD, GOOD, torch.arange(4), 1.5), ValueError, r"alpha must be in \[0, 1\]"),
    ((GOOD, GOOD, GOOD, torch.arange(4), -0.1), ValueError, "alpha must be a finite number >= 0"),
    ((GOOD, GOOD, GOOD, [0, 1, 2, 3], 0.5), TypeError, "index must be a torch.Tensor"),
])
def test_mixed_barlow_twins_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        SF.mixed_barlow_twins_loss(*args)


@pytest.mark.parametrize("make,error,match", [
    (lambda: BarlowTwinsLoss(lambda_param=-0.1), ValueError, "lambda_param must be a finite number >= 0"),
    (lambda: BarlowTwinsLoss(gather_distributed="yes"), TypeError, "gather_distributed must be a bool"),
    (lambda: BarlowTwinsLoss(mode="gram2"), ValueError, "mode must be one of"),
    (lambda: BarlowTwinsLoss(backend="xla"), ValueError, "backend must be one of"),
    (lambda: BarlowTwinsLoss(backend="cuda"), ValueError, "backend 'cuda' is not a backend of op 'barlow_twins'"),
    (lambda: VICRegLoss(backend="numba"), ValueError, "backend 'numba' is not a backend of op 'vicreg'"),
    (lambda: VICRegLoss(mu_param=-1), ValueError, "mu_param must be a finite number >= 0"),
    (lambda: VICRegLoss(eps=0), ValueError, "eps must be a finite number > 0"),
    (lambda: MixedBarlowTwinsLoss(mixup_loss_scale=-2.0), ValueError, "mixup_loss_scale must be a finite number"),
    (lambda: MixedBarlowTwinsLoss.mix(GOOD, GOOD, alpha=2.0), ValueError, r"alpha must be in \[0, 1\]"),
    (lambda: MixedBarlowTwinsLoss.mix(GOOD, torch.randn(3, 3)), ValueError, "x0 and x1 must be tensors of the same"),
])
def test_constructor_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_lightly_positional_constructors():
    assert BarlowTwinsLoss(0.01, False).lambda_param == 0.01
    v = VICRegLoss(1.0, 2.0, 3.0, False, 1e-3)
    assert (v.lambda_param, v.mu_param, v.nu_param, v.gather_distributed, v.eps) == (1.0, 2.0, 3.0, False, 1e-3)


@pytest.mark.parametrize("loss", ["barlow_twins", "vicreg"])
def test_compile_fullgraph(loss):
    """torch.compile(fullgraph=True) traces the loss (dispatch, mode choice, autograd Functions)
    without a graph break; aot_eager keeps the test fast (no C++ codegen)."""
    module = {"barlow_twins": BarlowTwinsLoss(), "vicreg": VICRegLoss()}[loss]
    z0, z1 = _pair(16, 40, dtype=torch.float32)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(z0, z1)
    want = module(z0, z1)
    torch.testing.assert_close(got, want)
    for g, w in zip(_grads(got, (z0, z1)), _grads(want, (z0, z1))):
        torch.testing.assert_close(g, w)


def test_compile_fullgraph_mixed():
    z0, z1, zm = _pair(16, 40, dtype=torch.float32, k=3)
    index = torch.randperm(16)
    module = MixedBarlowTwinsLoss()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z0, z1, zm, index, 0.3), module(z0, z1, zm, index, 0.3))
