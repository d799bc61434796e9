"""Random-field augmentation: every backend against the reference and against independent
computations (integer shifts, rot90, affine_grid, torchvision's colour functions)."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from hypothesis import given
from hypothesis import strategies as st

from sslfast import dispatch
from sslfast.augment import (IMAGENET_MEAN, IMAGENET_STD, PRESETS, RandomFieldAugment, SSLViews, apply_random_fields,
                             random_field_augment)
from sslfast.augment import params as P


def _cpu_backends():
    names = ["reference"]
    if dispatch.numba_unavailable_reason() is None:
        names.append("numba")
    if dispatch.triton_unavailable_reason() is None and dispatch.triton_interpreter():
        names.append("triton")
    return names


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [n for n, b in dispatch.backends("random_field").items()
            if n != "reference" and not b.not_supported_reasons(torch.empty(1, device="cuda"), forced=True)]


CPU_BACKENDS = _cpu_backends()
KERNELS = [b for b in CPU_BACKENDS if b != "reference"]
ALL_BACKENDS = [("cpu", b) for b in CPU_BACKENDS] + [("cuda", b) for b in _gpu_backends()]
UNIT_TOL = 1e-4  # the bar, on outputs in [0, 1]


def _images(gen, shape, dtype=torch.uint8, device="cpu"):
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _constant(batch, rows=1, cols=1, **values):
    """Params with constant fields (kernel units)."""
    fields = torch.zeros(batch, P.NUM_FIELDS, rows, cols)
    flags = 0
    for name, value in values.items():
        fields[:, P.FIELD_NAMES.index(name)] = value
        flags |= {"translate_x": P.F_TRANSLATE, "translate_y": P.F_TRANSLATE}.get(name, 0) or \
            P.STRENGTH_FLAGS[name]
    return P.RandomFieldParams(fields=fields, flags=flags)


def _apply(images, params, backend, **kw):
    return apply_random_fields(images, params, backend=backend, **kw)


# ------------------------------------------------------------------------------------------
# Identity and independent references


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_all_zero_strengths_are_the_identity(backend, dtype):
    images = _images(torch.Generator().manual_seed(0), (3, 3, 17, 31), dtype)
    out_dtype = torch.uint8 if dtype == torch.uint8 else torch.float32
    out = RandomFieldAugment(generator=0, backend=backend, out_dtype=out_dtype)(images)
    assert out.dtype == out_dtype
    assert torch.equal(out, images.to(out_dtype))  # exact, also for uint8 -> /255 -> *255


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("padding", ["reflect", "zeros"])
def test_zero_fields_with_active_geometry_are_exact_in_kernels(backend, padding):
    images = _images(torch.Generator().manual_seed(1), (2, 3, 9, 14), torch.float32)
    params = _constant(2, rotate=0.0, translate_x=0.0, scale=0.0, shear=0.0)
    out = _apply(images, params, backend, padding=padding)
    assert torch.equal(out, images)
    ref = _apply(images, params, "reference", padding=padding)
    torch.testing.assert_close(ref, images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_integer_translation_is_a_shift(backend, padding):
    images = _images(torch.Generator().manual_seed(2), (2, 3, 11, 16), torch.float32)
    tx, ty = 3, -2  # content moves right by 3 and up by 2
    out = _apply(images, _constant(2, translate_x=float(tx), translate_y=float(ty)), backend, padding=padding)
    mode = "constant" if padding == "zeros" else "symmetric"  # symmetric: reflection about the edge
    pad = 4
    padded = torch.from_numpy(np.pad(images.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode))
    expected = padded[:, :, pad - ty:pad - ty + 11, pad - tx:pad - tx + 16]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quarter_turn_is_rot90(backend):
    images = _images(torch.Generator().manual_seed(3), (2, 3, 13, 13), torch.float32)
    out = _apply(images, _constant(2, rotate=math.pi / 2), backend, padding="zeros")
    # counter-clockwise as displayed, like torch.rot90(k=1) on (H, W)
    torch.testing.assert_close(out, torch.rot90(images, 1, dims=(-2, -1)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_global_affine_matches_affine_grid(backend):
    """Constant fields = one affine map, built here as a matrix and applied by affine_grid in fp64."""
    gen = torch.Generator().manual_seed(4)
    batch, height, width = 2, 19, 27
    images = _images(gen, (batch, 3, height, width), torch.float32)
    theta, s, h, tx, ty = 0.3, 0.2, -0.25, 2.5, -1.5
    out = _apply(images, _constant(batch, rotate=theta, scale=s, shear=h, translate_x=tx, translate_y=ty),
                 backend, padding="zeros")
    d = torch.float64
    cx, cy = (width - 1) / 2, (height - 1) / 2
    shift = lambda x, y: torch.tensor([[1, 0, x], [0, 1, y], [0, 0, 1]], dtype=d)  # noqa: E731
    rot_inv = torch.tensor([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0],
                            [0, 0, 1]], dtype=d)
    shear_inv = torch.tensor([[1, -math.tan(h), 0], [0, 1, 0], [0, 0, 1]], dtype=d)
    shrink = torch.diag(torch.tensor([math.exp(-s), math.exp(-s), 1], dtype=d))
    pixel_map = shift(cx, cy) @ shrink @ shear_inv @ rot_inv @ shift(-cx - tx, -cy - ty)
    to_pixels = torch.tensor([[width / 2, 0, (width - 1) / 2], [0, height / 2, (height - 1) / 2], [0, 0, 1]], dtype=d)
    affine = (torch.linalg.inv(to_pixels) @ pixel_map @ to_pixels)[:2]
    grid = F.affine_grid(affine.expand(batch, 2, 3), (batch, 3, height, width), align_corners=False)
    expected = F.grid_sample(images.to(d), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=UNIT_TOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name,value,expected", [
    ("brightness", 0.35, lambda x: TF.adjust_brightness(x, 1.35)),
    ("brightness", -0.6, lambda x: TF.adjust_brightness(x, 0.4)),
    ("contrast", 0.5, lambda x: TF.adjust_contrast(x, 1.5)),
    ("contrast", -0.7, lambda x: TF.adjust_contrast(x, 0.3)),
    ("saturation", 0.8, lambda x: TF.adjust_saturation(x, 1.8)),
    ("saturation", -1.0, lambda x: TF.rgb_to_grayscale(x, num_output_channels=3)),
    ("hue", 0.23, lambda x: TF.adjust_hue(x, 0.23)),
    ("hue", -0.41, lambda x: TF.adjust_hue(x, -0.41)),
])
def test_constant_colour_field_is_torchvision(backend, name, value, expected):
    images = _images(torch.Generator().manual_seed(5), (3, 3, 10, 12), torch.float32)
    out = _apply(images, _constant(3, **{name: value}), backend)
    torch.testing.assert_close(out, expected(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colour_order_is_brightness_saturation_hue(backend):
    images = _images(torch.Generator().manual_seed(6), (2, 3, 8, 9), torch.float32)
    out = _apply(images, _constant(2, brightness=0.3, saturation=-0.4, hue=0.1), backend)
    expected = TF.adjust_hue(TF.adjust_saturation(TF.adjust_brightness(images, 1.3), 0.6), 0.1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Backends against the reference on random fields


def _random_case(seed, batch, channels, height, width, dtype, preset="strong", jitter=True, sampler="fast"):
    gen = torch.Generator().manual_seed(seed)
    images = _images(gen, (batch, channels, height, width), dtype)
    strengths = dict(PRESETS[preset])
    if channels == 1:
        strengths.pop("saturation"), strengths.pop("hue")
    global_jitter = {"rotate": 15.0, "brightness": 0.3, "translate": 0.1} if jitter else None
    aug = RandomFieldAugment(generator=seed, global_jitter=global_jitter, sampler=sampler, **strengths)
    return images, aug.sample_params(images)


def _assert_matches_reference(out, ref, out_dtype, std=None):
    assert out.dtype == ref.dtype == out_dtype and out.shape == ref.shape
    if out_dtype == torch.uint8:
        diff = (out.int() - ref.int()).abs()
        assert diff.max().item() <= 1
        assert (diff > 0).float().mean().item() <= 0.01  # rounding ties only
    else:
        scale = 1.0 / min(std) if std is not None else 1.0
        torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=UNIT_TOL * scale)


def _natural(images: torch.Tensor) -> torch.Tensor:
    """Noise with the smoothness of a photo: 8x8 block means, bicubic back to full size."""
    small = F.interpolate(images.float(), scale_factor=1 / 8, mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic").clamp(0, 255).round().to(torch.uint8)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (17, 31), (224, 224)])
def test_kernels_match_reference_on_odd_sizes(backend, height, width):
    batch = 1 if (height * width > 10_000 and backend == "triton") else 2
    images, params = _random_case(10 + height, batch, 3, height, width, torch.uint8)
    if height * width > 10_000:
        images = _natural(images)
    ref = _apply(images, params, "reference")
    out = _apply(images, params, backend)
    _assert_matches_reference(out, ref, torch.float32)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernels_match_reference_on_white_noise_224(backend):
    """The worst case: fp32 positions near x = 200 carry ~2 ulp = 3e-5 px of rounding in any fp32
    implementation (the reference's grid_sample included); white noise has intensity slopes up
    to 1 per pixel and the strong colour gains multiply them by up to ~3: differences up to
    ~1e-4, where photo-like images stay near 2e-6 (previous test)."""
    images, params = _random_case(7, 1, 3, 224, 224, torch.uint8)
    ref = _apply(images, params, "reference")
    out = _apply(images, params, backend)
    torch.testing.assert_close(out, ref, rtol=0, atol=2.5 * UNIT_TOL)


@pytest.mark.parametrize("backend", KERNELS)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    channels=st.sampled_from([1, 3]),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.float16]),
    padding=st.sampled_from(["reflect", "zeros"]),
    output=st.sampled_from(["unit", "normalised", "uint8", "float16"]),
    preset=st.sampled_from(sorted(PRESETS)),
    sampler=st.sampled_from(["fast", "spectral"]),
)
def test_kernels_match_reference_hypothesis(backend, seed, batch, channels, height, width, dtype, padding, output,
                                           preset, sampler):
    images, params = _random_case(seed, batch, channels, height, width, dtype, preset=preset, sampler=sampler)
    kw = {"padding": padding}
    std = None
    if output == "normalised":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
        kw.update(mean=mean, std=std)
    out_dtype = {"uint8": torch.uint8, "float16": torch.float16}.get(output, torch.float32)
    kw["out_dtype"] = out_dtype
    ref = _apply(images, params, "reference", **kw)
    out = _apply(images, params, backend, **kw)
    if out_dtype == torch.float16:  # both round the same fp32 value; allow one fp16 ulp
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-3, atol=UNIT_TOL)
    else:
        _assert_matches_reference(out, ref, out_dtype, std)


@pytest.mark.parametrize("backend", KERNELS)
def test_kernels_match_reference_with_crops_flips_and_resizes(backend):
    gen = torch.Generator().manual_seed(20)
    images = _images(gen, (4, 3, 23, 37), torch.uint8)
    boxes = torch.tensor([[0, 0, 23, 37], [3, 5, 10, 20], [10, 1, 13, 9], [2, 30, 5, 7]], dtype=torch.float32)
    flip = torch.tensor([False, True, True, False])
    aug = RandomFieldAugment.preset("medium", generator=3, global_jitter={"contrast": 0.4})
    params = aug.sample_params(images, out_size=(16, 12))
    params.base = P.crop_base(boxes, (16, 12), flip)
    for padding in ("reflect", "zeros"):
        ref = _apply(images, params, "reference", padding=padding)
        out = _apply(images, params, backend, padding=padding)
        _assert_matches_reference(out, ref, torch.float32)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("spread", [0.99, 1.01, 3.0])
def test_kernels_match_reference_on_rows_of_wide_angle_and_scale_ranges(backend, spread):
    """The numba kernel evaluates cos, sin and exp along a row about the row's mid value with
    local polynomials while the row's values lie within 1 of it, and with libm beyond: fields
    that span [-spread, spread] radians (log scale) along every row take the polynomials at
    the edge of their range (0.99) or the libm path (1.01, 3.0); both must match the reference."""
    gen = torch.Generator().manual_seed(int(spread * 100))
    batch, height, width = 2, 21, 26
    images = _images(gen, (batch, 3, height, width))
    rows, cols = 5, 7
    ramp = torch.linspace(-spread, spread, cols).expand(batch, rows, cols)
    noise = 0.01 * torch.randn(batch, P.NUM_FIELDS, rows, cols, generator=gen)
    fields = noise.clone()
    fields[:, P.ROTATE] = ramp  # exactly [-spread, spread] along every row
    fields[:, P.SHEAR] += 0.4 * ramp  # |shear| < 1.25 rad: tan stays moderate
    fields[:, P.SCALE] += 0.5 * ramp.flip(-1)  # libm at spread 3
    fields[:, P.TX] += 2.0
    flags = P.F_TRANSLATE | P.F_ROTATE | P.F_SHEAR | P.F_SCALE | P.F_BRIGHTNESS | P.F_HUE
    params = P.RandomFieldParams(fields=fields, flags=flags)
    for padding in ("reflect", "zeros"):
        ref = _apply(images, params, "reference", padding=padding)
        out = _apply(images, params, backend, padding=padding)
        _assert_matches_reference(out, ref, torch.float32)


@pytest.mark.skipif("numba" not in KERNELS, reason="numba not installed")
@pytest.mark.parametrize("padding", ["reflect", "zeros"])
def test_numba_overflowing_positions_read_inside_the_image(padding):
    """A scale field of -800 makes exp(800) overflow to inf and the positions inf or NaN: the
    kernel must still read valid addresses and write values in [0, 1]."""
    images = _images(torch.Generator().manual_seed(22), (2, 3, 9, 11), torch.uint8)
    params = _constant(2, scale=-800.0, rotate=0.3)
    out = _apply(images, params, "numba", padding=padding)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("backend", KERNELS)
def test_non_contiguous_channels_last_input(backend):
    gen = torch.Generator().manual_seed(21)
    hwc = _images(gen, (2, 15, 18, 3), torch.uint8)
    images = hwc.permute(0, 3, 1, 2)  # what a DALI HWC batch looks like as BCHW
    params = RandomFieldAugment.preset("medium", generator=0).sample_params(images)
    out = _apply(images, params, backend)
    expected = _apply(images.contiguous(), params, backend)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_crop_base_maps_pixel_centres():
    boxes = torch.tensor([[2.0, 3.0, 4.0, 8.0]])
    base = P.crop_base(boxes, (2, 4))
    # output x = 0 reads the centre of the first 2-pixel-wide cell of the box: 3 + 0.5 * 2 - 0.5
    assert base[0, 2].item() == pytest.approx(3.5) and base[0, 0].item() == pytest.approx(2.0)
    flipped = P.crop_base(boxes, (2, 4), torch.tensor([True]))
    x_last = 3  # output x = 3 of the flipped crop reads what x = 0 of the unflipped one reads
    assert (flipped[0, 0] * x_last + flipped[0, 2]).item() == pytest.approx(3.5)


# ------------------------------------------------------------------------------------------
# Determinism, dtypes and ranges


def test_seed_reproduces_and_backends_agree():
    images = _images(torch.Generator().manual_seed(30), (3, 3, 20, 24), torch.uint8)
    outs = {b: RandomFieldAugment.preset("strong", generator=123, backend=b)(images) for b in CPU_BACKENDS}
    again = RandomFieldAugment.preset("strong", generator=123, backend=CPU_BACKENDS[-1])(images)
    assert torch.equal(again, outs[CPU_BACKENDS[-1]])
    for b in CPU_BACKENDS:
        torch.testing.assert_close(outs[b], outs["reference"], rtol=0, atol=UNIT_TOL)
    other = RandomFieldAugment.preset("strong", generator=124)(images)
    assert (other - outs["reference"]).abs().max() > 0.1
    # one module draws new fields on every call
    aug = RandomFieldAugment.preset("strong", generator=123)
    assert not torch.equal(aug(images), aug(images))


def test_generator_object_and_seed_agree():
    images = _images(torch.Generator().manual_seed(31), (2, 3, 12, 12), torch.uint8)
    a = random_field_augment(images, rotate=5.0, hue=0.05, generator=7)
    b = random_field_augment(images, rotate=5.0, hue=0.05, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_dtype_and_range(backend):
    images = _images(torch.Generator().manual_seed(32), (2, 3, 16, 20), torch.uint8)
    aug = dict(PRESETS["strong"], generator=5, backend=backend)
    unit = RandomFieldAugment(**aug)(images)
    assert unit.dtype == torch.float32 and unit.min() >= 0 and unit.max() <= 1
    as_u8 = RandomFieldAugment(**aug, out_dtype=torch.uint8)(images)
    assert as_u8.dtype == torch.uint8
    assert (as_u8.float() - unit * 255).abs().max() <= 0.5 + 1e-3
    norm = RandomFieldAugment(**aug, mean=IMAGENET_MEAN, std=IMAGENET_STD)(images)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, (unit - mean) / std, rtol=0, atol=1e-5)
    half = RandomFieldAugment(**aug, out_dtype=torch.float16)(images)
    assert half.dtype == torch.float16


def test_probability_p():
    images = _images(torch.Generator().manual_seed(33), (64, 3, 8, 8), torch.float32)
    out = RandomFieldAugment(translate=0.2, rotate=10.0, p=0.5, generator=0)(images)
    untouched = (out - images).flatten(1).abs().amax(1) < 1e-5
    assert 16 <= int(untouched.sum()) <= 48
    none = RandomFieldAugment(translate=0.2, p=0.0, generator=0, backend="numba" if KERNELS else None)(images)
    torch.testing.assert_close(none, images, rtol=0, atol=1e-5)


def test_infinite_length_scale_is_a_global_transform():
    images = _images(torch.Generator().manual_seed(34), (3, 3, 10, 10), torch.float32)
    aug = RandomFieldAugment(brightness=0.3, length_scale=math.inf, generator=0)
    params = aug.sample_params(images)
    assert params.fields.shape[-2:] == (1, 1)
    k = (1 + params.fields[:, P.BRIGHTNESS, 0, 0]).clamp_min(0).view(3, 1, 1, 1)
    torch.testing.assert_close(aug.apply(images, params), (images * k).clamp(0, 1), rtol=0, atol=1e-6)


def test_greyscale_images_take_geometry_brightness_and_contrast():
    images = _images(torch.Generator().manual_seed(35), (2, 1, 12, 14), torch.uint8)
    outs = [RandomFieldAugment(translate=0.05, rotate=5.0, brightness=0.2, contrast=0.2, generator=1, backend=b)(images)
            for b in CPU_BACKENDS]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=UNIT_TOL)


# ------------------------------------------------------------------------------------------
# Dispatch, op registration, bad input


def test_dispatch_order_and_cpu_choice():
    assert dispatch.BACKEND_ORDER == ("cuda", "triton", "numba", "reference")
    assert list(dispatch.backends("random_field")) == ["cuda", "triton", "numba", "reference"]
    cpu = torch.empty(1)
    expected = "numba" if dispatch.numba_unavailable_reason() is None else "reference"
    assert dispatch.select("random_field", cpu).name == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"sslfast\._C|device cpu not supported"):
            dispatch.select("random_field", cpu, backend="cuda")


def test_numba_flag_bits_match_params():
    from sslfast.augment import _numba_warp as N

    for name in ("F_TRANSLATE", "F_ROTATE", "F_SCALE", "F_SHEAR", "F_BRIGHTNESS", "F_CONTRAST", "F_SATURATION",
                 "F_HUE", "F_REFLECT", "F_NO_RESAMPLE"):
        assert getattr(N, name) == getattr(P, name)
    for name in ("TX", "TY", "ROTATE", "SCALE", "SHEAR", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"):
        assert getattr(N, name) == getattr(P, name)


@pytest.mark.parametrize("backend", ["reference"] + (["numba"] if "numba" in KERNELS else []))
def test_opcheck(backend):
    from sslfast.ops.random_field import random_field_apply_op

    images = _images(torch.Generator().manual_seed(40), (2, 3, 6, 7), torch.uint8)
    params = RandomFieldAugment.preset("medium", generator=0).sample_params(images)
    base = P.identity_base(2)
    luma = P.luma_mean(images, base, (6, 7), True)
    flags = params.flags | P.F_REFLECT
    torch.library.opcheck(random_field_apply_op, (images, params.fields, base, 6, 7, flags, luma, None, None,
                                                  torch.float32, backend))


def test_bad_input_raises_clear_errors():
    aug = RandomFieldAugment(rotate=5.0, generator=0)
    good = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"4-D \(B, C, H, W\).*unsqueeze"):
        aug(good[0])
    with pytest.raises(ValueError, match="1 or 3 channels.*C=4"):
        aug(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="1 or 3 channels.*C=2"):
        aug(torch.zeros(2, 2, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating.*torch.int32"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        aug(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    nan_images = torch.rand(2, 3, 8, 8)
    nan_images[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="images contains 1 NaN"):
        aug(nan_images)
    # float pixels in [0, 255] (a common slip) would be clamped to white: a clear error instead
    pixels = torch.rand(2, 3, 8, 8) * 255
    pixels[0, 0, 0, :2] = torch.tensor([0.0, 255.0])
    with pytest.raises(ValueError, match=r"images must hold float values in \[0, 1\].*got values from 0 to 255"):
        aug(pixels)
    with pytest.raises(ValueError, match=r"images must hold float values in \[0, 1\]"):
        SSLViews(crop_size=4)(torch.rand(2, 3, 8, 8) - 0.5)
    with pytest.raises(ValueError, match="saturation and hue need RGB"):
        RandomFieldAugment(hue=0.1)(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(length_scale=-0.1), ValueError, "length_scale must be a finite number > 0, got -0.1"),
    (dict(length_scale=0.0), ValueError, "length_scale"),
    (dict(rotate=float("nan")), ValueError, "rotate must be a finite number >= 0, got nan"),
    (dict(hue=-0.1), ValueError, "hue must be a finite number >= 0"),
    (dict(translate="0.1"), TypeError, "translate must be a real number, got str"),
    (dict(p=1.5), ValueError, r"p must be a probability in \[0, 1\], got 1.5"),
    (dict(mean=(0.5, 0.5, 0.5)), ValueError, "mean and std must be given together"),
    (dict(mean=(0.5,) * 3, std=(0.2, 0.0, 0.2)), ValueError, "std must be > 0"),
    (dict(mean=(0.5,) * 3, std=(0.2,) * 3, out_dtype=torch.uint8), ValueError, "cannot be normalised"),
    (dict(out_dtype=torch.int32), ValueError, "out_dtype must be one of"),
    (dict(padding="border"), ValueError, "padding must be one of"),
    (dict(sampler="perlin"), ValueError, "sampler must be one of"),
    (dict(length_unit="cm"), ValueError, "length_unit must be one of"),
    (dict(global_jitter={"twist": 1.0}), ValueError, "global_jitter key must be one of"),
    (dict(global_jitter={"shear": 90.0}), ValueError, "must be < 90 degrees"),
    (dict(global_jitter={"hue": float("nan")}), ValueError, r"global_jitter\['hue'\]"),
    (dict(generator="seed"), TypeError, "generator must be a torch.Generator, an int seed or None"),
    (dict(backend="cudnn"), ValueError, "backend must be one of"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandomFieldAugment(**kwargs)


def test_bad_params_and_per_channel_arguments():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    params = RandomFieldAugment(rotate=1.0, generator=0).sample_params(images)
    with pytest.raises(ValueError, match=r"params.fields must be \(3, 9, rows, cols\) for 3 images"):
        apply_random_fields(torch.zeros(3, 3, 8, 8), params)
    with pytest.raises(ValueError, match="one value per channel"):
        apply_random_fields(images, params, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(TypeError, match="params must be a RandomFieldParams"):
        apply_random_fields(images, {"fields": params.fields})
    with pytest.raises(ValueError, match="preset must be one of"):
        RandomFieldAugment.preset("extreme")


@pytest.mark.parametrize("device,backend", [c for c in ALL_BACKENDS if c[0] == "cuda"] or
                         [pytest.param("cuda", "none", marks=pytest.mark.skip(reason="no CUDA backend here"))])
def test_gpu_backends_match_reference(device, backend):
    gen = torch.Generator(device=device).manual_seed(50)
    images = torch.randint(0, 256, (8, 3, 67, 45), generator=gen, device=device, dtype=torch.uint8)
    aug = RandomFieldAugment.preset("strong", generator=gen, global_jitter={"rotate": 10.0, "contrast": 0.4})
    for out_size in [(67, 45), (32, 32)]:
        params = aug.sample_params(images, out_size=out_size)
        if out_size != (67, 45):
            params.base = P.crop_base(torch.tensor([[3, 4, 40, 30]] * 8, device=device), out_size,
                                      torch.rand(8, generator=gen, device=device) < 0.5)
        for kw in [dict(), dict(mean=IMAGENET_MEAN, std=IMAGENET_STD), dict(out_dtype=torch.uint8),
                   dict(padding="zeros", out_dtype=torch.bfloat16)]:
            ref = _apply(images, params, "reference", **kw)
            out = _apply(images, params, backend, **kw)
            if out.dtype == torch.bfloat16:
                torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
            else:
                _assert_matches_reference(out, ref, out.dtype, kw.get("std"))


def test_importing_the_augmentation_is_light():
    code = (
        "import sys, torch\n"
        "import sslfast.augment as A, sslfast.ops.random_field\n"
        "A.RandomFieldAugment, A.SSLViews, A.random_field_augment, A.PRESETS\n"
        "heavy = [m for m in ('triton', 'numba', 'sslfast._C') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from sslfast import dispatch; dispatch.describe()\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif("numba" not in KERNELS, reason="numba not installed")
def test_numba_in_forked_dataloader_workers_after_use_in_the_parent():
    """The loader's CPU fallback: augment in the main process, then in forked DataLoader
    workers; an int seed gives each worker its own stream."""
    code = (
        "import torch\n"
        "from torch.utils.data import DataLoader, Dataset\n"
        "from sslfast.augment import RandomFieldAugment\n"
        "aug = RandomFieldAugment.preset('medium', generator=0, backend='numba')\n"
        "img = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))\n"
        "first = aug(img)\n"
        "class D(Dataset):\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return aug(img)[0]\n"
        "ctx = 'fork'\n"
        "out = list(DataLoader(D(), batch_size=None, num_workers=2, multiprocessing_context=ctx))\n"
        "assert len(out) == 4\n"
        "assert not torch.equal(out[0], out[1]), 'workers repeated each other'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_contrast_on_a_crop_pivots_on_the_crop(backend):
    """A box of the output's size is an exact crop (mirrored where flipped); contrast then
    equals torchvision's adjust_contrast of that crop, whose mean grey is the crop's."""
    images = _images(torch.Generator().manual_seed(36), (2, 3, 20, 26), torch.float32)
    boxes = torch.tensor([[2.0, 5.0, 9.0, 12.0], [10.0, 0.0, 9.0, 12.0]])
    flip = torch.tensor([False, True])
    params = _constant(2, contrast=0.6)
    params.base, params.out_size = P.crop_base(boxes, (9, 12), flip), (9, 12)
    out = _apply(images, params, backend)
    for b, (top, left, h, w) in enumerate(boxes.int().tolist()):
        crop = images[b:b + 1, :, top:top + h, left:left + w]
        expected = TF.adjust_contrast(crop.flip(-1) if flip[b] else crop, 1.6)
        torch.testing.assert_close(out[b:b + 1], expected, rtol=0, atol=1e-5)
