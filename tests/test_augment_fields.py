"""Gaussian random fields: the spectral sampler has the SE covariance, the fast sampler matches
it (exactly through its linear map, statistically against spectral draws), seeds reproduce."""
import math

import pytest
import torch
import torch.nn.functional as F

from sslfast.augment import fields as RF

SE = lambda d, ell: math.exp(-d * d / (2 * ell * ell))  # noqa: E731


def _stats(f: torch.Tensor, ell: float) -> tuple:
    """Marginal variance and correlations at ell/2, ell, 2 ell (along x and y, all positions)."""
    f = f.double()
    var = f.pow(2).mean().item()
    corr = []
    for d in (round(ell / 2), round(ell), round(2 * ell)):
        cx = (f[:, :, :-d] * f[:, :, d:]).mean()
        cy = (f[:, :-d, :] * f[:, d:, :]).mean()
        corr.append(((cx + cy) / 2).item() / var)
    return var, corr


@pytest.fixture(scope="module")
def draws():
    """600 fields of 48 x 48 from each sampler (ell = 6 px)."""
    gen = torch.Generator().manual_seed(1234)
    ell = 6.0
    out = {s: RF.gaussian_random_field(600, 48, 48, ell, sampler=s, generator=gen) for s in RF.SAMPLERS}
    return ell, out


def test_spectral_sampler_has_the_se_covariance(draws):
    ell, fields = draws
    var, corr = _stats(fields["spectral"], ell)
    assert var == pytest.approx(1.0, abs=0.06)
    for c, d in zip(corr, (round(ell / 2), round(ell), round(2 * ell))):
        assert c == pytest.approx(SE(d, ell), abs=0.03)


def test_fast_sampler_matches_the_spectral_one(draws):
    ell, fields = draws
    var_fast, corr_fast = _stats(fields["fast"], ell)
    var_spec, corr_spec = _stats(fields["spectral"], ell)
    assert var_fast / var_spec == pytest.approx(1.0, abs=0.08)
    for cf, cs in zip(corr_fast, corr_spec):
        assert cf == pytest.approx(cs, abs=0.04)


@pytest.mark.parametrize("size,ell", [(64, 8.0), (224, 22.4), (224, 56.0), (31, 3.0), (50, 200.0)])
def test_fast_sampler_covariance_exactly(size, ell):
    """The fast field is U G w (w white): its covariance U G G^T U^T, computed exactly, is SE
    up to the bilinear interpolation between nodes (variance >= 0.96, correlation +-0.01)."""
    nodes, _ = RF.control_grid_shape(size, size, ell, "fast")
    smooth = RF._smoothing_matrix(nodes, size, ell / math.sqrt(2.0))
    up = F.interpolate(torch.eye(nodes, dtype=torch.float64)[None], size=size, mode="linear", align_corners=True)[0].T
    m = up @ smooth
    cov = m @ m.T  # 1-D factor; the 2-D covariance is its Kronecker square
    var = cov.diagonal()
    assert var.max().item() <= 1.0 + 1e-9
    assert var.min().item() ** 2 >= 0.96  # 2-D variance is the product of the 1-D ones
    for d in {max(1, round(ell / 2)), round(ell), round(2 * ell)}:
        if d >= size:
            continue
        i = torch.arange(size - d)
        corr = cov[i, i + d] / (var[i] * var[i + d]).sqrt()
        assert (corr - SE(d, ell)).abs().max().item() < 0.01


def test_spectral_sampler_small_length_scale_is_exact():
    """At full resolution and ell = 1 px the spectral covariance is checked entry by entry."""
    gen = torch.Generator().manual_seed(7)
    f = RF.gaussian_random_field(4000, 6, 6, 1.0, sampler="spectral", generator=gen).double().reshape(4000, -1)
    cov = f.T @ f / f.shape[0]
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    pos = torch.stack((yy.flatten(), xx.flatten()), 1).double()
    expected = torch.exp(-torch.cdist(pos, pos).pow(2) / 2)
    assert (cov - expected).abs().max().item() < 0.08  # 4000 draws: std of an entry ~ 0.022


def test_infinite_length_scale_gives_constant_fields():
    gen = torch.Generator().manual_seed(0)
    for sampler in RF.SAMPLERS:
        f = RF.gaussian_random_field(5, 9, 13, math.inf, sigma=2.0, sampler=sampler, generator=gen)
        assert f.shape == (5, 9, 13)
        assert torch.equal(f, f[:, :1, :1].expand_as(f))
        assert f[:, 0, 0].abs().max() > 0


def test_a_length_scale_far_beyond_the_image_is_the_constant_field():
    """ell = 1e9 px must not build a smoothing matrix with O(ell) padding (it asked for ~36 GB):
    beyond 1000 image diagonals the SE correlation across the image exceeds 1 - 5e-7, and the
    samplers draw the constant field, exactly as for ell = inf."""
    for sampler in RF.SAMPLERS:
        assert RF.control_grid_shape(16, 16, 1e9, sampler) == RF.control_grid_shape(16, 16, math.inf, sampler)
        huge = RF.gaussian_random_field(3, 16, 16, 1e9, sampler=sampler, generator=torch.Generator().manual_seed(4))
        const = RF.gaussian_random_field(3, 16, 16, math.inf, sampler=sampler,
                                         generator=torch.Generator().manual_seed(4))
        assert torch.equal(huge, const)
    # just inside the bound, the fast sampler still smooths (and stays small)
    ell = 900 * math.hypot(16, 16)
    f = RF.gaussian_random_field(2, 16, 16, ell, generator=torch.Generator().manual_seed(5))
    assert (f - f[:, :1, :1]).abs().max() < 1e-2 * f[:, 0, 0].abs().max() + 1e-6


def test_control_grid_shapes():
    assert RF.control_grid_shape(1, 1, 5.0) == (1, 1)
    assert RF.control_grid_shape(224, 224, 56.0) == (17, 17)
    assert RF.control_grid_shape(17, 31, 2.0) == (17, 31)  # spacing clamps to 1 px: full resolution
    assert RF.control_grid_shape(17, 31, 2.0, "spectral") == (17, 31)
    rows, cols = RF.control_grid_shape(100, 300, 20.0)
    assert (100 - 1) / (rows - 1) <= 5.0 and (300 - 1) / (cols - 1) <= 5.0


def test_sigma_scales_and_seed_reproduces():
    a = RF.gaussian_random_field(3, 20, 20, 5.0, sigma=0.5, generator=torch.Generator().manual_seed(3))
    b = RF.gaussian_random_field(3, 20, 20, 5.0, sigma=1.0, generator=torch.Generator().manual_seed(3))
    c = RF.gaussian_random_field(3, 20, 20, 5.0, sigma=1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a * 2, b, rtol=0, atol=1e-6)
    assert not torch.allclose(b, c)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), -math.inf, "wide"])
def test_bad_length_scale(bad):
    with pytest.raises((ValueError, TypeError), match="length_scale"):
        RF.gaussian_random_field(1, 8, 8, bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampler"):
        RF.gaussian_random_field(1, 8, 8, 2.0, sampler="perlin")
    with pytest.raises(ValueError, match="sigma"):
        RF.gaussian_random_field(1, 8, 8, 2.0, sigma=-1.0)
    with pytest.raises(ValueError, match="height"):
        RF.gaussian_random_field(1, 0, 8, 2.0)
