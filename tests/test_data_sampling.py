"""Epoch order, sharding and augmentation parameters (sslfast.data.sampling, .recipes)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslfast.data import RECIPES, Recipe, ShardPlan, ViewSpec, get_recipe
from sslfast.data.recipes import LOCAL_SCALE, view_specs
from sslfast.data.sampling import blur_window, epoch_order, random_resized_crop, uniforms, view_params


@given(n=st.integers(1, 300), batch=st.integers(1, 17), shards=st.integers(1, 5),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 1000))
def test_every_sample_exactly_once_per_epoch_across_shards(n, batch, shards, seed, epoch):
    plans = [ShardPlan(n, batch, shards, r, drop_last=False, seed=seed) for r in range(shards)]
    per_shard = [p.batches(epoch) for p in plans]
    # the same number of batches on every shard (no rank waits for another at the epoch's end)
    assert {len(b) for b in per_shard} == {len(plans[0])} == {math.ceil(n / (batch * shards))}
    seen = np.concatenate([b for batches in per_shard for b in batches])
    assert len(seen) == n and sorted(seen.tolist()) == list(range(n))
    for batches in per_shard:
        assert all(len(b) == batch for b in batches[:-1])
    # the last global step is split as evenly as possible
    rest = n - (len(plans[0]) - 1) * batch * shards
    assert sorted(len(b[-1]) for b in per_shard) == sorted(
        rest // shards + (1 if r < rest % shards else 0) for r in range(shards))
    assert sum(p.samples_per_epoch() for p in plans) == n


@given(n=st.integers(1, 300), batch=st.integers(1, 17), shards=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_drop_last_gives_full_batches_without_repeats(n, batch, shards, seed):
    plans = [ShardPlan(n, batch, shards, r, drop_last=True, seed=seed) for r in range(shards)]
    full = n // (batch * shards)
    seen = []
    for p in plans:
        batches = p.batches(epoch=3)
        assert len(p) == len(batches) == full
        assert all(len(b) == batch for b in batches)
        seen += [i for b in batches for i in b.tolist()]
    assert len(seen) == len(set(seen)) == full * batch * shards


def test_epoch_order_is_a_fresh_permutation_each_epoch_and_shared_by_seed():
    orders = [epoch_order(1000, seed=7, epoch=e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(1000))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(orders[1], epoch_order(1000, seed=7, epoch=1))
    assert not np.array_equal(orders[0], epoch_order(1000, seed=8, epoch=0))
    np.testing.assert_array_equal(epoch_order(10, seed=7, epoch=1, shuffle=False), np.arange(10))
    # positions are uniform: the mean position of each sample over many epochs is ~ (n-1)/2
    n, epochs = 20, 2000
    position = np.zeros(n)
    for e in range(epochs):
        position[epoch_order(n, 0, e)] += np.arange(n)
    np.testing.assert_allclose(position / epochs, (n - 1) / 2, atol=0.6)


def test_uniforms_are_uniform_independent_and_pure():
    idx = np.arange(20000)
    u = uniforms(3, 5, idx, 2, 4)
    assert u.shape == (20000, 4) and u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(u.var(axis=0), 1 / 12, atol=0.003)
    corr = np.corrcoef(np.column_stack([u, uniforms(3, 6, idx, 2, 1), uniforms(3, 5, idx, 3, 1),
                                        uniforms(4, 5, idx, 2, 1), uniforms(3, 5, idx + 1, 2, 1)]).T)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.03
    np.testing.assert_array_equal(uniforms(3, 5, idx[[7, 3]], 2, 4), u[[7, 3]])


@given(h=st.integers(1, 600), w=st.integers(1, 600), lo=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_random_resized_crop_stays_inside_the_image(h, w, lo, seed):
    n = 64
    u = uniforms(seed, 0, np.arange(n), 0, 40)
    crop = random_resized_crop(u, np.full(n, h), np.full(n, w), (lo, 1.0), (3 / 4, 4 / 3))
    top, left, ch, cw = crop.T
    assert (ch >= 1).all() and (cw >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()


def test_random_resized_crop_follows_scale_and_ratio():
    n = 20000
    u = uniforms(0, 0, np.arange(n), 0, 40)
    crop = random_resized_crop(u, np.full(n, 375), np.full(n, 500), (0.08, 1.0), (3 / 4, 4 / 3))
    area = crop[:, 2] * crop[:, 3] / (375 * 500)
    aspect = crop[:, 3] / crop[:, 2]
    assert area.min() >= 0.075 and area.max() <= 1.0
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35
    # torchvision's RandomResizedCrop.get_params on the same image size, sampled with torch
    torch = pytest.importorskip("torch")
    from torchvision.transforms import RandomResizedCrop
    from PIL import Image

    torch.manual_seed(0)
    img = Image.new("RGB", (500, 375))
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    ref_area = ref[:, 2] * ref[:, 3] / (375 * 500)
    assert abs(area.mean() - ref_area.mean()) < 0.015
    assert abs(np.median(aspect) - np.median(ref[:, 3] / ref[:, 2])) < 0.03
    # the position is uniform over the free range
    free = 375 - crop[:, 2]
    rel = crop[:, 0][free > 0] / free[free > 0]
    assert abs(rel.mean() - 0.5) < 0.02


def test_random_resized_crop_falls_back_to_a_centred_crop():
    u = uniforms(0, 0, np.arange(4), 0, 40)
    # a 1000 x 10 strip cannot host a 3/4..4/3 crop of >= 50% area: centred, ratio-clamped crop
    crop = random_resized_crop(u, np.full(4, 10), np.full(4, 1000), (0.5, 1.0), (3 / 4, 4 / 3))
    np.testing.assert_array_equal(crop, np.tile([0, 493, 10, 13], (4, 1)))


def test_view_params_are_a_pure_function_of_the_sample():
    spec = RECIPES["byol"].views[1]
    sizes = np.array([[375, 500], [100, 80], [64, 64], [33, 200]])
    idx = np.array([11, 3, 500, 7])
    full = view_params(spec, sizes, idx, seed=1, epoch=2, view=1)
    part = view_params(spec, sizes[[2, 0]], idx[[2, 0]], seed=1, epoch=2, view=1)
    np.testing.assert_array_equal(full.packed()[[2, 0]], part.packed())
    other_view = view_params(spec, sizes, idx, seed=1, epoch=2, view=0)
    other_epoch = view_params(spec, sizes, idx, seed=1, epoch=3, view=1)
    assert not np.array_equal(full.crop, other_view.crop) and not np.array_equal(full.crop, other_epoch.crop)


def test_view_params_follow_the_probabilities_and_ranges():
    spec = ViewSpec(flip_p=0.3, jitter_p=0.6, brightness=0.4, contrast=0.2, saturation=0.3, hue=0.1,
                    grayscale_p=0.25, blur_p=0.4, blur_sigma=(0.5, 1.5), solarize_p=0.15)
    n = 40000
    p = view_params(spec, np.tile([200, 300], (n, 1)), np.arange(n), seed=9, epoch=0, view=0)
    tol = 4 * math.sqrt(0.25 / n)
    assert abs(p.flip.mean() - 0.3) < tol and abs(p.solarize.mean() - 0.15) < tol
    blurred = p.blur_sigma > 0
    assert abs(blurred.mean() - 0.4) < tol
    assert p.blur_sigma[blurred].min() >= 0.5 and p.blur_sigma[blurred].max() <= 1.5
    np.testing.assert_array_equal(p.blur_window, blur_window(p.blur_sigma))
    assert (p.blur_window[~blurred] == 1).all() and (p.blur_window % 2 == 1).all()
    b, c, s, hue = p.colour.T
    jittered = (b != 1) | (c != 1) | (hue != 0)
    assert abs(jittered.mean() - 0.6) < tol
    assert b.min() >= 0.6 and b.max() <= 1.4 and c.min() >= 0.8 and c.max() <= 1.2
    assert hue.min() >= -36.0 and hue.max() <= 36.0
    assert abs((s == 0).mean() - 0.25) < tol  # grayscale folds into saturation 0
    assert s[jittered & (s != 0)].min() >= 0.7 and s.max() <= 1.3
    assert (s[~jittered & (s != 0)] == 1).all()


def test_blur_window_covers_three_sigma():
    np.testing.assert_array_equal(blur_window(np.array([0.0, 0.1, 0.34, 1.0, 2.0])), [1, 3, 5, 7, 13])


def test_recipes():
    simclr, byol = get_recipe("simclr"), get_recipe("byol")
    assert simclr.views[0].brightness == 0.8 and simclr.views[0].hue == 0.2 and simclr.views[0].blur_p == 0.5
    assert [v.blur_p for v in byol.views] == [1.0, 0.1] and [v.solarize_p for v in byol.views] == [0.0, 0.2]
    assert get_recipe("barlowtwins") == byol
    specs = view_specs("byol", 3, 224, 2, 96)
    assert [s.size for s in specs] == [224, 224, 224, 96, 96]
    assert specs[2] == specs[0] and specs[3].scale == LOCAL_SCALE and specs[3].blur_p == 1.0
    custom = Recipe((ViewSpec(size=64), ViewSpec(solarize_p=1.0)), local=ViewSpec(scale=(0.1, 0.2)))
    assert [(s.size, s.solarize_p, s.scale) for s in view_specs(custom, 2, 32, 1, 16)] == [
        (64, 0.0, (0.08, 1.0)), (32, 1.0, (0.08, 1.0)), (16, 0.0, (0.1, 0.2))]
    assert get_recipe(ViewSpec()) == Recipe((ViewSpec(),))


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": (0.5, 0.2)}, "ViewSpec.scale"), ({"scale": (0.0, 1.0)}, "ViewSpec.scale"),
    ({"ratio": (2.0, 1.0)}, "ViewSpec.ratio"), ({"flip_p": 1.5}, "ViewSpec.flip_p"),
    ({"blur_p": float("nan")}, "ViewSpec.blur_p"), ({"hue": 0.7}, "ViewSpec.hue"),
    ({"brightness": -0.1}, "ViewSpec.brightness"), ({"std": (1.0, 0.0, 1.0)}, "ViewSpec.std"),
    ({"mean": (0.5, 0.5)}, "ViewSpec.mean"), ({"size": 0}, "ViewSpec.size"),
    ({"blur_sigma": (0.0, 1.0)}, "ViewSpec.blur_sigma"),
])
def test_view_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewSpec(**kwargs)


def test_recipe_errors():
    with pytest.raises(ValueError, match="recipe must be one of"):
        get_recipe("moco-v9")
    with pytest.raises(TypeError, match="recipe must be"):
        get_recipe(3)
    with pytest.raises(TypeError, match="Recipe.views"):
        Recipe(())
