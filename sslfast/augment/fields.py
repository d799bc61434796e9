r"""Gaussian random fields with a squared-exponential covariance: two samplers, one API.

A field f over pixel positions p = (x, y) is zero-mean Gaussian with covariance

    Cov(f(p), f(p')) = sigma^2 * exp(-|p - p'|^2 / (2 * ell^2)),

`ell` the length scale in pixels (`inf`: a constant field, one N(0, sigma^2) value per image;
so is any ell beyond 1000 image diagonals, where the field is constant to 5e-7 in correlation).
Every sampler here returns unit-variance fields (sigma = 1); callers multiply by sigma.

Samplers
--------
"spectral" (exact; the reference). Circulant embedding: the image is embedded in a torus of
    L = size + ceil(5 * ell) pixels per axis, where the covariance between pixels d apart is
    c(d) = exp(-min(d, L - d)^2 / (2 ell^2)). Its eigenvalues are the DFT of c, and since c is
    separable they are the outer product of two 1-D DFTs, lambda = lambda_y lambda_x^T.
    f = irfft2(sqrt(lambda) * rfft2(w)) for white noise w has covariance exactly c on the torus;
    the crop to (H, W) sees c(d) + c(L - d) with L - d >= 5 ell, i.e. SE plus at most
    exp(-12.5) ~ 4e-6. Cost: two FFTs of (H + 5 ell) x (W + 5 ell) per field. The torus is
    capped at 16 * max(H, W) per axis, so above ell ~ 3 * max(H, W) the wrap-around term grows
    (such a field is all but constant anyway).

"fast" (for the kernels). Low-resolution white noise, separable Gaussian smoothing, bilinear
    upsampling. Smoothing white noise with a Gaussian of standard deviation s gives covariance
    exp(-d^2 / (4 s^2)), so s = ell / sqrt(2). The noise lives on a control grid of nodes
    `spacing` = ell / 4 pixels apart (at least 1 pixel, at most the full resolution), padded by
    3 s on every side so that every node sees a complete kernel: the field is stationary up to
    the image border. Smoothing is two small dense matmuls, f = G_y N G_x^T, with the 1-D
    kernels normalised to unit sum of squares, which makes every node's variance exactly 1.
    The control grid, about (H / spacing + 1) x (W / spacing + 1) nodes (17 x 17 for ell = 56 px
    at 224 x 224), is what the fused kernels read: each output pixel interpolates it bilinearly
    (align_corners=True: node 0 on pixel 0, the last node on the last pixel). Bilinear
    interpolation of a field this smooth loses at most ~3% of the variance midway between nodes
    (exactly 1 - (1 + 2 rho_1 + rho_2) / 4 with rho_k = exp(-k / 32)) and leaves the
    correlation at ell / 2, ell and 2 ell within ~0.02 of the SE values (tests check both
    against the spectral sampler).

Both samplers draw from `generator` on `device` (the images' device), so a seed reproduces the
same fields on every backend that applies them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

SAMPLERS = ("fast", "spectral")
NODES_PER_LENGTH_SCALE = 4  # control-grid nodes per ell of the fast sampler
# Kernel support in standard deviations s. The variance of the smoothed noise sums w(d)^2, a
# Gaussian of std s / sqrt(2): beyond 3 s lies 2e-5 of it per axis (and the truncated kernel is
# renormalised, so the variance stays exactly 1).
_SMOOTHING_RADIUS = 3.0
_TORUS_MARGIN = 5.0  # spectral sampler: torus margin in length scales
_TORUS_CAP = 16  # ... at most this many times the image's larger side
# Beyond this many image diagonals, the SE correlation between any two pixels exceeds 1 - 5e-7
# (the field varies by < 1e-3 of its std across the image), while the fast sampler's smoothing
# padding grows as ell / spacing: such length scales draw the constant field, as ell = inf.
_CONSTANT_BEYOND_DIAGONALS = 1000.0


def _check_length_scale(length_scale) -> float:
    from .._validation import check_positive

    value = float(length_scale) if isinstance(length_scale, (int, float)) else length_scale
    if isinstance(value, float) and value == math.inf:
        return value
    return check_positive("length_scale", value)


def _effective_length_scale(length_scale, height: int, width: int) -> float:
    """The checked length scale, or inf where the field is constant over the image to 5e-7."""
    ell = _check_length_scale(length_scale)
    return math.inf if ell > _CONSTANT_BEYOND_DIAGONALS * math.hypot(height, width) else ell


def _check_sampler(sampler: str) -> str:
    from .._validation import check_choice

    return check_choice("sampler", sampler, SAMPLERS)


def control_grid_shape(height: int, width: int, length_scale: float, sampler: str = "fast") -> tuple:
    """(rows, cols) of the control grid that `sample_field_grid` returns for an image of
    (height, width) pixels and a length scale in pixels."""
    ell = _effective_length_scale(length_scale, height, width)
    if _check_sampler(sampler) == "spectral":
        return (height, width) if ell != math.inf else (1, 1)
    if ell == math.inf:
        return (1, 1)
    spacing = max(1.0, ell / NODES_PER_LENGTH_SCALE)

    def nodes(size: int) -> int:
        return 1 if size <= 1 else min(size, math.ceil((size - 1) / spacing) + 1)

    return nodes(height), nodes(width)


def _smoothing_matrix(nodes: int, size: int, std_px: float) -> torch.Tensor:
    """(nodes, nodes + 2 pad) float64 Gaussian smoothing matrix, rows of unit sum of squares,
    for a grid of `nodes` nodes spread over `size` pixels (align_corners=True spacing)."""
    spacing = (size - 1) / (nodes - 1) if nodes > 1 else 1.0
    std = std_px / spacing  # in nodes
    pad = math.ceil(_SMOOTHING_RADIUS * std)
    lags = torch.arange(nodes, dtype=torch.float64)[:, None] + pad - torch.arange(nodes + 2 * pad, dtype=torch.float64)
    weights = torch.exp(-0.5 * (lags / std) ** 2)
    return weights / weights.pow(2).sum(dim=1, keepdim=True).sqrt()


def _torus_eigen_sqrt(size: int, ell: float, cap: int, half: bool) -> torch.Tensor:
    """sqrt of the eigenvalues of the 1-D circulant SE covariance on a torus around `size`."""
    length = min(size + math.ceil(_TORUS_MARGIN * ell), cap)
    d = torch.arange(length, dtype=torch.float64)
    d = torch.minimum(d, length - d)
    cov = torch.exp(-0.5 * (d / ell) ** 2)
    eig = torch.fft.rfft(cov).real if half else torch.fft.fft(cov).real
    return eig.clamp_min(0.0).sqrt(), length


def sample_field_grid(
    n: int,
    height: int,
    width: int,
    length_scale: float,
    *,
    sampler: str = "fast",
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """n independent unit-variance SE random fields on their control grid.

    Args:
        n: number of fields.
        height, width: image size in pixels the fields cover.
        length_scale: ell in pixels (> 0, or math.inf for constant fields).
        sampler: "fast" (coarse grid, for the kernels) or "spectral" (exact, full resolution).
        generator: torch.Generator on `device` (None: torch's default generator).
        device: where to sample (default: the generator's device, else cpu).

    Returns:
        (n, rows, cols) float32 with (rows, cols) = control_grid_shape(...); full-resolution
        fields come from `upsample_field_grid`.
    """
    from .._validation import check_int

    check_int("n", n, minimum=0)
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    ell = _effective_length_scale(length_scale, height, width)
    sampler = _check_sampler(sampler)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if ell == math.inf:
        return torch.randn(n, 1, 1, generator=generator, device=device)
    if sampler == "spectral":
        cap = _TORUS_CAP * max(height, width)
        sqrt_y, len_y = _torus_eigen_sqrt(height, ell, cap, half=False)
        sqrt_x, len_x = _torus_eigen_sqrt(width, ell, cap, half=True)
        noise = torch.randn(n, len_y, len_x, generator=generator, device=device)
        spectrum = (sqrt_y[:, None] * sqrt_x[None, :]).to(device=device, dtype=torch.float32)
        field = torch.fft.irfft2(torch.fft.rfft2(noise) * spectrum, s=(len_y, len_x))
        return field[:, :height, :width].contiguous()
    rows, cols = control_grid_shape(height, width, ell, "fast")
    std_px = ell / math.sqrt(2.0)
    smooth_y = _smoothing_matrix(rows, height, std_px).to(device=device, dtype=torch.float32)
    smooth_x = _smoothing_matrix(cols, width, std_px).to(device=device, dtype=torch.float32)
    noise = torch.randn(n, smooth_y.shape[1], smooth_x.shape[1], generator=generator, device=device)
    return smooth_y @ noise @ smooth_x.T


def upsample_field_grid(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (align_corners=True) interpolation of (..., rows, cols) control grids to
    (..., height, width): exactly what the fused kernels compute per output pixel."""
    if tuple(grid.shape[-2:]) == (height, width):
        return grid
    lead = grid.shape[:-2]
    flat = grid.reshape(-1, 1, *grid.shape[-2:])
    up = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=True)
    return up.reshape(*lead, height, width)


def gaussian_random_field(
    n: int,
    height: int,
    width: int,
    length_scale: float,
    sigma: float = 1.0,
    *,
    sampler: str = "fast",
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """n full-resolution SE random fields of standard deviation `sigma`, shape (n, H, W).

    Example:
        >>> import torch
        >>> from sslfast.augment.fields import gaussian_random_field
        >>> g = torch.Generator().manual_seed(0)
        >>> f = gaussian_random_field(2, 32, 48, length_scale=8.0, sigma=0.5, generator=g)
        >>> f.shape, f.dtype
        (torch.Size([2, 32, 48]), torch.float32)
    """
    from .._validation import check_nonnegative

    sigma = check_nonnegative("sigma", sigma)
    grid = sample_field_grid(n, height, width, length_scale, sampler=sampler, generator=generator, device=device)
    return upsample_field_grid(grid, height, width) * sigma
