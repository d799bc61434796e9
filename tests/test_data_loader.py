"""DaliSSLLoader end to end on real JPEG/PNG files, on DALI's CPU pipeline and on the PIL/PyTorch
fallback: shapes, labels, exact epochs across shards, reproducibility, resume, bad files."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sslfast.data import CorruptImageError, DaliSSLLoader, SkippedImageWarning, ViewSpec, scan_images
from sslfast.data.dali_backend import dali_unavailable_reason

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_files import bad_idat_png, corrupt_files  # noqa: E402

HAS_DALI = dali_unavailable_reason() is None
BACKENDS = [pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")),
            "torch"]
N_IMAGES, N_CLASSES = 23, 3


def _photo(h, w, seed):
    """A smooth image with some texture: resampling differences stay small, crops differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.03, 0.15, size=3)
    channels = [127 + 90 * np.sin(f[c] * xx + rng.uniform(0, 6)) * np.cos(f[(c + 1) % 3] * yy) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root, n=N_IMAGES, classes=N_CLASSES):
    rng = np.random.default_rng(123)
    for k in range(n):
        folder = os.path.join(root, f"class{k % classes}")
        os.makedirs(folder, exist_ok=True)
        img = _photo(int(rng.integers(40, 90)), int(rng.integers(40, 90)), k)
        if k == 4:
            img.save(os.path.join(folder, f"{k:03d}.png"))
        elif k == 5:
            img.convert("L").save(os.path.join(folder, f"{k:03d}.jpg"), quality=95)  # grayscale JPEG
        elif k == 6:
            exif = Image.Exif()
            exif[0x0112] = 6  # decoders rotate it: the crop sampler must know the rotated size
            img.save(os.path.join(folder, f"{k:03d}.jpg"), quality=95, exif=exif)
        else:
            img.save(os.path.join(folder, f"{k:03d}.jpg"), quality=95)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("images")))


def _loader(root, backend, **kwargs):
    options = dict(batch_size=5, crop_size=32, device="cpu", num_threads=2, cache_dir=False, backend=backend)
    options.update(kwargs)
    return DaliSSLLoader(root, **options)


def _epoch(loader):
    return [{"views": [v.clone() for v in b["views"]], "label": b["label"], "index": b["index"]} for b in loader]


def _by_index(batches):
    """sample index -> list of its views."""
    out = {}
    for b in batches:
        for k, i in enumerate(b["index"].tolist()):
            out[i] = [v[k] for v in b["views"]]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_batches_have_the_right_shapes_labels_and_counts(dataset, backend, dtype):
    loader = _loader(dataset, backend, views=2, local_crops=2, local_crop_size=16, dtype=dtype, recipe="byol")
    images = scan_images(dataset, cache_dir=False)
    assert loader.backend == ("dali-cpu" if backend == "dali" else "torch")
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 5 and [len(b["index"]) for b in batches] == [5, 5, 5, 5, 3]
    for b in batches:
        n = len(b["index"])
        assert [tuple(v.shape) for v in b["views"]] == [(n, 3, 32, 32)] * 2 + [(n, 3, 16, 16)] * 2
        assert all(v.dtype == dtype and v.device.type == "cpu" for v in b["views"])
        assert b["index"].dtype == torch.int64 and b["label"].dtype == torch.int64
        for i, label in zip(b["index"].tolist(), b["label"].tolist()):
            assert os.path.basename(os.path.dirname(images.paths[i])) == f"class{label}"
    if dtype == torch.float32:  # normalised: roughly zero-mean, unit-scale
        pixels = torch.cat([v.flatten() for b in batches for v in b["views"]])
        assert -1.0 < pixels.mean() < 1.0 and 0.4 < pixels.std() < 2.0
    assert loader.epoch == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_sample_exactly_once_per_epoch_across_two_shards(dataset, backend):
    shards = [_loader(dataset, backend, batch_size=4, shard_id=r, num_shards=2, seed=3) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3  # 23 = 2 global batches of 8, then 4 + 3
    orders = []
    for epoch in range(2):
        runs = [_epoch(s) for s in shards]
        sizes = [[len(b["index"]) for b in run] for run in runs]
        assert sizes == [[4, 4, 4], [4, 4, 3]]
        seen = torch.cat([b["index"] for run in runs for b in run]).tolist()
        assert sorted(seen) == list(range(N_IMAGES))
        orders.append(seen)
    assert orders[0] != orders[1] and all(s.epoch == 2 for s in shards)
    dropped = [_loader(dataset, backend, batch_size=4, shard_id=r, num_shards=2, drop_last=True) for r in range(2)]
    runs = [_epoch(s) for s in dropped]
    assert [[len(b["index"]) for b in run] for run in runs] == [[4, 4], [4, 4]]
    seen = torch.cat([b["index"] for run in runs for b in run]).tolist()
    assert len(set(seen)) == 16


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_differ_and_seeds_reproduce(dataset, backend):
    first = _epoch(_loader(dataset, backend, seed=11))
    again = _epoch(_loader(dataset, backend, seed=11))
    other = _epoch(_loader(dataset, backend, seed=12))
    for a, b in zip(first, again):
        assert torch.equal(a["index"], b["index"])
        assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    for b in first:
        assert (b["views"][0] - b["views"][1]).abs().mean() > 0.1
    mine, theirs = _by_index(first), _by_index(other)
    assert all((mine[i][0] - theirs[i][0]).abs().mean() > 0.05 for i in range(N_IMAGES))


@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
def test_augmentation_does_not_depend_on_sharding_or_batch_size(dataset):
    single = _by_index(_epoch(_loader(dataset, "dali", batch_size=7, seed=5, recipe="byol")))
    sharded = {}
    for r in range(2):
        sharded.update(_by_index(_epoch(_loader(dataset, "dali", batch_size=3, seed=5, recipe="byol",
                                                shard_id=r, num_shards=2))))
    assert sorted(sharded) == sorted(single) == list(range(N_IMAGES))
    for i in range(N_IMAGES):
        assert all(torch.equal(a, b) for a, b in zip(single[i], sharded[i]))


@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_dali_and_fallback_compute_the_same_views(dataset, recipe):
    kwargs = dict(seed=2, recipe=recipe, local_crops=1, local_crop_size=24)
    dali = _by_index(_epoch(_loader(dataset, "dali", **kwargs)))
    fallback = _by_index(_epoch(_loader(dataset, "torch", **kwargs)))
    assert sorted(dali) == sorted(fallback)
    diffs = torch.cat([(a - b).abs().flatten() for i in dali for a, b in zip(dali[i], fallback[i])])
    # same crops, colours, blur and flips; DALI's and PIL's antialiased resampling differ by a
    # grey level here and there (1/255/0.225 = 0.017 in normalised units)
    assert diffs.mean() < 0.01 and (diffs > 0.1).float().mean() < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_gives_the_batches_of_an_uninterrupted_run(dataset, backend):
    reference = _loader(dataset, backend, seed=4)
    _epoch(reference)
    second_epoch = _epoch(reference)
    interrupted = _loader(dataset, backend, seed=4)
    _epoch(interrupted)
    for k, _ in enumerate(interrupted):
        if k == 1:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 2
    resumed = _loader(dataset, backend, seed=4)
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(second_epoch) - 2 and resumed.epoch == 2
    for a, b in zip(rest, second_epoch[2:]):
        assert torch.equal(a["index"], b["index"]) and all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    jumped = _loader(dataset, backend, seed=4)
    jumped.set_epoch(1)
    assert all(torch.equal(a["views"][1], b["views"][1]) for a, b in zip(_epoch(jumped), second_epoch))
    with pytest.raises(ValueError, match="different settings seed=4"):
        _loader(dataset, backend, seed=5).load_state_dict(state)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(120)
def test_breaking_out_of_an_epoch_then_iterating_again_restarts_it(dataset, backend):
    loader = _loader(dataset, backend, batch_size=3, prefetch=2)
    first = next(iter(loader))  # abandoned with batches in flight
    for k, _ in enumerate(loader):  # abandons the first iterator with batches in flight
        if k == 2:
            break
    full = _epoch(loader)
    assert torch.equal(full[0]["index"], first["index"]) and torch.equal(full[0]["views"][0], first["views"][0])
    assert sorted(torch.cat([b["index"] for b in full]).tolist()) == list(range(N_IMAGES))
    assert loader.epoch == 1
    loader.close()
    assert len(_epoch(loader)) == len(loader)  # runs again after close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(180)
def test_corrupt_files_are_skipped_with_warnings_and_never_hang(tmp_path, backend):
    root = make_dataset(str(tmp_path / "data"), n=9)
    bad = corrupt_files(os.path.join(root, "class1"))  # caught by the up-front scan
    os.remove(bad["empty"])
    garbled = bad_idat_png(os.path.join(root, "class2", "garbled.png"))  # only decoding finds this one
    with pytest.warns(SkippedImageWarning) as record:
        loader = _loader(root, backend, batch_size=4, seed=1)
    assert bad["truncated"] in str(record[0].message) and bad["text"] in str(record[0].message)
    n_ok = 9 + 1  # the 9 photos and corrupt_files' ok.jpg; garbled.png still listed
    assert len(loader.images) == n_ok + 1
    with pytest.warns(SkippedImageWarning, match="garbled.png"):
        seen = torch.cat([b["index"] for b in loader]).tolist()
    assert len(seen) == n_ok and loader.images.paths.index(garbled) not in seen
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImageWarning)  # known bad files are not fed again
        batches = list(loader)
    assert len(batches) == len(loader) and sum(len(b["index"]) for b in batches) == n_ok
    assert any("garbled.png" in path for path, _ in loader.skipped)
    with pytest.raises(CorruptImageError, match="truncated.jpg|notes.jpg|cut.png"):
        _loader(root, backend, on_error="raise")  # the scan raises on the first bad file
    strict_root = make_dataset(str(tmp_path / "strict"), n=5)
    bad_idat_png(os.path.join(strict_root, "class1", "garbled.png"))
    strict = _loader(strict_root, backend, batch_size=4, on_error="raise")  # passes the scan...
    with pytest.raises(CorruptImageError, match="garbled.png"):  # ...and raises while decoding
        list(strict)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(120)
def test_a_batch_left_empty_by_a_bad_file_keeps_its_place(tmp_path, backend):
    root = make_dataset(str(tmp_path / "data"), n=4)
    bad_idat_png(os.path.join(root, "class0", "garbled.png"))
    loader = _loader(root, backend, batch_size=1, shuffle=False, dtype=torch.uint8)
    with pytest.warns(SkippedImageWarning, match="garbled.png"):
        batches = _epoch(loader)
    assert len(batches) == len(loader) == 5  # every rank keeps the same number of batches
    assert [len(b["index"]) for b in batches] == [1, 1, 0, 1, 1]  # sorted paths: class0/garbled.png is third
    assert [tuple(v.shape) for v in batches[2]["views"]] == [(0, 3, 32, 32)] * 2
    assert batches[2]["views"][0].dtype == torch.uint8 and batches[2]["label"].shape == (0,)


@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
def test_fallback_workers_start_cleanly_next_to_a_dali_pipeline(dataset):
    from sslfast.data.torch_backend import worker_context

    with _loader(dataset, "dali") as dali:
        next(iter(dali))  # DALI's threads and ours run now: forking this process is unsafe
        assert worker_context().get_start_method() in ("forkserver", "spawn")
        with _loader(dataset, "torch", num_threads=2) as fallback:
            assert [len(b["index"]) for b in fallback] == [5, 5, 5, 5, 3]


def test_without_dali_the_fallback_runs(dataset, monkeypatch):
    from sslfast.data import dali_backend

    monkeypatch.setattr(dali_backend, "dali_unavailable_reason", lambda: "NVIDIA DALI is not installed (test)")
    loader = _loader(dataset, "auto")
    assert loader.backend == "torch" and len(_epoch(loader)) == len(loader)
    with pytest.raises(ImportError, match="backend='dali': NVIDIA DALI is not installed"):
        _loader(dataset, "dali")


def test_fallback_when_dali_cannot_be_imported_at_all(dataset):
    code = f"""
import sys
sys.modules["nvidia.dali"] = None  # any import of DALI now raises ImportError
from sslfast.data import DaliSSLLoader
loader = DaliSSLLoader({dataset!r}, batch_size=8, crop_size=24, device="cpu", num_threads=1, cache_dir=False)
sizes = [len(b["index"]) for b in loader]
print(loader.backend, sizes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch [8, 8, 7]"


def test_importing_sslfast_data_stays_light():
    code = ("import sys, sslfast.data, torch; "
            "heavy = [m for m in ('nvidia.dali', 'numba', 'triton', 'PIL.Image') if m in sys.modules]; "
            "assert not heavy, heavy; assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


class _NoiseField(torch.nn.Module):
    """Stand-in for sslfast.augment.RandomFieldAugment: random per-pixel brightness noise, with
    the three output conventions the loader accepts."""

    def __init__(self, output="uint8", mean=None, std=None):
        super().__init__()
        self.output, self.mean, self.std = output, mean, std

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
        noisy = (x.to(torch.float32) + torch.randint(-20, 21, x.shape, dtype=torch.float32)).clamp(0, 255)
        if self.output == "uint8":
            return noisy.to(torch.uint8)
        if self.output == "unit":
            return noisy / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        return (noisy / 255.0 - mean) / torch.tensor(self.std).view(1, 3, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_fields_module_runs_after_augmentation_reproducibly(dataset, backend):
    plain = _by_index(_epoch(_loader(dataset, backend, seed=8)))
    fields = _by_index(_epoch(_loader(dataset, backend, seed=8, random_fields=_NoiseField())))
    again = _by_index(_epoch(_loader(dataset, backend, seed=8, random_fields=_NoiseField())))
    unit = _by_index(_epoch(_loader(dataset, backend, seed=8, random_fields=_NoiseField("unit"))))
    spec = ViewSpec()
    done = _by_index(_epoch(_loader(dataset, backend, seed=8,
                                    random_fields=_NoiseField("normalised", spec.mean, spec.std))))
    for i in range(N_IMAGES):
        assert fields[i][0].dtype == torch.float32
        assert all(torch.equal(a, b) for a, b in zip(fields[i], again[i]))
        diff = (fields[i][0] - plain[i][0]).abs()
        assert 0.01 < diff.mean() < 0.5  # noise of +-20 grey levels, normalised by the same mean/std
        # the same noise through the three output conventions lands on the same normalised pixels
        for other in (unit, done):
            torch.testing.assert_close(other[i][0], fields[i][0], rtol=0, atol=1e-5)


def test_random_fields_output_conventions_with_raw_pixels(dataset):
    raw = _by_index(_epoch(_loader(dataset, "torch", seed=8, dtype=torch.uint8, random_fields=_NoiseField())))
    unit = _by_index(_epoch(_loader(dataset, "torch", seed=8, dtype=torch.uint8, random_fields=_NoiseField("unit"))))
    assert all(torch.equal(raw[i][1], unit[i][1]) and raw[i][1].dtype == torch.uint8 for i in range(N_IMAGES))
    spec = ViewSpec()
    with _loader(dataset, "torch", dtype=torch.uint8,
                 random_fields=_NoiseField("normalised", spec.mean, spec.std)) as loader:
        with pytest.raises(ValueError, match="dtype=torch.uint8 asks for raw pixels"):
            next(iter(loader))


def test_real_random_field_augment_when_available(dataset):
    augment = pytest.importorskip("sslfast.augment")
    if not hasattr(augment, "RandomFieldAugment"):
        pytest.skip("sslfast.augment.RandomFieldAugment has not landed in this checkout")
    plain = _by_index(_epoch(_loader(dataset, "auto", seed=8)))
    identity = _by_index(_epoch(_loader(dataset, "auto", seed=8, random_fields={})))  # all strengths 0
    first = _by_index(_epoch(_loader(dataset, "auto", seed=8, random_fields="medium")))
    again = _by_index(_epoch(_loader(dataset, "auto", seed=8, random_fields="medium")))
    for i in range(N_IMAGES):
        torch.testing.assert_close(identity[i][0], plain[i][0], rtol=0, atol=1e-4)
        assert first[i][0].dtype == torch.float32 and torch.isfinite(first[i][0]).all()
        assert torch.equal(first[i][0], again[i][0]) and (first[i][0] - plain[i][0]).abs().mean() > 0.01


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"views": 0}, ValueError, "views must be >= 1"),
    ({"crop_size": 2.5}, TypeError, "crop_size must be an int"),
    ({"local_crops": -1}, ValueError, "local_crops must be >= 0"),
    ({"shard_id": 2, "num_shards": 2}, ValueError, r"shard_id must be in \[0, num_shards=2\)"),
    ({"shard_id": 0}, ValueError, "give both shard_id and num_shards"),
    ({"device": "tpu"}, ValueError, "device must be one of"),
    ({"backend": "ffcv"}, ValueError, "backend must be one of"),
    ({"dtype": torch.float64}, ValueError, "dtype must be one of"),
    ({"recipe": "dino-v7"}, ValueError, "recipe must be one of"),
    ({"on_error": "ignore"}, ValueError, "on_error must be one of"),
    ({"drop_last": 1}, TypeError, "drop_last must be a bool"),
    ({"nvjpeg_memory": {"gpu_bytes": 1}}, ValueError, "nvjpeg_memory has unknown keys"),
    ({"nvjpeg_memory": {"hw_decoder_load": 2.0}}, ValueError, "hw_decoder_load"),
    ({"random_fields": 3}, TypeError, "random_fields must be None, True, a preset name"),
    ({"batch_size": 20, "num_shards": 2, "shard_id": 0, "drop_last": True}, ValueError, "no batches"),
    ({"recipe": [ViewSpec(), "x"]}, TypeError, "Recipe.views"),
])
def test_bad_arguments_raise_clear_errors(dataset, kwargs, error, match):
    options = dict(backend="torch")
    options.update(kwargs)
    with pytest.raises(error, match=match):
        _loader(dataset, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_device_without_cuda_is_a_clear_error(dataset):
    with pytest.raises(RuntimeError, match="device='gpu' needs a CUDA device"):
        _loader(dataset, "auto", device="gpu")


def test_nvjpeg_preallocation_defaults_and_cap():
    from sslfast.data.dali_backend import MIB, default_nvjpeg_memory

    small = default_nvjpeg_memory(np.array([[375, 500], [480, 640], [300, 300]]), batch_size=64)
    assert small == {"device_memory_padding": 16 * MIB, "host_memory_padding": 8 * MIB,
                     "preallocate_height_hint": 480, "preallocate_width_hint": 640}
    # 256 images of 4000 x 6000 would pin 18 GB: no hardware-decoder preallocation then
    huge = default_nvjpeg_memory(np.array([[375, 500], [4000, 6000]]), batch_size=256)
    assert huge["preallocate_height_hint"] == huge["preallocate_width_hint"] == 0


def test_missing_or_empty_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DaliSSLLoader(str(tmp_path / "missing"), 4, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        DaliSSLLoader(str(tmp_path / "empty"), 4, device="cpu")


def _gloo_worker(rank, world, root, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # the torch backend spares each process DALI's import; sharding is the loader's, not the engine's
        loader = DaliSSLLoader(root, batch_size=4, crop_size=16, device="cpu", num_threads=1, cache_dir=False,
                               backend="torch")
        assert (loader.plan.shard_id, loader.plan.num_shards) == (rank, world)
        mine = [b["index"] for b in loader]
        counts = torch.tensor([len(mine)])
        dist.all_reduce(counts)  # every rank yields the same number of batches
        assert counts.item() == world * len(mine)
        flat = torch.cat(mine)
        padded = torch.full((N_IMAGES,), -1, dtype=torch.int64)
        padded[: len(flat)] = flat
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        if rank == 0:
            np.save(os.path.join(out_dir, "indices.npy"), torch.stack(gathered).numpy())
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_shards_come_from_torch_distributed(dataset, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_worker, args=(2, dataset, port, str(tmp_path)), nprocs=2, join=True)
    gathered = np.load(tmp_path / "indices.npy")
    seen = gathered[gathered >= 0]
    assert sorted(seen.tolist()) == list(range(N_IMAGES))
