r"""CPU kernel of the random-field augmentation, compiled by numba (`@njit(parallel=True)`).

Computes what sslfast.reference.random_field computes (its docstring has the math) in one
fused pass: nothing of size B x H x W is allocated besides the output, where the reference
materialises a dozen full-size temporaries (the upsampled fields, the grid, the HSV planes).

Work split: the B * Ho output rows are cut into one chunk of consecutive rows per numba
thread (prange), so a chunk covers whole images but for its first and last. Every stage below
is a loop along one output row over buffers of Wo elements, written so that LLVM vectorises
it (no branch inside but selects; a flag of the configuration switches a whole loop on or
off), except the gather, whose loads are scalar:

  0. per image (when a chunk reaches a new image): the x half of the bilinear interpolation
     of each active field, columns[k, gy, x] for every control row gy and output column x
     (GH x Wo values per field: 17 x 64 for 64 x 64 images at length scale 0.25, a quarter of
     a field's pixels, 8% at 224 x 224), and the least and greatest node of every control row.
  1. fields (float64): each field along the row is a lerp of two control rows of `columns`
     (the y half). Rotation and shear need cos and sin, scale exp: the row's values lie
     between the bounds of its two control rows, so with m their midpoint,
     cos(m + d) = cos m cos d - sin m sin d and exp(-(m + d)) = exp(-m) exp(-d), where cos d,
     sin d, exp(-d) are Taylor polynomials for |d| <= 1 (truncation < 3e-15): three libm
     calls per row, multiply-adds per pixel. A row whose values span more than 2 (strong
     fields at short length scales) calls libm per pixel instead. Inactive geometry keeps its
     identity (translation 0, cos 1, sin 0, tan 0, shrink 1), so the position loop is
     branch-free and exact where the fields are zero (x * 1, x - 0 * y). Output: the sampling
     position (qx, qy) per pixel and the colour factors.
  2. taps and gather: the four bilinear tap offsets and weights per pixel (reflection without
     branches: a flip count that is off by one at an exact multiple of the size lands on the
     same point, the reflection being continuous), then one pass over the pixels that reads
     every channel at those taps through a flat view of the input with explicit element
     strides (any layout, a permuted channels-last batch included, costs the same).
  3. colour (float32): brightness, contrast, saturation, and the HSV hue shift, whose
     HSV -> RGB step uses the closed form c_n = v - v s clamp(min(k, 4 - k), 0, 1),
     k = (n + 6 h) mod 6, n = 5, 3, 1 for r, g, b, the same numbers as torchvision's six-way
     table (p = v (1 - s), q = v (1 - s f), t = v (1 - s (1 - f))) up to rounding.
  4. store: normalise, or round to uint8, into the C-contiguous output.

Where the time goes (1 thread, 64 x 64, "medium": every parameter on; ~13 ns per output pixel
against ~105 for the reference): the scalar gather of 4 taps x 3 channels ~5 ns, taps and
positions ~1.5, the nine fields with their polynomials ~4, colour ~2, store ~0.5.

Numerics: fields and positions in float64, tap weights and colour in float32 (the
reference's precision); values are divided by 255 (not multiplied by a rounded reciprocal),
so that a tap on a pixel centre gives exactly uint8 / 255 as the reference does; float input
with every strength zero is copied exactly. fastmath is limited to "contract" (fused
multiply-adds: one rounding instead of two, nothing reassociated, NaN and signed-zero rules
kept). error_model="numpy" (no ZeroDivisionError branch on every division). Compiled once
per (input dtype, output dtype) with cache=True, so DataLoader workers load the machine code
from numba's cache instead of recompiling.
Threads: numba.set_num_threads(k) bounds them (e.g. 1 per DataLoader worker). In a process
that also runs multi-threaded torch ops, torch's GNU OpenMP workers spin-wait after each
parallel region (OMP_WAIT_POLICY's default) and take the cores from numba's workers: measured
on 2 cores, a 4.4 ms call became 7-32 ms at 2 threads, 4.4-4.9 ms with OMP_WAIT_POLICY=PASSIVE
(benchmarks/RESULTS.md). Set that variable, or give numba one thread, in such processes.
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
# Field channels: the order of sslfast.augment.params.FIELD_NAMES (checked by the same test).
TX, TY, ROTATE, SCALE, SHEAR, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(9)


# Taylor polynomials of sin, cos and exp about 0 (Horner form, reciprocals as constants: no
# division), used for |d| <= _LOCAL_RANGE, where the first omitted terms are below 3e-15.
_LOCAL_RANGE = 1.0


@njit(cache=True, inline="always", fastmath={"contract"})
def _sin_local(d):
    d2 = d * d
    return d * (1.0 - d2 * (1.0 / 6.0) * (1.0 - d2 * (1.0 / 20.0) * (1.0 - d2 * (1.0 / 42.0) * (
        1.0 - d2 * (1.0 / 72.0) * (1.0 - d2 * (1.0 / 110.0) * (1.0 - d2 * (1.0 / 156.0) * (
            1.0 - d2 * (1.0 / 210.0))))))))


@njit(cache=True, inline="always", fastmath={"contract"})
def _cos_local(d):
    d2 = d * d
    return 1.0 - d2 * 0.5 * (1.0 - d2 * (1.0 / 12.0) * (1.0 - d2 * (1.0 / 30.0) * (1.0 - d2 * (1.0 / 56.0) * (
        1.0 - d2 * (1.0 / 90.0) * (1.0 - d2 * (1.0 / 132.0) * (1.0 - d2 * (1.0 / 182.0) * (
            1.0 - d2 * (1.0 / 240.0))))))))


@njit(cache=True, inline="always", fastmath={"contract"})
def _exp_local(d):
    e = 1.0 + d * (1.0 / 17.0)
    e = 1.0 + d * (1.0 / 16.0) * e
    e = 1.0 + d * (1.0 / 15.0) * e
    e = 1.0 + d * (1.0 / 14.0) * e
    e = 1.0 + d * (1.0 / 13.0) * e
    e = 1.0 + d * (1.0 / 12.0) * e
    e = 1.0 + d * (1.0 / 11.0) * e
    e = 1.0 + d * (1.0 / 10.0) * e
    e = 1.0 + d * (1.0 / 9.0) * e
    e = 1.0 + d * (1.0 / 8.0) * e
    e = 1.0 + d * (1.0 / 7.0) * e
    e = 1.0 + d * (1.0 / 6.0) * e
    e = 1.0 + d * (1.0 / 5.0) * e
    e = 1.0 + d * 0.25 * e
    e = 1.0 + d * (1.0 / 3.0) * e
    e = 1.0 + d * 0.5 * e
    return 1.0 + d * e


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _upsample_columns(fields, b, k, col_cell, col_next, col_frac, columns, bounds):
    """columns[gy, x] = field k of image b on control row gy, interpolated to every output
    column x (the x half of the bilinear interpolation, done once per image: rows then need only
    the y half, a lerp of two of these rows); bounds[gy] = (least, greatest) node value of
    control row gy, which bound every value interpolated from it."""
    for gy in range(columns.shape[0]):
        src = fields[b, k, gy]
        dst = columns[gy]
        for i in range(dst.shape[0]):
            left = src[col_cell[i]]
            dst[i] = left + col_frac[i] * (src[col_next[i]] - left)
        lo = hi = src[0]
        for j in range(1, src.shape[0]):
            lo = min(lo, src[j])
            hi = max(hi, src[j])
        bounds[gy, 0] = lo
        bounds[gy, 1] = hi


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _field_row(columns, bounds, gy0, gy1, wy, dst):
    """dst = a field along output row y (the y half of the interpolation, vectorised): a lerp
    of control rows gy0 and gy1, exact where they agree; returns bounds of the row's values."""
    top = columns[gy0]
    bottom = columns[gy1]
    for i in range(dst.shape[0]):
        dst[i] = top[i] + wy * (bottom[i] - top[i])
    return min(bounds[gy0, 0], bounds[gy1, 0]), max(bounds[gy0, 1], bounds[gy1, 1])


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _cos_sin_row(angle, lo, hi, cos_out, sin_out):
    """cos and sin of a row of angles in [lo, hi]: about the midpoint m by the angle-sum
    formula, cos(m + d) = cos m cos d - sin m sin d with |d| <= 1 (polynomials that vectorise);
    libm per pixel for a row that spans more than 2 radians."""
    mid = 0.5 * (lo + hi)
    if 0.5 * (hi - lo) <= _LOCAL_RANGE:
        cos_m, sin_m = math.cos(mid), math.sin(mid)
        for i in range(angle.shape[0]):
            d = angle[i] - mid
            c, s = _cos_local(d), _sin_local(d)
            cos_out[i] = cos_m * c - sin_m * s
            sin_out[i] = sin_m * c + cos_m * s
    else:
        for i in range(angle.shape[0]):
            cos_out[i] = math.cos(angle[i])
            sin_out[i] = math.sin(angle[i])


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _exp_neg_row(value, lo, hi, out):
    """out = exp(-value) for a row of values in [lo, hi], about the midpoint as above."""
    mid = 0.5 * (lo + hi)
    if 0.5 * (hi - lo) <= _LOCAL_RANGE:
        exp_m = math.exp(-mid)
        for i in range(value.shape[0]):
            out[i] = exp_m * _exp_local(mid - value[i])
    else:
        for i in range(value.shape[0]):
            out[i] = math.exp(-value[i])


@njit(cache=True, error_model="numpy", inline="always", fastmath={"contract"})
def _reflect(q, size, inv_size):
    """grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamped to
    [0, size - 1]; without branches (vectorises). A flip count off by one at an exact multiple
    of size (the product by 1 / size) lands on the same point: the reflection is continuous.
    A non-finite or absurd position (an overflowing scale field) reads pixel 0, never an
    out-of-range address."""
    t = abs(q + 0.5)
    t = t if t < 1e15 else 0.0
    flips = np.floor(t * inv_size)
    extra = t - flips * size
    odd = flips - 2.0 * np.floor(0.5 * flips)
    q = size - extra - 0.5 if odd != 0.0 else extra - 0.5
    return min(max(q, 0.0), size - 1.0)


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def random_field_warp(x, strides, height, width, in_div, fields, base, luma, norm_mean, norm_std, flags, normalize,
                      out, out_shape, out_u8, threads):
    """Fill out, the flat float32 or uint8 (out_u8) storage of a C-contiguous (B, C, Ho, Wo)
    batch of shape out_shape, from the image batch x.

    x: a flat uint8 or float32 view of the images' memory; strides: their (b, c, h, w) strides in
    elements; height, width: the input size. in_div: 255.0 for uint8 input, 1.0 for float.
    fields (B, 9, GH, GW) float32, base (B, 6), luma (B,), norm_mean / norm_std (C,) float32
    (ignored unless normalize). flags: F_* bits. threads: numba.get_num_threads() of the caller
    (read outside: inside, it would stop the caching).
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
    in_scale = np.float32(in_div)
    f_width, f_height = float(width), float(height)
    inv_width, inv_height = 1.0 / width, 1.0 / height
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

    # Control cell and weight of every output column: the same for every row and field.
    col_cell = np.empty(out_w, np.int64)
    col_next = np.empty(out_w, np.int64)
    col_frac = np.empty(out_w)
    for i in range(out_w):
        g = i * fx
        col_cell[i] = min(int(g), grid_w - 1)
        col_next[i] = min(col_cell[i] + 1, grid_w - 1)
        col_frac[i] = g - col_cell[i]
    active = np.zeros(9, np.bool_)
    active[TX] = active[TY] = translate
    active[ROTATE] = rotate
    active[SCALE] = scale
    active[SHEAR] = shear
    active[BRIGHTNESS] = brightness
    active[CONTRAST] = contrast
    active[SATURATION] = saturation
    active[HUE] = hue

    rows = batch * out_h
    chunks = max(1, min(rows, threads))
    per_chunk = (rows + chunks - 1) // chunks
    for chunk in prange(chunks):
        columns = np.empty((9, grid_h, out_w))
        bounds = np.empty((9, grid_h, 2))
        image = -1
        # geometry along the row; an inactive part keeps its identity value, so that the
        # position loop has no branch (and x * 1, x - 0 * y are exact)
        t_x = np.zeros(out_w)
        t_y = np.zeros(out_w)
        cos_r = np.ones(out_w)
        sin_r = np.zeros(out_w)
        cos_h = np.ones(out_w)
        tan_h = np.zeros(out_w)
        shrink = np.ones(out_w)
        field = np.empty(out_w)
        qx = np.empty(out_w)
        qy = np.empty(out_w)
        # bilinear taps: element offsets and weights
        o00 = np.empty(out_w, np.int64)
        o01 = np.empty(out_w, np.int64)
        o10 = np.empty(out_w, np.int64)
        o11 = np.empty(out_w, np.int64)
        w00 = np.empty(out_w, np.float32)
        w01 = np.empty(out_w, np.float32)
        w10 = np.empty(out_w, np.float32)
        w11 = np.empty(out_w, np.float32)
        # colour factors and the row's values per channel
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
            gy = y * fy
            gy0 = min(int(gy), grid_h - 1)  # gy >= 0: int() is floor
            gy1 = min(gy0 + 1, grid_h - 1)
            wy = gy - gy0
            if b != image:  # a new image: the x half of its fields' interpolation
                image = b
                for k in range(9):
                    if active[k]:
                        _upsample_columns(fields, b, k, col_cell, col_next, col_frac, columns[k], bounds[k])

            # 1. fields along the row, then the sampling position of every pixel
            if translate:
                _field_row(columns[TX], bounds[TX], gy0, gy1, wy, t_x)
                _field_row(columns[TY], bounds[TY], gy0, gy1, wy, t_y)
            if rotate:
                lo, hi = _field_row(columns[ROTATE], bounds[ROTATE], gy0, gy1, wy, field)
                _cos_sin_row(field, lo, hi, cos_r, sin_r)
            if shear:
                lo, hi = _field_row(columns[SHEAR], bounds[SHEAR], gy0, gy1, wy, field)
                _cos_sin_row(field, lo, hi, cos_h, tan_h)
                for i in range(out_w):
                    tan_h[i] /= cos_h[i]
            if scale:
                lo, hi = _field_row(columns[SCALE], bounds[SCALE], gy0, gy1, wy, field)
                _exp_neg_row(field, lo, hi, shrink)
            if resample:
                a11, a12, b1 = base[b, 0], base[b, 1], base[b, 2]
                a21, a22, b2 = base[b, 3], base[b, 4], base[b, 5]
                dy0 = y - cy
                for i in range(out_w):
                    dx = (i - cx) - t_x[i]
                    dy = dy0 - t_y[i]
                    dx, dy = cos_r[i] * dx - sin_r[i] * dy, sin_r[i] * dx + cos_r[i] * dy
                    dx = (dx - tan_h[i] * dy) * shrink[i]
                    dy = dy * shrink[i]
                    qx0 = dx + cx
                    qy0 = dy + cy
                    qx[i] = a11 * qx0 + a12 * qy0 + b1
                    qy[i] = a21 * qx0 + a22 * qy0 + b2
            if brightness:
                _field_row(columns[BRIGHTNESS], bounds[BRIGHTNESS], gy0, gy1, wy, field)
                for i in range(out_w):
                    k_bright[i] = max(0.0, 1.0 + field[i])
            if contrast:
                _field_row(columns[CONTRAST], bounds[CONTRAST], gy0, gy1, wy, field)
                for i in range(out_w):
                    k_contrast[i] = max(0.0, 1.0 + field[i])
            if saturation:
                _field_row(columns[SATURATION], bounds[SATURATION], gy0, gy1, wy, field)
                for i in range(out_w):
                    k_sat[i] = max(0.0, 1.0 + field[i])
            if hue:
                _field_row(columns[HUE], bounds[HUE], gy0, gy1, wy, field)
                for i in range(out_w):
                    shift[i] = field[i]

            # 2. bilinear taps (zero or reflect padding), then the gather of every channel
            p = b * sxb
            if resample:
                if reflect:
                    # inside [0, size - 1] after the reflection: the right / lower tap lies
                    # outside only when its weight is 0, so clamp its index, no masks
                    for i in range(out_w):
                        sx = _reflect(qx[i], f_width, inv_width)
                        sy = _reflect(qy[i], f_height, inv_height)
                        fx0 = np.floor(sx)
                        fy0 = np.floor(sy)
                        ax = np.float32(sx - fx0)
                        ay = np.float32(sy - fy0)
                        ix0 = int(fx0)
                        iy0 = int(fy0)
                        r0 = p + iy0 * sxh
                        r1 = p + min(iy0 + 1, height - 1) * sxh
                        c0 = ix0 * sxw
                        c1 = min(ix0 + 1, width - 1) * sxw
                        w00[i] = (ONE - ay) * (ONE - ax)
                        w01[i] = (ONE - ay) * ax
                        w10[i] = ay * (ONE - ax)
                        w11[i] = ay * ax
                        o00[i] = r0 + c0
                        o01[i] = r0 + c1
                        o10[i] = r1 + c0
                        o11[i] = r1 + c1
                else:
                    for i in range(out_w):
                        # far outside reads zeros anyway; keep int conversions in range
                        sx = min(max(qx[i], -2.0), f_width + 1.0)
                        sy = min(max(qy[i], -2.0), f_height + 1.0)
                        fx0 = np.floor(sx)
                        fy0 = np.floor(sy)
                        ax = np.float32(sx - fx0)
                        ay = np.float32(sy - fy0)
                        ix0 = int(fx0)
                        iy0 = int(fy0)
                        in_x0 = (ix0 >= 0) & (ix0 < width)
                        in_x1 = (ix0 >= -1) & (ix0 < width - 1)
                        in_y0 = (iy0 >= 0) & (iy0 < height)
                        in_y1 = (iy0 >= -1) & (iy0 < height - 1)
                        # a tap outside the image: weight 0 at a valid address (zero padding)
                        w00[i] = (ONE - ay) * (ONE - ax) if in_y0 & in_x0 else ZERO
                        w01[i] = (ONE - ay) * ax if in_y0 & in_x1 else ZERO
                        w10[i] = ay * (ONE - ax) if in_y1 & in_x0 else ZERO
                        w11[i] = ay * ax if in_y1 & in_x1 else ZERO
                        r0 = iy0 * sxh
                        c0 = ix0 * sxw
                        o00[i] = p + (r0 + c0 if in_y0 & in_x0 else 0)
                        o01[i] = p + (r0 + c0 + sxw if in_y0 & in_x1 else 0)
                        o10[i] = p + (r0 + sxh + c0 if in_y1 & in_x0 else 0)
                        o11[i] = p + (r0 + sxh + c0 + sxw if in_y1 & in_x1 else 0)
                # all channels of a pixel in one pass: its taps and weights are loaded once
                for i in range(out_w):
                    a00, a01, a10, a11 = w00[i], w01[i], w10[i], w11[i]
                    j00, j01, j10, j11 = o00[i], o01[i], o10[i], o11[i]
                    v0[i] = (a00 * np.float32(x[j00]) + a01 * np.float32(x[j01])
                             + a10 * np.float32(x[j10]) + a11 * np.float32(x[j11])) / in_scale
                    if channels == 3:
                        j00 += sxc
                        j01 += sxc
                        j10 += sxc
                        j11 += sxc
                        v1[i] = (a00 * np.float32(x[j00]) + a01 * np.float32(x[j01])
                                 + a10 * np.float32(x[j10]) + a11 * np.float32(x[j11])) / in_scale
                        j00 += sxc
                        j01 += sxc
                        j10 += sxc
                        j11 += sxc
                        v2[i] = (a00 * np.float32(x[j00]) + a01 * np.float32(x[j01])
                                 + a10 * np.float32(x[j10]) + a11 * np.float32(x[j11])) / in_scale
            else:
                for c in range(channels):
                    v = v0 if c == 0 else (v1 if c == 1 else v2)
                    q = p + c * sxc + y * sxh
                    if sxw == 1:
                        src = x[q:q + out_w]
                        for i in range(out_w):
                            v[i] = np.float32(src[i]) / in_scale
                    else:
                        for i in range(out_w):
                            v[i] = np.float32(x[q + i * sxw]) / in_scale

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
                    h = h - np.floor(h)  # fmod(h, 1) of a positive number
                    h = h + shift[i]
                    h = h - np.floor(h)
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
                dst = out[o + c * plane:o + c * plane + out_w]
                if out_u8:
                    for i in range(out_w):
                        # v >= 0 after the clamp: truncation is floor
                        dst[i] = np.uint8(np.int32(min(max(v[i], ZERO), ONE) * np.float32(255.0) + np.float32(0.5)))
                elif normalize:
                    mean, std = norm_mean[c], norm_std[c]
                    for i in range(out_w):
                        dst[i] = (v[i] - mean) / std
                else:
                    for i in range(out_w):
                        dst[i] = v[i]
