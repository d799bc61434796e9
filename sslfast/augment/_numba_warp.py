r"""CPU kernel of the random-field augmentation, compiled by numba (`@njit(parallel=True)`).

Computes exactly what sslfast.reference.random_field computes (see its docstring for the math),
fused in one pass over the output: rows of the output (B * Ho of them) are spread over numba's
threads; for each output pixel the kernel interpolates the active parameter fields from the
control grid, builds the sampling position, gathers the 4 bilinear taps per channel, applies the
colour transform and writes the normalised (or uint8) value. Nothing of size B x H x W is
allocated besides the output, which is where the speed over the reference comes from (the
reference materialises a dozen full-size temporaries: the upsampled fields, the grid, the HSV
planes).

Numerics: float64 scalars (numba's default for Python floats; free for scalar code), stored as
float32 / uint8. The uniform `flags` branches are hoisted out of the inner loop by LLVM.
Compiled once per (input dtype, output dtype, layout) with cache=True, so later processes
(DataLoader workers) load the machine code from numba's cache instead of recompiling.
Threads: numba.set_num_threads(k) bounds them (e.g. 1 per DataLoader worker).
"""
import math

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


@njit(cache=True)
def _field(fields, b, k, gy0, gy1, gx0, gx1, wy, wx):
    top = (1.0 - wx) * fields[b, k, gy0, gx0] + wx * fields[b, k, gy0, gx1]
    bottom = (1.0 - wx) * fields[b, k, gy1, gx0] + wx * fields[b, k, gy1, gx1]
    return (1.0 - wy) * top + wy * bottom


@njit(cache=True)
def _reflect_clip(q, size):
    """grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamp."""
    t = abs(q + 0.5)
    flips = math.floor(t / size)
    extra = t - flips * size
    if flips % 2 == 0:
        q = extra - 0.5
    else:
        q = size - extra - 0.5
    return min(max(q, 0.0), size - 1.0)


@njit(cache=True)
def _bilinear(x, b, c, qx, qy, height, width, in_div):
    x0 = math.floor(qx)
    y0 = math.floor(qy)
    wx = qx - x0
    wy = qy - y0
    ix0 = int(x0)
    iy0 = int(y0)
    total = 0.0
    for dy in range(2):
        iy = iy0 + dy
        if iy < 0 or iy >= height:
            continue
        w_row = wy if dy == 1 else 1.0 - wy
        for dx in range(2):
            ix = ix0 + dx
            if ix < 0 or ix >= width:
                continue
            w = w_row * (wx if dx == 1 else 1.0 - wx)
            total += w * (x[b, c, iy, ix] / in_div)
    return total


@njit(cache=True)
def _clamp01(v):
    return min(max(v, 0.0), 1.0)


@njit(cache=True)
def _hue_shift(r, g, b, shift):
    """torchvision's adjust_hue for one pixel: RGB -> HSV, h += shift (mod 1), -> RGB."""
    maxc = max(r, g, b)
    minc = min(r, g, b)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / (1.0 if eqc else maxc)
    crd = 1.0 if eqc else cr
    rc = (maxc - r) / crd
    gc = (maxc - g) / crd
    bc = (maxc - b) / crd
    h = 0.0
    if maxc == r:
        h = bc - gc
    elif maxc == g:
        h = 2.0 + rc - bc
    else:
        h = 4.0 + gc - rc
    h = h / 6.0 + 1.0
    h = h - math.floor(h)  # fmod(h, 1) of a positive number
    h = h + shift
    h = h - math.floor(h)
    v = maxc
    i6 = math.floor(h * 6.0)
    f = h * 6.0 - i6
    i = int(i6) % 6
    p = _clamp01(v * (1.0 - s))
    q = _clamp01(v * (1.0 - s * f))
    t = _clamp01(v * (1.0 - s * (1.0 - f)))
    if i == 0:
        return v, t, p
    if i == 1:
        return q, v, p
    if i == 2:
        return p, v, t
    if i == 3:
        return p, q, v
    if i == 4:
        return t, p, v
    return v, p, q


@njit(parallel=True, cache=True)
def random_field_warp(x, in_div, fields, base, luma, norm_mean, norm_std, flags, normalize, out, out_u8):
    """Fill out (B, C, Ho, Wo) float32 or uint8 (out_u8) from x (B, C, H, W) uint8 or float32.

    in_div: 255.0 for uint8 input, 1.0 for float. fields (B, 9, GH, GW), base (B, 6), luma (B,),
    norm_mean / norm_std (C,) float32 (ignored unless normalize). flags: F_* bits.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    grid_h, grid_w = fields.shape[2], fields.shape[3]
    fy = (grid_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    fx = (grid_w - 1) / (out_w - 1) if out_w > 1 else 0.0
    cx = (out_w - 1) * 0.5
    cy = (out_h - 1) * 0.5
    resample = (flags & F_NO_RESAMPLE) == 0
    reflect = (flags & F_REFLECT) != 0
    for row in prange(batch * out_h):
        b = row // out_h
        y = row - b * out_h
        gy = y * fy
        gy0 = min(int(math.floor(gy)), grid_h - 1)
        gy1 = min(gy0 + 1, grid_h - 1)
        wy = gy - gy0
        a11, a12, b1 = base[b, 0], base[b, 1], base[b, 2]
        a21, a22, b2 = base[b, 3], base[b, 4], base[b, 5]
        for xo in range(out_w):
            gx = xo * fx
            gx0 = min(int(math.floor(gx)), grid_w - 1)
            gx1 = min(gx0 + 1, grid_w - 1)
            wx = gx - gx0
            v0 = 0.0
            v1 = 0.0
            v2 = 0.0
            if resample:
                dx = xo - cx
                dy = y - cy
                if flags & F_TRANSLATE:
                    dx -= _field(fields, b, 0, gy0, gy1, gx0, gx1, wy, wx)
                    dy -= _field(fields, b, 1, gy0, gy1, gx0, gx1, wy, wx)
                if flags & F_ROTATE:
                    angle = _field(fields, b, 2, gy0, gy1, gx0, gx1, wy, wx)
                    cos, sin = math.cos(angle), math.sin(angle)
                    dx, dy = cos * dx - sin * dy, sin * dx + cos * dy
                if flags & F_SHEAR:
                    dx -= math.tan(_field(fields, b, 4, gy0, gy1, gx0, gx1, wy, wx)) * dy
                if flags & F_SCALE:
                    shrink = math.exp(-_field(fields, b, 3, gy0, gy1, gx0, gx1, wy, wx))
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
                v0 = _bilinear(x, b, 0, qx, qy, height, width, in_div)
                if channels == 3:
                    v1 = _bilinear(x, b, 1, qx, qy, height, width, in_div)
                    v2 = _bilinear(x, b, 2, qx, qy, height, width, in_div)
            else:
                v0 = x[b, 0, y, xo] / in_div
                if channels == 3:
                    v1 = x[b, 1, y, xo] / in_div
                    v2 = x[b, 2, y, xo] / in_div
            if flags & F_BRIGHTNESS:
                k = max(0.0, 1.0 + _field(fields, b, 5, gy0, gy1, gx0, gx1, wy, wx))
                v0 = _clamp01(k * v0)
                v1 = _clamp01(k * v1)
                v2 = _clamp01(k * v2)
            if flags & F_CONTRAST:
                k = max(0.0, 1.0 + _field(fields, b, 6, gy0, gy1, gx0, gx1, wy, wx))
                m = (1.0 - k) * luma[b]
                v0 = _clamp01(k * v0 + m)
                v1 = _clamp01(k * v1 + m)
                v2 = _clamp01(k * v2 + m)
            if flags & F_SATURATION:
                k = max(0.0, 1.0 + _field(fields, b, 7, gy0, gy1, gx0, gx1, wy, wx))
                grey = (1.0 - k) * (LUMA_R * v0 + LUMA_G * v1 + LUMA_B * v2)
                v0 = _clamp01(k * v0 + grey)
                v1 = _clamp01(k * v1 + grey)
                v2 = _clamp01(k * v2 + grey)
            if flags & F_HUE:
                v0, v1, v2 = _hue_shift(v0, v1, v2, _field(fields, b, 8, gy0, gy1, gx0, gx1, wy, wx))
            for c in range(channels):
                v = v0 if c == 0 else (v1 if c == 1 else v2)
                if out_u8:
                    out[b, c, y, xo] = math.floor(_clamp01(v) * 255.0 + 0.5)
                elif normalize:
                    out[b, c, y, xo] = (v - norm_mean[c]) / norm_std[c]
                else:
                    out[b, c, y, xo] = v
