"""The PyTorch view operations (sslfast.data.transforms) against independent float64 forms of
the same math, and against the DALI operators they stand in for where DALI is installed."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sslfast.data import transforms
from sslfast.data.dali_backend import dali_unavailable_reason

needs_dali = pytest.mark.skipif(dali_unavailable_reason() is not None, reason="NVIDIA DALI is not installed")


def _images(n, h, w, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def _colour_rows(n, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0.2, 1.8, n), rng.uniform(0.2, 1.8, n), rng.uniform(0, 1.8, n),
                            rng.uniform(-180, 180, n)]).astype(np.float32)


def _colour_float64(images, rows):
    """DALI's colour map written per pixel in float64: YIQ, rotate IQ, scale IQ, back, contrast, brightness."""
    to_rgb = np.linalg.inv([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
    out = []
    for img, (b, c, s, hue) in zip(images.numpy().astype(np.float64), rows.astype(np.float64)):
        r, g, bl = img
        y = 0.299 * r + 0.587 * g + 0.114 * bl
        i = 0.596 * r - 0.274 * g - 0.321 * bl
        q = 0.211 * r - 0.523 * g + 0.311 * bl
        t = np.deg2rad(hue)
        i, q = s * (np.cos(t) * i + np.sin(t) * q), s * (-np.sin(t) * i + np.cos(t) * q)
        rgb = np.einsum("ck,khw->chw", to_rgb, np.stack([y, i, q]))
        out.append(b * (c * rgb + (1 - c) * 128.0))
    return np.clip(np.stack(out), 0, 255)


@given(n=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_colour_twist_matches_the_formula(n, h, w, seed):
    images, rows = _images(n, h, w, seed), _colour_rows(n, seed)
    got = transforms.colour_twist(images, rows).numpy().astype(np.float64)
    assert np.abs(got - _colour_float64(images, rows)).max() <= 0.51  # fp32 matrix, then rounding


def test_identity_parameters_leave_images_unchanged():
    images = _images(2, 6, 5, 3)
    assert torch.equal(transforms.colour_twist(images, np.tile([1.0, 1.0, 1.0, 0.0], (2, 1))), images)


def test_grayscale_is_saturation_zero_with_601_luma():
    images = _images(3, 5, 7, 0)
    got = transforms.colour_twist(images, np.tile([1.0, 1.0, 0.0, 33.0], (3, 1)))
    x = images.to(torch.float64)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    # T^-1 (Y, 0, 0) = Y * (0.9997, 0.9996, 1.0028): DALI's YIQ rows are 3-digit roundings
    for ch in range(3):
        assert (got[:, ch].to(torch.float64) - luma).abs().max() <= 0.5 + 0.003 * 255


def _blur_float64(image, sigma, window):
    r = window // 2
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    x = image.numpy().astype(np.float64)
    x = np.pad(x, ((0, 0), (0, 0), (r, r)), mode="reflect")  # numpy 'reflect' is reflect-101
    x = np.stack([np.convolve(row, k, mode="valid") for row in x.reshape(-1, x.shape[-1])]).reshape(3, image.shape[1], -1)
    x = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="reflect")
    x = np.stack([np.convolve(col, k, mode="valid") for col in x.transpose(0, 2, 1).reshape(-1, x.shape[1])])
    return x.reshape(3, image.shape[2], -1).transpose(0, 2, 1)


@given(h=st.integers(1, 12), w=st.integers(1, 12), sigma=st.floats(0.1, 3.0), seed=st.integers(0, 2**31))
def test_gaussian_blur_matches_reflect101_convolution(h, w, sigma, seed):
    image = _images(1, h, w, seed)[0]
    window = int(2 * np.ceil(3 * sigma) + 1)  # often wider than the image: repeated reflection
    got = transforms.gaussian_blur(image, sigma, window).numpy().astype(np.float64)
    want = _blur_float64(image, sigma, window) if min(h, w) > 1 else None
    if want is not None:
        assert np.abs(got - want).max() <= 0.51
    assert torch.equal(transforms.gaussian_blur(image, sigma, 1), image)


def test_solarize_flip_normalize():
    images = _images(4, 3, 5, 1)
    mask = np.array([True, False, True, False])
    sol = transforms.solarize(images, mask)
    want = torch.where(images >= 128, 255 - images, images)
    assert torch.equal(sol[mask], want[mask]) and torch.equal(sol[~mask], images[~mask])
    flipped = transforms.flip(images, mask)
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    out = transforms.normalize(images, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    want = (images.to(torch.float64) / 255 - torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(out, want.float(), rtol=1e-6, atol=1e-6)
    assert transforms.normalize(images, (0.1,) * 3, (1.0,) * 3, torch.uint8) is images


def _dali_run(graph, *inputs):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(inputs[0]), num_threads=1, device_id=None)
    def pipe():
        nodes = fn.external_source(source=lambda: inputs, num_outputs=len(inputs), batch=True,
                                   layout=["HWC"] + [""] * (len(inputs) - 1))
        return graph(fn, types, *nodes)

    p = pipe()
    p.build()
    return [np.array(t) for t in p.run()[0]]


@needs_dali
def test_colour_twist_equals_dali_color_twist():
    images, rows = _images(6, 9, 11, 4), _colour_rows(6, 4)
    hwc = [img.permute(1, 2, 0).contiguous().numpy() for img in images]
    want = _dali_run(lambda fn, types, x, p: fn.color_twist(x, brightness=p[0], contrast=p[1], saturation=p[2],
                                                           hue=p[3]), hwc, list(rows))
    got = transforms.colour_twist(images, rows).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got.astype(int) - np.stack(want).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # fp32 rounding ties only


@needs_dali
def test_gaussian_blur_equals_dali_gaussian_blur():
    images = _images(4, 13, 17, 5)
    sigmas = np.array([0.3, 1.0, 2.0, 1.7], dtype=np.float32)
    windows = (2 * np.ceil(3 * sigmas) + 1).astype(np.int32)
    hwc = [img.permute(1, 2, 0).contiguous().numpy() for img in images]
    want = _dali_run(lambda fn, types, x, w, s: fn.gaussian_blur(x, window_size=w, sigma=s),
                     hwc, [np.array(w) for w in windows], [np.array(s) for s in sigmas])
    for img, s, w, ref in zip(images, sigmas, windows, want):
        got = transforms.gaussian_blur(img, float(s), int(w)).permute(1, 2, 0).numpy()
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
