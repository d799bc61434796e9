r"""CPU kernel of the random-field augmentation, compiled by numba (`@njit(parallel=True)`).

Computes exactly what sslfast.reference.random_field computes (see its docstring for the math),
fused in one pass over the output: rows of the output (B * Ho of them) are spread over numba's
threads; for each output pixel the kernel evaluates the parameter fields (incrementally along
the row, see random_field_warp), builds the sampling position, gathers the 4 bilinear taps per
channel, applies the colour transform and writes the normalised (or uint8) value. Nothing of
size B x H x W is allocated besides the output (the reference materialises a dozen full-size
temporaries: the upsampled fields, the grid, the HSV planes). The input is read through a flat
1-D view with explicit element strides, so any layout (a permuted channels-last batch
included) costs the same, and the four bilinear tap offsets are computed once per pixel and
reused for every channel.

Numerics: float64 scalars (numba's default for Python floats; free for scalar code), stored as
float32 / uint8. The uniform `flags` branches are hoisted out of the inner loop by LLVM.
Compiled once per (input dtype, output dtype, layout) with cache=True, so later processes
(DataLoader workers) load the machine code from numba's cache instead of recompiling.
Threads: numba.set_num_threads(k) bounds them (e.g. 1 per DataLoader worker).
"""
import math

import numpy as np
from numba import njit, prange

# Flag bits: the values of sslfast.augment.params.F_* (numba cannot read that module's globals
# from a cached function reliably across processes, so they are repeated here and a test checks
# they agree).
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
LUMA_R, LUMA_G, LUMA_B = 0.2989, 0.587, 0.114


@njit(cache=True, error_model="numpy", inline="always")
def _reflect_clip(q, size):
    """grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamp."""
    if -0.5 <= q <= size - 0.5:  # inside: nothing to reflect (the common case)
        return min(max(q, 0.0), size - 1.0)
    t = abs(q + 0.5)
    flips = math.floor(t / size)
    extra = t - flips * size
    if int(flips) % 2 == 0:
        q = extra - 0.5
    else:
        q = size - extra - 0.5
    return min(max(q, 0.0), size - 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _taps(qx, qy, height, width, sxh, sxw):
    """Offsets and weights of the 4 bilinear taps at (qx, qy); a tap outside the image gets
    weight 0 and offset 0 (a valid address), i.e. zero padding."""
    x0 = math.floor(qx)
    y0 = math.floor(qy)
    wx1 = qx - x0
    wy1 = qy - y0
    ix0 = int(x0)
    iy0 = int(y0)
    in_x0 = 0 <= ix0 < width
    in_x1 = 0 <= ix0 + 1 < width
    in_y0 = 0 <= iy0 < height
    in_y1 = 0 <= iy0 + 1 < height
    row0 = iy0 * sxh
    row1 = row0 + sxh
    col0 = ix0 * sxw
    col1 = col0 + sxw
    w00 = (1.0 - wy1) * (1.0 - wx1) if in_y0 and in_x0 else 0.0
    w01 = (1.0 - wy1) * wx1 if in_y0 and in_x1 else 0.0
    w10 = wy1 * (1.0 - wx1) if in_y1 and in_x0 else 0.0
    w11 = wy1 * wx1 if in_y1 and in_x1 else 0.0
    o00 = row0 + col0 if w00 != 0.0 else 0
    o01 = row0 + col1 if w01 != 0.0 else 0
    o10 = row1 + col0 if w10 != 0.0 else 0
    o11 = row1 + col1 if w11 != 0.0 else 0
    return o00, o01, o10, o11, w00, w01, w10, w11


@njit(cache=True, inline="always")
def _clamp01(v):
    return min(max(v, 0.0), 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _hue_shift(r, g, b, shift):
    """torchvision's adjust_hue for one pixel: RGB -> HSV, h += shift (mod 1), -> RGB."""
    maxc = max(r, g, b)
    minc = min(r, g, b)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / (1.0 if eqc else maxc)
    inv_cr = 1.0 / (1.0 if eqc else cr)
    rc = (maxc - r) * inv_cr
    gc = (maxc - g) * inv_cr
    bc = (maxc - b) * inv_cr
    h = 0.0
    if maxc == r:
        h = bc - gc
    elif maxc == g:
        h = 2.0 + rc - bc
    else:
        h = 4.0 + gc - rc
    h = h * (1.0 / 6.0) + 1.0
    h = h - math.floor(h)  # fmod(h, 1) of a positive number
    h = h + shift
    h = h - math.floor(h)
    # HSV -> RGB without the six-way branch: channel n in (5, 3, 1) for (r, g, b) is
    # v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, which is torchvision's
    # (v, q, p, p, t, v) / (t, v, v, q, p, p) / (p, p, t, v, v, q) table (p = v (1 - s),
    # q = v (1 - s f), t = v (1 - s (1 - f)), f = frac(6 h)) up to rounding.
    v = maxc
    vs = v * s
    h6 = h * 6.0
    k = 5.0 + h6
    if k >= 6.0:
        k -= 6.0
    r = v - vs * min(max(min(k, 4.0 - k), 0.0), 1.0)
    k = 3.0 + h6
    if k >= 6.0:
        k -= 6.0
    g = v - vs * min(max(min(k, 4.0 - k), 0.0), 1.0)
    k = 1.0 + h6
    if k >= 6.0:
        k -= 6.0
    b = v - vs * min(max(min(k, 4.0 - k), 0.0), 1.0)
    return r, g, b


@njit(cache=True, error_model="numpy", inline="always")
def _seed(fields, b, k, gy0, gy1, wy, gx0, gx1, wx, fx):
    """Field k's value at the start of a control cell's run of pixels and its change per output
    pixel along the row: at a fixed row, bilinear interpolation is linear in x inside a cell,
    so value + n * slope is exact n pixels further on (up to rounding)."""
    f00 = fields[b, k, gy0, gx0]
    f01 = fields[b, k, gy0, gx1]
    f10 = fields[b, k, gy1, gx0]
    f11 = fields[b, k, gy1, gx1]
    top = (1.0 - wx) * f00 + wx * f01
    bottom = (1.0 - wx) * f10 + wx * f11
    return (1.0 - wy) * top + wy * bottom, fx * ((1.0 - wy) * (f01 - f00) + wy * (f11 - f10))


@njit(parallel=True, cache=True, error_model="numpy")
def random_field_warp(x, strides, height, width, in_div, fields, base, luma, norm_mean, norm_std, flags, normalize,
                      out, out_shape, out_u8):
    """Fill out, the flat float32 or uint8 (out_u8) storage of a C-contiguous (B, C, Ho, Wo)
    batch of shape out_shape, from the image batch x.

    x: a flat uint8 or float32 view of the images' memory; strides: their (b, c, h, w) strides in
    elements; height, width: the input size. in_div: 255.0 for uint8 input, 1.0 for float.
    fields (B, 9, GH, GW), base (B, 6), luma (B,), norm_mean / norm_std (C,) float32 (ignored
    unless normalize). flags: F_* bits.

    Along a row the fields are linear inside each control cell (about ell / 4 pixels wide), so
    the row walks cell by cell: at a cell's first pixel the fields and the transcendental
    functions are evaluated exactly, then advanced per pixel by their constant increments:
    the field values by addition, (cos, sin) of rotation and shear by a rotation through the
    per-pixel angle increment, exp(-scale) by a product. This replaces four libm calls per
    pixel by a few multiply-adds; the drift over a cell is a few ulp of float64.
    """
    batch, channels, out_h, out_w = out_shape
    plane = out_h * out_w
    sxb, sxc, sxh, sxw = strides
    grid_h, grid_w = fields.shape[2], fields.shape[3]
    fy = (grid_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    fx = (grid_w - 1) / (out_w - 1) if out_w > 1 else 0.0
    cx = (out_w - 1) * 0.5
    cy = (out_h - 1) * 0.5
    unit = 1.0 / in_div  # exactly 1 for float input: the identity stays exact
    resample = (flags & F_NO_RESAMPLE) == 0
    reflect = (flags & F_REFLECT) != 0
    rotate = (flags & F_ROTATE) != 0
    shear = (flags & F_SHEAR) != 0
    scale = (flags & F_SCALE) != 0
    for row in prange(batch * out_h):
        b = row // out_h
        y = row - b * out_h
        gy = y * fy
        gy0 = min(int(math.floor(gy)), grid_h - 1)
        gy1 = min(gy0 + 1, grid_h - 1)
        wy = gy - gy0
        a11, a12, b1 = base[b, 0], base[b, 1], base[b, 2]
        a21, a22, b2 = base[b, 3], base[b, 4], base[b, 5]
        cell = -1
        # per-pixel values and increments of the fields used directly ...
        t_x = t_y = bright = contrast = sat = hue = 0.0
        dt_x = dt_y = dbright = dcontrast = dsat = dhue = 0.0
        # ... and of the functions of the others: (cos, sin) by rotation, exp by product
        cos_r = sin_r = cos_dr = sin_dr = 0.0
        cos_h = sin_h = cos_dh = sin_dh = 0.0
        shrink = shrink_step = 1.0
        for xo in range(out_w):
            gx0 = min(int(xo * fx), grid_w - 1)  # xo * fx >= 0: int() is floor
            if gx0 != cell:
                cell = gx0
                gx1 = min(gx0 + 1, grid_w - 1)
                wx = xo * fx - gx0
                t_x, dt_x = _seed(fields, b, 0, gy0, gy1, wy, gx0, gx1, wx, fx)
                t_y, dt_y = _seed(fields, b, 1, gy0, gy1, wy, gx0, gx1, wx, fx)
                bright, dbright = _seed(fields, b, 5, gy0, gy1, wy, gx0, gx1, wx, fx)
                contrast, dcontrast = _seed(fields, b, 6, gy0, gy1, wy, gx0, gx1, wx, fx)
                sat, dsat = _seed(fields, b, 7, gy0, gy1, wy, gx0, gx1, wx, fx)
                hue, dhue = _seed(fields, b, 8, gy0, gy1, wy, gx0, gx1, wx, fx)
                if rotate:
                    angle, dangle = _seed(fields, b, 2, gy0, gy1, wy, gx0, gx1, wx, fx)
                    cos_r, sin_r = math.cos(angle), math.sin(angle)
                    cos_dr, sin_dr = math.cos(dangle), math.sin(dangle)
                if shear:
                    angle, dangle = _seed(fields, b, 4, gy0, gy1, wy, gx0, gx1, wx, fx)
                    cos_h, sin_h = math.cos(angle), math.sin(angle)
                    cos_dh, sin_dh = math.cos(dangle), math.sin(dangle)
                if scale:
                    log_scale, dlog_scale = _seed(fields, b, 3, gy0, gy1, wy, gx0, gx1, wx, fx)
                    shrink, shrink_step = math.exp(-log_scale), math.exp(-dlog_scale)
            else:
                t_x += dt_x
                t_y += dt_y
                bright += dbright
                contrast += dcontrast
                sat += dsat
                hue += dhue
                if rotate:
                    cos_r, sin_r = cos_r * cos_dr - sin_r * sin_dr, sin_r * cos_dr + cos_r * sin_dr
                if shear:
                    cos_h, sin_h = cos_h * cos_dh - sin_h * sin_dh, sin_h * cos_dh + cos_h * sin_dh
                if scale:
                    shrink *= shrink_step
            v0 = 0.0
            v1 = 0.0
            v2 = 0.0
            if resample:
                dx = xo - cx
                dy = y - cy
                if flags & F_TRANSLATE:
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
                qx = a11 * qx0 + a12 * qy0 + b1
                qy = a21 * qx0 + a22 * qy0 + b2
                if reflect:
                    qx = _reflect_clip(qx, width)
                    qy = _reflect_clip(qy, height)
                else:  # far outside reads zeros anyway; keep int conversions in range
                    qx = min(max(qx, -2.0), width + 1.0)
                    qy = min(max(qy, -2.0), height + 1.0)
                o00, o01, o10, o11, w00, w01, w10, w11 = _taps(qx, qy, height, width, sxh, sxw)
                p = b * sxb
                v0 = (w00 * x[p + o00] + w01 * x[p + o01] + w10 * x[p + o10] + w11 * x[p + o11]) * unit
                if channels == 3:
                    p += sxc
                    v1 = (w00 * x[p + o00] + w01 * x[p + o01] + w10 * x[p + o10] + w11 * x[p + o11]) * unit
                    p += sxc
                    v2 = (w00 * x[p + o00] + w01 * x[p + o01] + w10 * x[p + o10] + w11 * x[p + o11]) * unit
            else:
                p = b * sxb + y * sxh + xo * sxw
                v0 = x[p] * unit
                if channels == 3:
                    v1 = x[p + sxc] * unit
                    v2 = x[p + 2 * sxc] * unit
            if flags & F_BRIGHTNESS:
                k = max(0.0, 1.0 + bright)
                v0 = _clamp01(k * v0)
                v1 = _clamp01(k * v1)
                v2 = _clamp01(k * v2)
            if flags & F_CONTRAST:
                k = max(0.0, 1.0 + contrast)
                m = (1.0 - k) * luma[b]
                v0 = _clamp01(k * v0 + m)
                v1 = _clamp01(k * v1 + m)
                v2 = _clamp01(k * v2 + m)
            if flags & F_SATURATION:
                k = max(0.0, 1.0 + sat)
                grey = (1.0 - k) * (LUMA_R * v0 + LUMA_G * v1 + LUMA_B * v2)
                v0 = _clamp01(k * v0 + grey)
                v1 = _clamp01(k * v1 + grey)
                v2 = _clamp01(k * v2 + grey)
            if flags & F_HUE:
                v0, v1, v2 = _hue_shift(v0, v1, v2, hue)
            o = (b * channels * out_h + y) * out_w + xo
            for c in range(channels):
                v = v0 if c == 0 else (v1 if c == 1 else v2)
                if out_u8:
                    out[o] = math.floor(_clamp01(v) * 255.0 + 0.5)
                elif normalize:
                    out[o] = (v - norm_mean[c]) / norm_std[c]
                else:
                    out[o] = v
                o += plane
