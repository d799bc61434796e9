r"""Fused random-field augmentation: field interpolation + warp + bilinear gather + colour +
normalisation in one pass.

Math (the oracle is sslfast.reference.random_field; channels and units in
sslfast.augment.params). For output pixel p = (x, y) of image b, with c the output centre:

    theta_k(p) = bilinear interpolation of fields[b, k] (control grid, align_corners=True)
    d  = p - c - t(p);   r = R(-rotate) d;   r_x -= tan(shear) r_y;   q' = c + exp(-scale) r
    q  = M_b q' + m_b                                   (base map: crop / resize / flip)
    v  = bilinear(image[b], q), zero or reflect padding (grid_sample, align_corners=False)
    v  = clamp(k_B v);  clamp(k_C v + (1 - k_C) luma_b);  clamp(k_S v + (1 - k_S) grey(v));
         hue shift in HSV                                (k_* = max(0, 1 + theta_*))
    out = (v - mean) / std   |   round(255 v) as uint8

This is an augmentation of data, not of a model: there is no backward.

Tiling: one program per (BLOCK_H x BLOCK_W) output tile of one image (grid: tiles along x,
tiles along y, batch). The program computes the tile's positions once and gathers every channel
at them, so each output element is written exactly once and each input neighbourhood is read by
the one program whose tile maps onto it (plus tile-border overlap). Field values come from the
tiny control grid (a few KB per image, L1/L2 resident). Parameters whose strength is zero are
compile-time constants (constexpr flags), so e.g. a colour-only configuration compiles to
contiguous loads with no gather at all (NO_RESAMPLE).

Numerics: everything in fp32; input uint8 is divided by 255 on load, fp16/bf16 upcast right
after the load; int64 offsets; every boundary masked (any H, W, Ho, Wo, 1 x 1 included).
Zero padding clamps coordinates to [-2, size + 1] before the float -> int conversion (farther
out reads only zeros anyway) so that extreme fields cannot overflow int32.
"""
import triton
import triton.language as tl

from ._configs import interpreter_configs

LUMA_R = tl.constexpr(0.2989)
LUMA_G = tl.constexpr(0.587)
LUMA_B = tl.constexpr(0.114)

CONFIGS = [
    triton.Config({"BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
    triton.Config({"BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4),
    triton.Config({"BLOCK_H": 16, "BLOCK_W": 64}, num_warps=8),
    triton.Config({"BLOCK_H": 32, "BLOCK_W": 32}, num_warps=8),
]
# The interpreter runs programs one after another: few, large tiles are fastest.
INTERPRETER_CONFIG = triton.Config({"BLOCK_H": 32, "BLOCK_W": 64}, num_warps=4)


def _keep(config):
    return config.kwargs["BLOCK_H"] * config.kwargs["BLOCK_W"] <= 2048


@triton.jit
def _field(fields_ptr, k: tl.constexpr, grid_size, o00, o01, o10, o11, wy, wx):
    """Bilinear interpolation of field channel k at the tile's precomputed corner offsets."""
    base = fields_ptr + k * grid_size
    top = (1.0 - wx) * tl.load(base + o00) + wx * tl.load(base + o01)
    bottom = (1.0 - wx) * tl.load(base + o10) + wx * tl.load(base + o11)
    return (1.0 - wy) * top + wy * bottom


@triton.jit
def _reflect_clip(q, size):
    """grid_sample(align_corners=False) reflection about -0.5 and size - 0.5, then clamp."""
    span = size.to(tl.float32)
    t = tl.abs(q + 0.5)
    flips = tl.floor(t / span)
    extra = t - flips * span
    even = (flips - 2.0 * tl.floor(flips * 0.5)) == 0.0
    q = tl.where(even, extra - 0.5, span - extra - 0.5)
    return tl.minimum(tl.maximum(q, 0.0), span - 1.0)


@triton.jit
def _load_unit(ptrs, mask, IN_U8: tl.constexpr):
    """Load input values as fp32 in [0, 1] (uint8 / 255), zeros where masked."""
    v = tl.load(ptrs, mask=mask, other=0).to(tl.float32)
    if IN_U8:
        v = v / 255.0
    return v


@triton.jit
def _bilinear(chan_ptr, o00, o01, o10, o11, m00, m01, m10, m11, w00, w01, w10, w11, IN_U8: tl.constexpr):
    return (w00 * _load_unit(chan_ptr + o00, m00, IN_U8) + w01 * _load_unit(chan_ptr + o01, m01, IN_U8)
            + w10 * _load_unit(chan_ptr + o10, m10, IN_U8) + w11 * _load_unit(chan_ptr + o11, m11, IN_U8))


@triton.jit
def _clamp01(v):
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def _hue_shift(r, g, b, shift):
    """torchvision's adjust_hue per pixel: RGB -> HSV, h += shift (mod 1), HSV -> RGB."""
    maxc = tl.maximum(tl.maximum(r, g), b)
    minc = tl.minimum(tl.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / tl.where(eqc, 1.0, maxc)
    crd = tl.where(eqc, 1.0, cr)
    rc = (maxc - r) / crd
    gc = (maxc - g) / crd
    bc = (maxc - b) / crd
    h = tl.where(maxc == r, bc - gc, tl.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h / 6.0 + 1.0
    h = h - tl.floor(h)  # fmod(h, 1) of a positive number
    h = h + shift
    h = h - tl.floor(h)
    v = maxc
    i6 = tl.floor(h * 6.0)
    f = h * 6.0 - i6
    i = i6 - 6.0 * tl.floor(i6 / 6.0)
    p = _clamp01(v * (1.0 - s))
    q = _clamp01(v * (1.0 - s * f))
    t = _clamp01(v * (1.0 - s * (1.0 - f)))
    r = tl.where(i == 0.0, v, tl.where(i == 1.0, q, tl.where(i == 2.0, p, tl.where(i == 3.0, p, tl.where(i == 4.0, t, v)))))
    g = tl.where(i == 0.0, t, tl.where(i == 1.0, v, tl.where(i == 2.0, v, tl.where(i == 3.0, q, tl.where(i == 4.0, p, p)))))
    b = tl.where(i == 0.0, p, tl.where(i == 1.0, p, tl.where(i == 2.0, t, tl.where(i == 3.0, v, tl.where(i == 4.0, v, q)))))
    return r, g, b


@triton.jit
def _store(out_ptr, offs, mask, v, chan: tl.constexpr, mean_ptr, std_ptr,
           NORMALIZE: tl.constexpr, OUT_U8: tl.constexpr):
    if OUT_U8:
        tl.store(out_ptr + offs, tl.floor(_clamp01(v) * 255.0 + 0.5).to(tl.uint8), mask=mask)
    else:
        if NORMALIZE:
            v = (v - tl.load(mean_ptr + chan)) / tl.load(std_ptr + chan)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=interpreter_configs(list(filter(_keep, CONFIGS)), INTERPRETER_CONFIG),
                 key=["out_h", "out_w", "C", "RESAMPLE"])
# Sizes may be 1 (1 x 1 images, 1 x 1 control grids): never specialise them into constants.
@triton.jit(do_not_specialize=["height", "width", "out_h", "out_w", "grid_h", "grid_w"])
def random_field_warp_kernel(
    x_ptr, out_ptr, fields_ptr, base_ptr, luma_ptr, mean_ptr, std_ptr,
    height, width, out_h, out_w, grid_h, grid_w,
    stride_xb, stride_xc, stride_xh, stride_xw,
    field_y_scale, field_x_scale,
    C: tl.constexpr,
    TRANSLATE: tl.constexpr, ROTATE: tl.constexpr, SCALE: tl.constexpr, SHEAR: tl.constexpr,
    BRIGHTNESS: tl.constexpr, CONTRAST: tl.constexpr, SATURATION: tl.constexpr, HUE: tl.constexpr,
    REFLECT: tl.constexpr, RESAMPLE: tl.constexpr, NORMALIZE: tl.constexpr,
    IN_U8: tl.constexpr, OUT_U8: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ys = pid_y * BLOCK_H + tl.arange(0, BLOCK_H)
    xs = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    y = ys[:, None]
    x = xs[None, :]
    inside = (y < out_h) & (x < out_w)
    yf = y.to(tl.float32)
    xf = x.to(tl.float32)

    # Control-grid corners and weights, shared by every field channel.
    grid_size = grid_h * grid_w
    fields_ptr += b * 9 * grid_size
    gy = yf * field_y_scale
    gx = xf * field_x_scale
    gy0 = tl.minimum(tl.floor(gy).to(tl.int32), grid_h - 1)
    gx0 = tl.minimum(tl.floor(gx).to(tl.int32), grid_w - 1)
    gy1 = tl.minimum(gy0 + 1, grid_h - 1)
    gx1 = tl.minimum(gx0 + 1, grid_w - 1)
    fwy = gy - gy0.to(tl.float32)
    fwx = gx - gx0.to(tl.float32)
    # Masked-out pixels (beyond the output) would read past the grid: point them at node 0.
    o00 = tl.where(inside, gy0 * grid_w + gx0, 0)
    o01 = tl.where(inside, gy0 * grid_w + gx1, 0)
    o10 = tl.where(inside, gy1 * grid_w + gx0, 0)
    o11 = tl.where(inside, gy1 * grid_w + gx1, 0)

    x_ptr += b * stride_xb
    if RESAMPLE:
        cx = (out_w - 1).to(tl.float32) * 0.5
        cy = (out_h - 1).to(tl.float32) * 0.5
        dx = xf - cx
        dy = yf - cy
        if TRANSLATE:
            dx -= _field(fields_ptr, 0, grid_size, o00, o01, o10, o11, fwy, fwx)
            dy -= _field(fields_ptr, 1, grid_size, o00, o01, o10, o11, fwy, fwx)
        if ROTATE:
            angle = _field(fields_ptr, 2, grid_size, o00, o01, o10, o11, fwy, fwx)
            cos = tl.cos(angle)
            sin = tl.sin(angle)
            dx, dy = cos * dx - sin * dy, sin * dx + cos * dy
        if SHEAR:
            shear = _field(fields_ptr, 4, grid_size, o00, o01, o10, o11, fwy, fwx)
            dx -= tl.sin(shear) / tl.cos(shear) * dy
        if SCALE:
            shrink = tl.exp(-_field(fields_ptr, 3, grid_size, o00, o01, o10, o11, fwy, fwx))
            dx *= shrink
            dy *= shrink
        qx0 = dx + cx
        qy0 = dy + cy
        base_ptr += b * 6
        qx = tl.load(base_ptr + 0) * qx0 + tl.load(base_ptr + 1) * qy0 + tl.load(base_ptr + 2)
        qy = tl.load(base_ptr + 3) * qx0 + tl.load(base_ptr + 4) * qy0 + tl.load(base_ptr + 5)
        if REFLECT:
            qx = _reflect_clip(qx, width)
            qy = _reflect_clip(qy, height)
        else:
            qx = tl.minimum(tl.maximum(qx, -2.0), width.to(tl.float32) + 1.0)
            qy = tl.minimum(tl.maximum(qy, -2.0), height.to(tl.float32) + 1.0)
        x0f = tl.floor(qx)
        y0f = tl.floor(qy)
        wx1 = qx - x0f
        wy1 = qy - y0f
        ix0 = x0f.to(tl.int32)
        iy0 = y0f.to(tl.int32)
        ix1 = ix0 + 1
        iy1 = iy0 + 1
        in_x0 = (ix0 >= 0) & (ix0 < width)
        in_x1 = (ix1 >= 0) & (ix1 < width)
        in_y0 = (iy0 >= 0) & (iy0 < height) & inside
        in_y1 = (iy1 >= 0) & (iy1 < height) & inside
        m00 = in_y0 & in_x0
        m01 = in_y0 & in_x1
        m10 = in_y1 & in_x0
        m11 = in_y1 & in_x1
        w00 = (1.0 - wy1) * (1.0 - wx1)
        w01 = (1.0 - wy1) * wx1
        w10 = wy1 * (1.0 - wx1)
        w11 = wy1 * wx1
        row0 = iy0.to(tl.int64) * stride_xh
        row1 = iy1.to(tl.int64) * stride_xh
        col0 = ix0.to(tl.int64) * stride_xw
        col1 = ix1.to(tl.int64) * stride_xw
        t00 = row0 + col0
        t01 = row0 + col1
        t10 = row1 + col0
        t11 = row1 + col1
        v0 = _bilinear(x_ptr, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11, IN_U8)
        if C == 3:
            v1 = _bilinear(x_ptr + stride_xc, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11, IN_U8)
            v2 = _bilinear(x_ptr + 2 * stride_xc, t00, t01, t10, t11, m00, m01, m10, m11, w00, w01, w10, w11, IN_U8)
        else:
            v1 = v0
            v2 = v0
    else:
        offs = y.to(tl.int64) * stride_xh + x.to(tl.int64) * stride_xw
        v0 = _load_unit(x_ptr + offs, inside, IN_U8)
        if C == 3:
            v1 = _load_unit(x_ptr + stride_xc + offs, inside, IN_U8)
            v2 = _load_unit(x_ptr + 2 * stride_xc + offs, inside, IN_U8)
        else:
            v1 = v0
            v2 = v0

    if BRIGHTNESS:
        k = tl.maximum(1.0 + _field(fields_ptr, 5, grid_size, o00, o01, o10, o11, fwy, fwx), 0.0)
        v0 = _clamp01(k * v0)
        v1 = _clamp01(k * v1)
        v2 = _clamp01(k * v2)
    if CONTRAST:
        k = tl.maximum(1.0 + _field(fields_ptr, 6, grid_size, o00, o01, o10, o11, fwy, fwx), 0.0)
        pivot = (1.0 - k) * tl.load(luma_ptr + b)
        v0 = _clamp01(k * v0 + pivot)
        v1 = _clamp01(k * v1 + pivot)
        v2 = _clamp01(k * v2 + pivot)
    if SATURATION:
        k = tl.maximum(1.0 + _field(fields_ptr, 7, grid_size, o00, o01, o10, o11, fwy, fwx), 0.0)
        grey = (1.0 - k) * (LUMA_R * v0 + LUMA_G * v1 + LUMA_B * v2)
        v0 = _clamp01(k * v0 + grey)
        v1 = _clamp01(k * v1 + grey)
        v2 = _clamp01(k * v2 + grey)
    if HUE:
        v0, v1, v2 = _hue_shift(v0, v1, v2, _field(fields_ptr, 8, grid_size, o00, o01, o10, o11, fwy, fwx))

    plane = out_h.to(tl.int64) * out_w
    out_offs = b * C * plane + y.to(tl.int64) * out_w + x
    _store(out_ptr, out_offs, inside, v0, 0, mean_ptr, std_ptr, NORMALIZE, OUT_U8)
    if C == 3:
        _store(out_ptr, out_offs + plane, inside, v1, 1, mean_ptr, std_ptr, NORMALIZE, OUT_U8)
        _store(out_ptr, out_offs + 2 * plane, inside, v2, 2, mean_ptr, std_ptr, NORMALIZE, OUT_U8)
