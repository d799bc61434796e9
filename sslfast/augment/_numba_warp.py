r"""CPU kernel of the random-field augmentation, compiled by numba (`@njit(parallel=True)`).

Computes what sslfast.reference.random_field computes (its docstring has the math) in one
fused pass: nothing of size B x H x W is allocated besides the output, where the reference
materialises a dozen full-size temporaries (the upsampled fields, the grid, the HSV planes).

Work split: the B * Ho output rows are cut into one chunk per numba thread (prange); a chunk
owns a few row buffers of Wo elements and runs each row through four stages:

  1. fields (scalar, float64): the parameter fields along the row. Inside a control cell
     (about ell / 4 pixels wide) bilinear interpolation is linear in x, so the fields are
     evaluated exactly at the cell's first pixel and then advanced by constant increments:
     values by addition, (cos, sin) of rotation and shear by a rotation through the per-pixel
     angle increment, exp(-scale) by a product. At the next cell the functions are turned
     through the small difference between the exact new value and the one they hold (Taylor
     series, |d| < 0.1), so libm runs only at a row's first pixel: six libm calls per pixel
     become a few multiply-adds, and the drift is a few ulp of float64 per pixel. Output:
     the sampling position (qx, qy) per pixel and the colour factors.
  2. gather (scalar): the four bilinear tap offsets and weights per pixel, computed once and
     reused for every channel, read through a flat view of the input with explicit element
     strides (any layout, a permuted channels-last batch included, costs the same).
  3. colour (float32 loops without branches, which LLVM vectorises): brightness, contrast,
     saturation, and the HSV hue shift, whose HSV -> RGB step uses the closed form
     c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for r, g, b,
     the same numbers as torchvision's six-way table (p = v (1 - s), q = v (1 - s f),
     t = v (1 - s (1 - f))) up to rounding.
  4. store (vectorised): normalise, or round to uint8, into the C-contiguous output.

Numerics: positions in float64, colour in float32 (the reference's precision); float input
with every strength zero is copied exactly. error_model="numpy" (no ZeroDivisionError branch on
every division). Compiled once per (input dtype, output dtype) with cache=True, so DataLoader
workers load the machine code from numba's cache instead of recompiling.
Threads: numba.set_num_threads(k) bounds them (e.g. 1 per DataLoader worker).
"""
import math
import os

import numba
import numpy as np
from numba import njit, prange


def _use_fork_safe_threads() -> None:
    """Pick a fork-safe numba threading layer unless the user chose one.

    numba's default order prefers GNU OpenMP when tbb is absent; once a process has run a
    parallel region on it, every fork() child is terminated ("fork() called from a process
    already using GNU OpenMP"), which kills DataLoader workers forked after one augmentation in
    the main process. "forksafe" resolves to tbb where installed, else the workqueue layer.
    Runs when this module is first imported; no effect once numba has started its threads."""
    if os.environ.get("NUMBA_THREADING_LAYER") is None and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "forksafe"


_use_fork_safe_threads()

# Flag bits: the values of sslfast.augment.params.F_*, repeated so that this module stands
# alone (a test checks that they agree).
F_TRANSLATE = 1 << 0
F_ROTATE = 1 << 1
F_SCALE = 1 << 2
F_SHEAR = 1 << 3
F_BRIGHTNESS = 1 << 4
F_CONTRAST = 1 << 5
F_SATURATION = 1 << 6
F_HUE = 1 << 7
F_REFLECT = 1 << 8
F_NO_RESAMPLE = 1 << 9
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@njit(cache=True, error_model="numpy", inline="always")
def _reflect_clip(q, size):
    """grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamp."""
    if -0.5 <= q <= size - 0.5:  # inside: nothing to reflect (the common case)
        return min(max(q, 0.0), size - 1.0)
    t = abs(q + 0.5)
    flips = math.floor(t / size)
    extra = t - flips * size
    if flips % 2 == 0:
        q = extra - 0.5
    else:
        q = size - extra - 0.5
    return min(max(q, 0.0), size - 1.0)


@njit(cache=True, inline="always")
def _sincos_small(d):
    """(cos d, sin d): Taylor series to d^9 for |d| < 0.1 (truncation < 1e-18), libm beyond."""
    if abs(d) >= 0.1:
        return math.cos(d), math.sin(d)
    d2 = d * d
    s = d * (1.0 - d2 * (1.0 / 6.0) * (1.0 - d2 * (1.0 / 20.0) * (1.0 - d2 * (1.0 / 42.0) * (1.0 - d2 * (1.0 / 72.0)))))
    c = 1.0 - d2 * 0.5 * (1.0 - d2 * (1.0 / 12.0) * (1.0 - d2 * (1.0 / 30.0) * (1.0 - d2 * (1.0 / 56.0))))
    return c, s


@njit(cache=True, inline="always")
def _exp_small(d):
    """exp(d): Taylor series to d^8 for |d| < 0.1 (truncation < 3e-15), libm beyond."""
    if abs(d) >= 0.1:
        return math.exp(d)
    return 1.0 + d * (1.0 + d * 0.5 * (1.0 + d * (1.0 / 3.0) * (1.0 + d * 0.25 * (1.0 + d * 0.2 * (
        1.0 + d * (1.0 / 6.0) * (1.0 + d * (1.0 / 7.0) * (1.0 + d * 0.125)))))))


@njit(cache=True, error_model="numpy", inline="always")
def _seed(fields, b, k, gy0, gy1, wy, gx0, gx1, wx, fx):
    """Field k's value at the start of a control cell's run of pixels and its change per output
    pixel along the row (value + n * slope is exact n pixels further on, up to rounding)."""
    f00 = fields[b, k, gy0, gx0]
    f01 = fields[b, k, gy0, gx1]
    f10 = fields[b, k, gy1, gx0]
    f11 = fields[b, k, gy1, gx1]
    top = (1.0 - wx) * f00 + wx * f01
    bottom = (1.0 - wx) * f10 + wx * f11
    return (1.0 - wy) * top + wy * bottom, fx * ((1.0 - wy) * (f01 - f00) + wy * (f11 - f10))


@njit(parallel=True, cache=True, error_model="numpy")
def random_field_warp(x, strides, height, width, in_div, fields, base, luma, norm_mean, norm_std, flags, normalize,
                      out, out_shape, out_u8, threads):
    """Fill out, the flat float32 or uint8 (out_u8) storage of a C-contiguous (B, C, Ho, Wo)
    batch of shape out_shape, from the image batch x.

    x: a flat uint8 or float32 view of the images' memory; strides: their (b, c, h, w) strides in
    elements; height, width: the input size. in_div: 255.0 for uint8 input, 1.0 for float (the
    kernel multiplies by its inverse). fields (B, 9, GH, GW), base (B, 6), luma (B,),
    norm_mean / norm_std (C,) float32 (ignored unless normalize). flags: F_* bits. threads:
    numba.get_num_threads() of the caller (read outside: inside, it would stop the caching).
    """
    # float32 constants (numba would promote Python floats, and so the colour loops, to float64)
    ZERO, ONE, TWO, FOUR, SIX = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(4.0), np.float32(6.0)
    SIXTH = np.float32(1.0 / 6.0)
    LUMA_R, LUMA_G, LUMA_B = np.float32(LUMA[0]), np.float32(LUMA[1]), np.float32(LUMA[2])
    batch, channels, out_h, out_w = out_shape
    plane = out_h * out_w
    sxb, sxc, sxh, sxw = strides
    grid_h, grid_w = fields.shape[2], fields.shape[3]
    fy = (grid_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    fx = (grid_w - 1) / (out_w - 1) if out_w > 1 else 0.0
    cx = (out_w - 1) * 0.5
    cy = (out_h - 1) * 0.5
    # float64 product rounded once to float32: x / 255 as the reference has it (a float32
    # reciprocal would be off by an ulp); exactly 1 for float input, so identities stay exact
    unit = 1.0 / in_div
    resample = (flags & F_NO_RESAMPLE) == 0
    reflect = (flags & F_REFLECT) != 0
    translate = (flags & F_TRANSLATE) != 0
    rotate = (flags & F_ROTATE) != 0
    shear = (flags & F_SHEAR) != 0
    scale = (flags & F_SCALE) != 0
    brightness = (flags & F_BRIGHTNESS) != 0
    contrast = (flags & F_CONTRAST) != 0
    saturation = (flags & F_SATURATION) != 0
    hue = (flags & F_HUE) != 0
    rows = batch * out_h
    chunks = max(1, min(rows, threads))
    per_chunk = (rows + chunks - 1) // chunks
    for chunk in prange(chunks):
        qx = np.empty(out_w)
        qy = np.empty(out_w)
        k_bright = np.empty(out_w, np.float32)
        k_contrast = np.empty(out_w, np.float32)
        k_sat = np.empty(out_w, np.float32)
        shift = np.empty(out_w, np.float32)
        v0 = np.empty(out_w, np.float32)
        v1 = np.zeros(out_w, np.float32)  # stay zero for one-channel images
        v2 = np.zeros(out_w, np.float32)
        for row in range(chunk * per_chunk, min(rows, (chunk + 1) * per_chunk)):
            b = row // out_h
            y = row - b * out_h

            # 1. fields along the row, cell by cell
            gy = y * fy
            gy0 = min(int(gy), grid_h - 1)  # gy >= 0: int() is floor
            gy1 = min(gy0 + 1, grid_h - 1)
            wy = gy - gy0
            a11, a12, b1 = base[b, 0], base[b, 1], base[b, 2]
            a21, a22, b2 = base[b, 3], base[b, 4], base[b, 5]
            cell = -1
            t_x = t_y = bright = contr = sat = hue_v = 0.0
            dt_x = dt_y = dbright = dcontr = dsat = dhue = 0.0
            # rotation / shear angle and log scale that (cos, sin) and the shrink factor hold now
            rot = cos_r = sin_r = cos_dr = sin_dr = drot = 0.0
            shr = cos_h = sin_h = cos_dh = sin_dh = dshr = 0.0
            log_s = dlog_s = 0.0
            shrink = shrink_step = 1.0
            for xo in range(out_w):
                gx0 = min(int(xo * fx), grid_w - 1)
                if gx0 != cell:
                    first = cell < 0
                    cell = gx0
                    gx1 = min(gx0 + 1, grid_w - 1)
                    wx = xo * fx - gx0
                    if translate:
                        t_x, dt_x = _seed(fields, b, 0, gy0, gy1, wy, gx0, gx1, wx, fx)
                        t_y, dt_y = _seed(fields, b, 1, gy0, gy1, wy, gx0, gx1, wx, fx)
                    if brightness:
                        bright, dbright = _seed(fields, b, 5, gy0, gy1, wy, gx0, gx1, wx, fx)
                    if contrast:
                        contr, dcontr = _seed(fields, b, 6, gy0, gy1, wy, gx0, gx1, wx, fx)
                    if saturation:
                        sat, dsat = _seed(fields, b, 7, gy0, gy1, wy, gx0, gx1, wx, fx)
                    if hue:
                        hue_v, dhue = _seed(fields, b, 8, gy0, gy1, wy, gx0, gx1, wx, fx)
                    # exact functions at the row's first pixel; at later cells, turn (cos, sin)
                    # through the small angle between the exact value and the one they hold
                    if rotate:
                        angle, drot = _seed(fields, b, 2, gy0, gy1, wy, gx0, gx1, wx, fx)
                        if first:
                            cos_r, sin_r = math.cos(angle), math.sin(angle)
                        else:
                            c, s_ = _sincos_small(angle - rot)
                            cos_r, sin_r = cos_r * c - sin_r * s_, sin_r * c + cos_r * s_
                        rot = angle
                        cos_dr, sin_dr = _sincos_small(drot)
                    if shear:
                        angle, dshr = _seed(fields, b, 4, gy0, gy1, wy, gx0, gx1, wx, fx)
                        if first:
                            cos_h, sin_h = math.cos(angle), math.sin(angle)
                        else:
                            c, s_ = _sincos_small(angle - shr)
                            cos_h, sin_h = cos_h * c - sin_h * s_, sin_h * c + cos_h * s_
                        shr = angle
                        cos_dh, sin_dh = _sincos_small(dshr)
                    if scale:
                        value, dlog_s = _seed(fields, b, 3, gy0, gy1, wy, gx0, gx1, wx, fx)
                        shrink = math.exp(-value) if first else shrink * _exp_small(log_s - value)
                        log_s = value
                        shrink_step = _exp_small(-dlog_s)
                else:
                    t_x += dt_x
                    t_y += dt_y
                    bright += dbright
                    contr += dcontr
                    sat += dsat
                    hue_v += dhue
                    if rotate:
                        rot += drot
                        cos_r, sin_r = cos_r * cos_dr - sin_r * sin_dr, sin_r * cos_dr + cos_r * sin_dr
                    if shear:
                        shr += dshr
                        cos_h, sin_h = cos_h * cos_dh - sin_h * sin_dh, sin_h * cos_dh + cos_h * sin_dh
                    if scale:
                        log_s += dlog_s
                        shrink *= shrink_step
                k_bright[xo] = max(0.0, 1.0 + bright)
                k_contrast[xo] = max(0.0, 1.0 + contr)
                k_sat[xo] = max(0.0, 1.0 + sat)
                shift[xo] = hue_v
                if resample:
                    dx = xo - cx
                    dy = y - cy
                    if translate:
                        dx -= t_x
                        dy -= t_y
                    if rotate:
                        dx, dy = cos_r * dx - sin_r * dy, sin_r * dx + cos_r * dy
                    if shear:
                        dx -= sin_h / cos_h * dy
                    if scale:
                        dx *= shrink
                        dy *= shrink
                    qx0 = dx + cx
                    qy0 = dy + cy
                    qx[xo] = a11 * qx0 + a12 * qy0 + b1
                    qy[xo] = a21 * qx0 + a22 * qy0 + b2

            # 2. gather the channels (bilinear taps, zero or reflect padding), or copy the row
            p = b * sxb
            if resample:
                for xo in range(out_w):
                    sx, sy = qx[xo], qy[xo]
                    if reflect:
                        # inside [0, size - 1] after the reflection: the right / lower tap is
                        # outside only when its weight is 0, so clamp its index, no masks
                        sx = _reflect_clip(sx, width)
                        sy = _reflect_clip(sy, height)
                        fx0 = math.floor(sx)
                        fy0 = math.floor(sy)
                        wx1 = sx - fx0
                        wy1 = sy - fy0
                        ix0 = int(fx0)
                        iy0 = int(fy0)
                        r0 = iy0 * sxh
                        r1 = min(iy0 + 1, height - 1) * sxh
                        c0 = ix0 * sxw
                        c1 = min(ix0 + 1, width - 1) * sxw
                        w00 = (1.0 - wy1) * (1.0 - wx1)
                        w01 = (1.0 - wy1) * wx1
                        w10 = wy1 * (1.0 - wx1)
                        w11 = wy1 * wx1
                        o00 = p + r0 + c0
                        o01 = p + r0 + c1
                        o10 = p + r1 + c0
                        o11 = p + r1 + c1
                    else:
                        # far outside reads zeros anyway; keep int conversions in range
                        sx = min(max(sx, -2.0), width + 1.0)
                        sy = min(max(sy, -2.0), height + 1.0)
                        fx0 = math.floor(sx)
                        fy0 = math.floor(sy)
                        wx1 = sx - fx0
                        wy1 = sy - fy0
                        ix0 = int(fx0)
                        iy0 = int(fy0)
                        in_x0 = 0 <= ix0 < width
                        in_x1 = 0 <= ix0 + 1 < width
                        in_y0 = 0 <= iy0 < height
                        in_y1 = 0 <= iy0 + 1 < height
                        # a tap outside the image: weight 0 at a valid address (zero padding)
                        w00 = (1.0 - wy1) * (1.0 - wx1) if in_y0 and in_x0 else 0.0
                        w01 = (1.0 - wy1) * wx1 if in_y0 and in_x1 else 0.0
                        w10 = wy1 * (1.0 - wx1) if in_y1 and in_x0 else 0.0
                        w11 = wy1 * wx1 if in_y1 and in_x1 else 0.0
                        r0 = iy0 * sxh
                        c0 = ix0 * sxw
                        o00 = p + (r0 + c0 if w00 != 0.0 else 0)
                        o01 = p + (r0 + c0 + sxw if w01 != 0.0 else 0)
                        o10 = p + (r0 + sxh + c0 if w10 != 0.0 else 0)
                        o11 = p + (r0 + sxh + c0 + sxw if w11 != 0.0 else 0)
                    v0[xo] = (w00 * x[o00] + w01 * x[o01] + w10 * x[o10] + w11 * x[o11]) * unit
                    if channels == 3:
                        v1[xo] = (w00 * x[o00 + sxc] + w01 * x[o01 + sxc]
                                  + w10 * x[o10 + sxc] + w11 * x[o11 + sxc]) * unit
                        o00 += 2 * sxc
                        o01 += 2 * sxc
                        o10 += 2 * sxc
                        o11 += 2 * sxc
                        v2[xo] = (w00 * x[o00] + w01 * x[o01] + w10 * x[o10] + w11 * x[o11]) * unit
            else:
                q = p + y * sxh
                for xo in range(out_w):
                    v0[xo] = x[q + xo * sxw] * unit
                if channels == 3:
                    for xo in range(out_w):
                        v1[xo] = x[q + sxc + xo * sxw] * unit
                    for xo in range(out_w):
                        v2[xo] = x[q + 2 * sxc + xo * sxw] * unit

            # 3. colour, element-wise over the row (branch-free: vectorised)
            if brightness:
                for i in range(out_w):
                    k = k_bright[i]
                    v0[i] = min(max(k * v0[i], ZERO), ONE)
                    v1[i] = min(max(k * v1[i], ZERO), ONE)
                    v2[i] = min(max(k * v2[i], ZERO), ONE)
            if contrast:
                pivot = np.float32(luma[b])
                for i in range(out_w):
                    k = k_contrast[i]
                    m = (ONE - k) * pivot
                    v0[i] = min(max(k * v0[i] + m, ZERO), ONE)
                    v1[i] = min(max(k * v1[i] + m, ZERO), ONE)
                    v2[i] = min(max(k * v2[i] + m, ZERO), ONE)
            if saturation:
                for i in range(out_w):
                    k = k_sat[i]
                    grey = (ONE - k) * (LUMA_R * v0[i] + LUMA_G * v1[i] + LUMA_B * v2[i])
                    v0[i] = min(max(k * v0[i] + grey, ZERO), ONE)
                    v1[i] = min(max(k * v1[i] + grey, ZERO), ONE)
                    v2[i] = min(max(k * v2[i] + grey, ZERO), ONE)
            if hue:
                for i in range(out_w):
                    r, g, bl = v0[i], v1[i], v2[i]
                    maxc = max(r, max(g, bl))
                    cr = maxc - min(r, min(g, bl))
                    flat = cr == ZERO
                    s = cr / (ONE if flat else maxc)
                    inv_cr = ONE / (ONE if flat else cr)
                    rc = (maxc - r) * inv_cr
                    gc = (maxc - g) * inv_cr
                    bc = (maxc - bl) * inv_cr
                    h = FOUR + gc - rc
                    h = TWO + rc - bc if maxc == g else h
                    h = bc - gc if maxc == r else h
                    h = h * SIXTH + ONE
                    h = h - math.floor(h)  # fmod(h, 1) of a positive number
                    h = h + shift[i]
                    h = h - math.floor(h)
                    vs = maxc * s
                    h6 = h * SIX
                    k = np.float32(5.0) + h6
                    k = k - SIX if k >= SIX else k
                    v0[i] = maxc - vs * min(max(min(k, FOUR - k), ZERO), ONE)
                    k = np.float32(3.0) + h6
                    k = k - SIX if k >= SIX else k
                    v1[i] = maxc - vs * min(max(min(k, FOUR - k), ZERO), ONE)
                    k = ONE + h6
                    k = k - SIX if k >= SIX else k
                    v2[i] = maxc - vs * min(max(min(k, FOUR - k), ZERO), ONE)

            # 4. store
            o = (b * channels * out_h + y) * out_w
            for c in range(channels):
                v = v0 if c == 0 else (v1 if c == 1 else v2)
                if out_u8:
                    for i in range(out_w):
                        # v >= 0 after the clamp: truncation is floor
                        out[o + i] = np.uint8(np.int32(min(max(v[i], ZERO), ONE) * np.float32(255.0) + np.float32(0.5)))
                elif normalize:
                    mean, std = norm_mean[c], norm_std[c]
                    for i in range(out_w):
                        out[o + i] = (v[i] - mean) / std
                else:
                    for i in range(out_w):
                        out[o + i] = v[i]
                o += plane
