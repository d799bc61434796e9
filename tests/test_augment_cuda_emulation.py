"""The CUDA kernel's arithmetic without a GPU: csrc/random_field_kernel.cuh compiled as host C++
(tests/csrc_emulation/cuda_shim.h stubs the CUDA built-ins) and run one emulated thread at a
time, against the reference. Covers the quad split, ragged and whole quads (vector stores),
strided and channels-last input, the vector-load path of colour-only settings, crops, both
paddings, uint8/float in and out. Concurrency is not emulated: races are for a real GPU."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from sslfast.augment import IMAGENET_MEAN, IMAGENET_STD, PRESETS, RandomFieldAugment
from sslfast.augment import params as P
from sslfast.augment.random_field import prepare_apply
from sslfast.ops.random_field import random_field_apply

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the emulation")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("emu") / "random_field_emulation")
    src = os.path.join(HERE, "csrc_emulation", "random_field_emulation.cpp")
    out = subprocess.run(["g++", "-std=c++17", "-O2", "-Wall", "-Werror", "-o", exe, src],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return exe


def _run(exe, workdir, images, fields, base, out_size, flags, luma, mean, std, out_dtype):
    """What csrc/random_field.cu's host code hands the kernel, through files."""
    x = images if images.dtype in (torch.uint8, torch.float32) else images.float()
    # the storage in memory order, with the view's strides (covers permuted inputs)
    flat = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    flat.numpy().tofile(workdir / "x.bin")
    fields.contiguous().numpy().tofile(workdir / "fields.bin")
    base.contiguous().numpy().tofile(workdir / "base.bin")
    for name, t in (("luma", luma), ("mean", mean), ("std", std)):
        (t if t is not None else torch.zeros(1)).numpy().astype(np.float32).tofile(workdir / f"{name}.bin")
    b, c, h, w = x.shape
    meta = [b, c, h, w, *out_size, *fields.shape[-2:], flags, int(x.dtype == torch.uint8),
            int(out_dtype == torch.uint8), int(luma is not None), int(mean is not None), *x.stride()]
    (workdir / "meta.txt").write_text(" ".join(str(int(v)) for v in meta))
    res = subprocess.run([exe, str(workdir)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    dtype = np.uint8 if out_dtype == torch.uint8 else np.float32
    return torch.from_numpy(np.fromfile(workdir / "out.bin", dtype=dtype).reshape(b, c, *out_size))


CASES = [
    # (name, images shape, dtype, layout, preset, out_size, crop, padding, output)
    ("odd-1x1", (2, 3, 1, 1), torch.uint8, "bchw", "strong", None, False, "reflect", "unit"),
    ("odd-3x5-zeros", (2, 3, 3, 5), torch.float32, "bchw", "strong", None, False, "zeros", "normalised"),
    ("17x31-uint8-out", (2, 3, 17, 31), torch.uint8, "bchw", "medium", None, False, "reflect", "uint8"),
    ("whole-quads-24x32", (3, 3, 24, 32), torch.uint8, "bchw", "strong", None, False, "reflect", "normalised"),
    ("channels-last", (2, 3, 20, 28), torch.uint8, "bhwc", "strong", None, False, "zeros", "unit"),
    ("grey", (2, 1, 13, 16), torch.uint8, "bchw", "geometry", None, False, "reflect", "normalised"),
    ("colour-only-vector-loads", (2, 3, 9, 16), torch.uint8, "bchw", "colour", None, False, "reflect", "unit"),
    ("colour-only-float", (2, 3, 9, 18), torch.float32, "bchw", "colour", None, False, "reflect", "uint8"),
    ("crop-flip-resize", (3, 3, 30, 41), torch.uint8, "bchw", "medium", (12, 20), True, "reflect", "normalised"),
    ("crop-ragged", (2, 3, 30, 41), torch.float32, "bhwc", "strong", (13, 7), True, "zeros", "unit"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_emulated_cuda_kernel_matches_reference(emulator, tmp_path, case):
    name, shape, dtype, layout, preset, out_size, crop, padding, output = case
    gen = torch.Generator().manual_seed(len(name))
    if layout == "bhwc":
        b, c, h, w = shape
        raw = torch.randint(0, 256, (b, h, w, c), generator=gen, dtype=torch.uint8)
        images = raw.permute(0, 3, 1, 2)
    else:
        images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if dtype != torch.uint8:
        images = images.to(dtype) / 255
    if preset == "geometry":
        strengths = {k: v for k, v in PRESETS["strong"].items() if k in ("translate", "rotate", "scale", "shear")}
        strengths.update(brightness=0.2, contrast=0.2, length_scale=0.3)
    elif preset == "colour":
        strengths = {k: PRESETS["strong"][k] for k in ("brightness", "contrast", "saturation", "hue")}
    else:
        strengths = dict(PRESETS[preset])
    aug = RandomFieldAugment(**strengths, generator=1, global_jitter={"contrast": 0.3})
    params = aug.sample_params(images, out_size=out_size)
    if crop:
        b, _, h, w = images.shape
        boxes = torch.tensor([[2, 3, h - 5, w - 9], [0, 0, h, w], [5, 1, 9, 30]][:b], dtype=torch.float32)
        params.base = P.crop_base(boxes, out_size, torch.tensor([True, False, True][:b]))
    kw = {"padding": padding}
    if output == "normalised":
        kw.update(mean=IMAGENET_MEAN, std=IMAGENET_STD) if images.shape[1] == 3 else kw.update(mean=(0.5,), std=(0.2,))
    if output == "uint8":
        kw["out_dtype"] = torch.uint8
    args = prepare_apply(images, params, **kw)
    if preset == "colour" and not crop:
        assert args[4] & P.F_NO_RESAMPLE  # the vector-load path is the one under test
    ref = random_field_apply(*args, backend="reference")
    out = _run(emulator, tmp_path, *args)
    if output == "uint8":
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01
    else:
        scale = 1 / 0.2 if output == "normalised" else 1.0
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * scale)
