"""SSLViews (SimCLR / BYOL / Barlow Twins views, multi-crop, random fields) and preview-aug."""
import math
import subprocess
import sys

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from sslfast.augment import RECIPES, SSLViews
from sslfast.augment.views import gaussian_blur, random_resized_crop_boxes
from sslfast.data.recipes import LOCAL_SCALE, RECIPES as LOADER_RECIPES, ViewSpec


def _batch(seed=0, shape=(6, 3, 40, 52)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_views_shapes_dtypes_and_differences(recipe):
    images = _batch()
    views = SSLViews(recipe, crop_size=24, local_crops=3, local_crop_size=12, random_fields="medium", generator=1)(images)
    assert [tuple(v.shape) for v in views] == [(6, 3, 24, 24)] * 2 + [(6, 3, 12, 12)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert (views[0] - views[1]).abs().mean() > 0.1  # two different views of each image


def test_views_reproduce_under_a_seed_and_agree_across_backends():
    images = _batch(1)
    a = SSLViews("byol", crop_size=20, random_fields="strong", generator=5, backend="reference")(images)
    b = SSLViews("byol", crop_size=20, random_fields="strong", generator=5)(images)
    c = SSLViews("byol", crop_size=20, random_fields="strong", generator=6)(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4 / 0.225)
    assert (a[0] - c[0]).abs().mean() > 0.1


def test_random_fields_switch_on():
    images = _batch(2)
    plain = SSLViews("simclr", crop_size=24, generator=3)(images)
    fields = SSLViews("simclr", crop_size=24, generator=3, random_fields={"translate": 0.05, "rotate": 10.0})(images)
    assert (plain[0] - fields[0]).abs().mean() > 0.05


def test_crop_flip_only_recipe_is_an_exact_crop():
    """No colour, no blur, no fields: each view is a bilinear resize of a box, here a box of the
    view's own size (scale pinned to the ratio of areas), i.e. an exact copy of input pixels."""
    images = _batch(3, (4, 3, 30, 30))
    area = (10 * 10) / (30 * 30)
    recipe = ViewSpec(scale=(area, area), ratio=(1.0, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0,
                        blur_p=0.0)
    view = SSLViews([recipe], views=1, crop_size=10, mean=None, std=None, generator=0)(images)[0]
    for b in range(4):
        found = any(torch.equal(view[b], patch) or torch.equal(view[b], patch.flip(-1))
                    for top in range(21) for left in range(21)
                    for patch in [images[b, :, top:top + 10, left:left + 10].float() / 255])
        assert found


def test_grayscale_and_solarize():
    images = _batch(4)
    grey = ViewSpec(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)
    view = SSLViews([grey], views=1, crop_size=16, mean=None, std=None, generator=0)(images)[0]
    torch.testing.assert_close(view[:, 0], view[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(view[:, 1], view[:, 2], rtol=0, atol=1e-6)
    solar = ViewSpec(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=1.0)
    base = ViewSpec(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    s = SSLViews([solar], views=1, crop_size=16, mean=None, std=None, generator=0)(images)[0]
    p = SSLViews([base], views=1, crop_size=16, mean=None, std=None, generator=0)(images)[0]
    torch.testing.assert_close(s, torch.where(p >= 0.5, 1 - p, p), rtol=0, atol=1e-6)


def test_gaussian_blur_matches_torchvision():
    x = torch.rand(3, 3, 17, 20, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([0.7, 0.0, 1.6])
    out = gaussian_blur(x, sigma, radius=6)
    for b in (0, 2):
        expected = TF.gaussian_blur(x[b:b + 1], kernel_size=[13, 13], sigma=[float(sigma[b])] * 2)
        torch.testing.assert_close(out[b:b + 1], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=0)


def test_random_resized_crop_boxes():
    gen = torch.Generator().manual_seed(6)
    boxes = random_resized_crop_boxes(2000, 50, 80, (0.08, 1.0), (3 / 4, 4 / 3), generator=gen)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 50).all() and (left + w <= 80).all()
    frac = h * w / (50 * 80)
    assert frac.min() >= 0.06 and frac.max() <= 1.0
    assert torch.equal(boxes, boxes.round())
    # impossible ratio: torchvision's centre-crop fallback
    wide = random_resized_crop_boxes(4, 10, 100, (0.9, 1.0), (1.0, 1.0), generator=gen)
    assert torch.equal(wide, torch.tensor([[0.0, 45.0, 10.0, 10.0]]).expand(4, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="recipe must be one of"):
        SSLViews("dino-v9")
    with pytest.raises(ValueError, match="views must be >= 1"):
        SSLViews(views=0)
    with pytest.raises(ValueError, match="local_crop_scale"):
        SSLViews(local_crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="backend must be one of"):
        SSLViews(backend="gpu")
    with pytest.raises(TypeError, match="random_fields must be None"):
        SSLViews(random_fields=3.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        SSLViews(random_fields="extreme")
    with pytest.raises(ValueError, match="RGB"):
        SSLViews(crop_size=8)(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4-D"):
        SSLViews(crop_size=8)(torch.zeros(3, 16, 16, dtype=torch.uint8))


def test_preview_writes_a_grid(tmp_path):
    from PIL import Image

    from sslfast.augment import preview

    src = tmp_path / "photo.png"
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 60), indexing="ij")
    rgb = torch.stack((yy, xx, (yy * xx).sqrt()), -1).mul(255).round().to(torch.uint8)
    Image.fromarray(rgb.numpy()).save(src)
    out = tmp_path / "grid.png"
    assert preview.main([str(src), "--out", str(out), "--size", "32", "--views", "2", "--presets", "mild,strong"]) == 0
    with Image.open(out) as grid:
        assert grid.width > 200 and grid.height > 100
    with pytest.raises(SystemExit):
        preview.main([str(tmp_path / "missing.jpg"), "--out", str(out)])
    with pytest.raises(SystemExit):
        preview.main([str(src), "--presets", "wild"])


def test_preview_checkerboard_and_loader():
    from sslfast.augment.preview import checkerboard

    board = checkerboard(16, squares=4)
    assert board.shape == (1, 3, 16, 16) and board.dtype == torch.uint8
    assert board[0, 0, 0, 0] == 0 and board[0, 0, 0, 4] == 255 and math.isclose(board.float().mean().item(), 127.5)


def test_an_int_seed_gives_new_views_every_epoch_in_dataloader_workers():
    """DataLoader workers are new processes every epoch (persistent_workers=False): an int seed
    must not restart the same stream in each, or every epoch repeats the previous one's views."""
    code = (
        "import torch\n"
        "from torch.utils.data import DataLoader, Dataset\n"
        "from sslfast.augment import RandomFieldAugment, SSLViews\n"
        "torch.manual_seed(0)\n"
        "img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))\n"
        "for make in (lambda: RandomFieldAugment.preset('medium', generator=0, backend='reference'),\n"
        "             lambda: SSLViews('simclr', crop_size=12, generator=0, backend='reference')):\n"
        "    aug = make()\n"
        "    class D(Dataset):\n"
        "        def __len__(self): return 2\n"
        "        def __getitem__(self, i):\n"
        "            out = aug(img)\n"
        "            return out[0] if isinstance(out, torch.Tensor) else out[0][0]\n"
        "    loader = DataLoader(D(), batch_size=None, num_workers=1, multiprocessing_context='fork')\n"
        "    epoch0, epoch1 = list(loader), list(loader)\n"
        "    assert not torch.equal(epoch0[0], epoch0[1]), 'one worker repeated its own views'\n"
        "    assert not torch.equal(epoch0[0], epoch1[0]), f'{type(aug).__name__}: epoch 1 repeated epoch 0'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_views_and_the_loader_share_one_recipe_definition():
    """One set of recipes and one local-crop default for SSLViews and DaliSSLLoader."""
    for name in LOADER_RECIPES:
        assert SSLViews(name).recipe is LOADER_RECIPES[name]
    make = SSLViews("byol", crop_size=16, local_crops=1, local_crop_size=8)
    assert make.local_view.scale == LOCAL_SCALE and make.local_view.size == 8
    assert SSLViews(local_crop_scale=(0.1, 0.2)).local_view.scale == (0.1, 0.2)
    # a ViewSpec's own size wins over crop_size, as in the loader
    views = SSLViews([ViewSpec(size=10)], views=2, crop_size=16, generator=0)(_batch())
    assert [tuple(v.shape[-2:]) for v in views] == [(10, 10), (10, 10)]


def test_an_empty_batch_gives_empty_views():
    """RandomFieldAugment passes B = 0 through; SSLViews's blur (a grouped conv) used to fail."""
    views = SSLViews("byol", crop_size=8, local_crops=1, local_crop_size=4, generator=0)(_batch()[:0])
    assert [tuple(v.shape) for v in views] == [(0, 3, 8, 8)] * 2 + [(0, 3, 4, 4)]


def test_random_fields_take_the_loaders_values():
    """random_fields= means the same in SSLViews and DaliSSLLoader: None/False off, True the
    "mild" preset, a preset name, a dict of strengths."""
    assert SSLViews(random_fields=False).field_config is None
    assert SSLViews(random_fields=True).field_config == SSLViews(random_fields="mild").field_config
    with pytest.raises(TypeError, match="random_fields must be"):
        SSLViews(random_fields=1)
