"""The per-view pixel operations in PyTorch: the CPU fallback's implementation and the
readable statement of what the DALI pipeline computes.

Every operation takes a batch of uint8 images (n, 3, H, W) and per-sample parameters from
sslfast.data.sampling.ViewParams, and rounds back to uint8 where DALI does, so that the fallback
and DALI produce the same pixels up to resampling details (tests compare them).

Colour (DALI `color_twist`): with T the RGB->YIQ matrix (DALI's constants), H(h) the rotation
by h degrees in the IQ plane and S(s) = diag(1, s, s),

    out = clamp(round(b * (c * T^-1 H(h) S(s) T x + (1 - c) * 128)))

so saturation 1 and hue 0 leave colours unchanged and saturation 0 gives grey
Y = 0.299 R + 0.587 G + 0.114 B in all three channels (times 1 +- 0.3%: T's rows are
3-digit roundings, so T^-1 maps (Y, 0, 0) to Y * (0.9997, 0.9996, 1.0028)). DALI 2.4 inverts T
exactly; older releases used a rounded inverse, off by up to 2 grey levels.

Blur (DALI `gaussian_blur`): separable, weights exp(-k^2 / (2 sigma^2)) for |k| <= window // 2,
normalised to sum 1; borders reflect without repeating the edge pixel (reflect-101), also for
windows wider than the image.

Solarize: x -> 255 - x where x >= 128. Normalise: (x / 255 - mean) / std.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.596, -0.274, -0.321],
                       [0.211, -0.523, 0.311]], dtype=np.float32)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ.astype(np.float64)).astype(np.float32)


def colour_matrices(colour: np.ndarray) -> tuple:
    """(n, 3, 3) matrices and (n,) offsets of the colour map for rows (b, c, s, hue_deg)."""
    colour = np.asarray(colour, dtype=np.float32).reshape(-1, 4)
    b, c, s, hue = (colour[:, k] for k in range(4))
    rad = np.deg2rad(hue.astype(np.float64)).astype(np.float32)
    n = len(colour)
    hs = np.zeros((n, 3, 3), dtype=np.float32)
    hs[:, 0, 0] = 1.0
    hs[:, 1, 1] = np.cos(rad) * s
    hs[:, 1, 2] = np.sin(rad) * s
    hs[:, 2, 1] = -np.sin(rad) * s
    hs[:, 2, 2] = np.cos(rad) * s
    matrices = (b * c)[:, None, None] * (YIQ_TO_RGB[None] @ hs @ RGB_TO_YIQ[None])
    offsets = (128.0 - 128.0 * c) * b
    return matrices.astype(np.float32), offsets.astype(np.float32)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def colour_twist(images: torch.Tensor, colour: np.ndarray) -> torch.Tensor:
    """Per-sample colour map of uint8 (n, 3, H, W) images; rows of `colour` are (b, c, s, hue)."""
    matrices, offsets = colour_matrices(colour)
    x = images.to(torch.float32)
    out = torch.einsum("nij,njhw->nihw", torch.from_numpy(matrices), x)
    out += torch.from_numpy(offsets).view(-1, 1, 1, 1)
    return to_uint8(out)


def _reflect101(n: int, radius: int) -> torch.Tensor:
    """Source positions of 0-radius .. n-1+radius under reflect-101, for any radius."""
    pos = np.arange(-radius, n + radius)
    if n == 1:
        return torch.zeros(len(pos), dtype=torch.long)
    period = 2 * (n - 1)
    pos = np.mod(pos, period)
    return torch.from_numpy(np.where(pos >= n, period - pos, pos))


def gaussian_kernel(sigma: float, window: int) -> torch.Tensor:
    k = torch.arange(window, dtype=torch.float64) - window // 2
    weights = torch.exp(-(k * k) / (2.0 * float(sigma) ** 2))
    return (weights / weights.sum()).to(torch.float32)


def gaussian_blur(image: torch.Tensor, sigma: float, window: int) -> torch.Tensor:
    """Separable Gaussian blur of one uint8 (3, H, W) image (identity for window 1)."""
    if window <= 1:
        return image
    radius = window // 2
    kernel = gaussian_kernel(sigma, window)
    x = image.to(torch.float32).unsqueeze(0)  # (1, 3, H, W)
    _, c, h, w = x.shape
    x = x.index_select(3, _reflect101(w, radius))
    x = F.conv2d(x, kernel.view(1, 1, 1, window).expand(c, 1, 1, window), groups=c)
    x = x.index_select(2, _reflect101(h, radius))
    x = F.conv2d(x, kernel.view(1, 1, window, 1).expand(c, 1, window, 1), groups=c)
    return to_uint8(x[0])


def solarize(images: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    flags = torch.from_numpy(np.asarray(mask, dtype=bool)).view(-1, 1, 1, 1)
    return torch.where(flags & (images >= 128), 255 - images, images)


def flip(images: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    flags = torch.from_numpy(np.asarray(mask, dtype=bool)).view(-1, 1, 1, 1)
    return torch.where(flags, images.flip(-1), images)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / std in float32, returned as `dtype` (uint8 images pass through)."""
    if dtype == torch.uint8:
        return images
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0)
    return ((images.to(torch.float32) - mean_t) * scale).to(dtype)


def augment_view(crops: torch.Tensor, params, spec, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Everything after the crop: colour, blur, solarize, flip, and normalise unless dtype is None
    (then the uint8 view is returned, for random fields to run next)."""
    x = crops
    if spec.jitters:
        x = colour_twist(x, params.colour)
    if spec.blur_p > 0:
        x = torch.stack([gaussian_blur(x[i], float(params.blur_sigma[i]), int(params.blur_window[i]))
                         for i in range(len(x))]) if len(x) else x
    if spec.solarize_p > 0:
        x = solarize(x, params.solarize)
    x = flip(x, params.flip)
    return x if dtype is None else normalize(x, spec.mean, spec.std, dtype)
