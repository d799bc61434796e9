"""Epoch order, sharding and augmentation parameters: pure functions of (seed, epoch, index).

Randomness here comes from a counter-based hash, never from a stateful generator:
`uniforms(seed, epoch, index, view, n)` chains SplitMix64's finaliser over its arguments and
the draw's counter. Consequences (tested on DALI's CPU pipeline and the fallback):

- the order of an epoch and the augmentation of sample i in view v of epoch e do not depend on
  the number of shards, the batch size, prefetching, the backend (DALI CPU, DALI GPU or the
  torch fallback all receive the same parameters) or where a run was resumed;
- resuming mid-epoch needs only (epoch, batches done): the skipped batches are not recomputed.

Epoch order: samples sorted by a 64-bit hash of (seed, epoch, index), a uniformly random
permutation that every rank computes identically (so `seed` must agree across ranks).

Sharding (`ShardPlan`): the epoch order is cut into global steps of num_shards * batch_size
samples; in step j shard r takes the r-th block of batch_size. With drop_last the partial last
step is dropped (every shard: the same number of full batches). Without it the last step's R
samples are split as evenly as possible (floor(R/S) or ceil(R/S) per shard, possibly 0), so
every sample is seen exactly once per epoch and every shard yields the same number of batches:
no rank ever waits in a collective for one that has finished its epoch.

Random resized crop follows torchvision's RandomResizedCrop.get_params: up to 10 tries of
(area fraction ~ U(scale), log aspect ~ U(log ratio)), integer width/height by rounding, a
uniform integer position; a centred crop clamped to the ratio range if all tries fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .recipes import ViewSpec

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CROP_TRIES = 10
# Columns of the per-(sample, view) uniform draws.
_U_CROP = 0                      # 4 per try: area, log ratio, top, left
_U_FLIP = 4 * _CROP_TRIES
_U_JITTER = _U_FLIP + 1          # apply, brightness, contrast, saturation, hue
_U_GRAY = _U_JITTER + 5
_U_BLUR = _U_GRAY + 1            # apply, sigma
_U_SOLARIZE = _U_BLUR + 2
_U_COUNT = _U_SOLARIZE + 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 in which every input bit flips about half
    of the output bits (tests check the uniforms' moments and independence empirically)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _key(*parts) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for part in parts:
            h = _mix(h * _GOLDEN + np.asarray(part, dtype=np.uint64) + _GOLDEN)
    return h


def hash64(*parts) -> np.ndarray:
    """uint64 hash of integer arrays (broadcast together), e.g. (seed, epoch, indices)."""
    return _key(*parts)


def uniforms(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """(len(indices), count) float64 uniforms in [0, 1), a pure function of the arguments."""
    indices = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    counters = np.arange(count, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        bits = _key(seed, epoch, stream, indices, counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of the samples in an epoch (identical on every rank)."""
    indices = np.arange(num_samples, dtype=np.int64)
    if not shuffle:
        return indices
    return np.argsort(hash64(seed, epoch, 0xE90C, indices.astype(np.uint64)), kind="stable").astype(np.int64)


@dataclass(frozen=True)
class ShardPlan:
    """Which global sample indices one shard reads in each batch of an epoch.

    Example:
        >>> plans = [ShardPlan(10, batch_size=3, num_shards=2, shard_id=r) for r in range(2)]
        >>> [len(p) for p in plans], [[len(b) for b in p.batches(epoch=0)] for p in plans]
        ([2, 2], [[3, 2], [3, 2]])
        >>> sorted(np.concatenate([b for p in plans for b in p.batches(0)]).tolist()) == list(range(10))
        True
    """

    num_samples: int
    batch_size: int
    num_shards: int = 1
    shard_id: int = 0
    drop_last: bool = False
    shuffle: bool = True
    seed: int = 0

    @property
    def step(self) -> int:
        return self.num_shards * self.batch_size

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.step)
        return full + (1 if rest and not self.drop_last else 0)

    def samples_per_epoch(self) -> int:
        """Samples this shard yields in one epoch."""
        return sum(len(b) for b in self.batches(0))

    def batches(self, epoch: int) -> list:
        """This shard's batches of global indices, in order."""
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        full, rest = divmod(self.num_samples, self.step)
        start = self.shard_id * self.batch_size
        out = [order[j * self.step + start: j * self.step + start + self.batch_size] for j in range(full)]
        if rest and not self.drop_last:
            base, extra = divmod(rest, self.num_shards)
            lo = full * self.step + self.shard_id * base + min(self.shard_id, extra)
            out.append(order[lo: lo + base + (1 if self.shard_id < extra else 0)])
        return out


@dataclass(frozen=True)
class ViewParams:
    """Augmentation parameters of one view for n samples (struct of arrays).

    crop: (n, 4) int64 top, left, height, width in pixels of the (EXIF-oriented) image.
    colour: (n, 4) float32 brightness, contrast, saturation factors and hue in degrees, in
        DALI color_twist's convention (identity: 1, 1, 1, 0; grayscale folds in saturation 0).
    blur_sigma: (n,) float32, 0 where not blurred; blur_window: (n,) int32, 1 where not blurred.
    solarize, flip: (n,) bool.
    """

    crop: np.ndarray
    colour: np.ndarray
    blur_sigma: np.ndarray
    blur_window: np.ndarray
    solarize: np.ndarray
    flip: np.ndarray

    def __len__(self) -> int:
        return len(self.flip)

    @property
    def recolours(self) -> np.ndarray:
        """(n,) bool: whether the colour map differs from the identity."""
        return np.any(self.colour != np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32), axis=1)

    def packed(self) -> np.ndarray:
        """(n, 13) float32 rows for DALI: roi start (y, x), roi end (y, x), colour (4),
        blur window, blur sigma, solarize mask (0 or 255), flip (0 or 1), recolours (0 or 1)."""
        top, left, h, w = (self.crop[:, k].astype(np.float32) for k in range(4))
        return np.column_stack([
            top, left, top + h, left + w, self.colour,
            self.blur_window.astype(np.float32), self.blur_sigma,
            np.where(self.solarize, 255.0, 0.0), self.flip.astype(np.float32), self.recolours.astype(np.float32),
        ]).astype(np.float32)


def blur_window(sigma: np.ndarray) -> np.ndarray:
    """Odd kernel width 2*ceil(3 sigma)+1 (99.7% of the mass); 1 (identity) where sigma is 0."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.where(sigma > 0, 2 * np.ceil(3.0 * sigma) + 1, 1).astype(np.int32)


def random_resized_crop(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, scale, ratio) -> np.ndarray:
    """(n, 4) int64 top, left, height, width from (n, 4 * tries) uniforms (torchvision's rule)."""
    heights = np.asarray(heights, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    n = len(heights)
    area = heights * widths
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    crop = np.zeros((n, 4), dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for t in range(_CROP_TRIES):
        ua, ur, ut, ul = (u[:, _U_CROP + 4 * t + k] for k in range(4))
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = np.exp(log_lo + (log_hi - log_lo) * ur)
        w = np.round(np.sqrt(target * aspect))
        h = np.round(np.sqrt(target / aspect))
        ok = ~done & (w > 0) & (w <= widths) & (h > 0) & (h <= heights)
        top = np.floor(ut * (heights - h + 1))
        left = np.floor(ul * (widths - w + 1))
        crop[ok] = np.stack([top, left, h, w], axis=1)[ok].astype(np.int64)
        done |= ok
    if not done.all():
        rest = ~done
        hh, ww = heights[rest], widths[rest]
        in_ratio = ww / hh
        w = np.where(in_ratio < ratio[0], ww, np.where(in_ratio > ratio[1], np.round(hh * ratio[1]), ww))
        h = np.where(in_ratio < ratio[0], np.round(ww / ratio[0]), hh)
        w, h = np.clip(w, 1, ww), np.clip(h, 1, hh)
        crop[rest] = np.stack([(hh - h) // 2, (ww - w) // 2, h, w], axis=1).astype(np.int64)
    return crop


def view_params(spec: ViewSpec, sizes: np.ndarray, indices: np.ndarray, *, seed: int, epoch: int,
                view: int) -> ViewParams:
    """The parameters of view `view` for the samples `indices` with (height, width) `sizes`."""
    n = len(indices)
    u = uniforms(seed, epoch, indices, view, _U_COUNT)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(n, 2)
    crop = random_resized_crop(u, sizes[:, 0], sizes[:, 1], spec.scale, spec.ratio)

    colour = np.tile(np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32), (n, 1))
    jitter = u[:, _U_JITTER] < spec.jitter_p
    for k, strength in enumerate((spec.brightness, spec.contrast, spec.saturation)):
        lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
        colour[:, k] = np.where(jitter, lo + (hi - lo) * u[:, _U_JITTER + 1 + k], 1.0)
    colour[:, 3] = np.where(jitter, (2.0 * u[:, _U_JITTER + 4] - 1.0) * spec.hue * 360.0, 0.0)
    # Grayscale after the jitter equals saturation 0 in the same YIQ matrix: saturation scales
    # the I and Q axes that hue rotates, and contrast/brightness leave grey (I = Q = 0) grey.
    colour[:, 2] *= (u[:, _U_GRAY] >= spec.grayscale_p)

    blurred = u[:, _U_BLUR] < spec.blur_p
    sigma = np.where(blurred, spec.blur_sigma[0] + (spec.blur_sigma[1] - spec.blur_sigma[0]) * u[:, _U_BLUR + 1], 0.0)
    return ViewParams(
        crop=crop,
        colour=colour,
        blur_sigma=sigma.astype(np.float32),
        blur_window=blur_window(sigma),
        solarize=u[:, _U_SOLARIZE] < spec.solarize_p,
        flip=u[:, _U_FLIP] < spec.flip_p,
    )
