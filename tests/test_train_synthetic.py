"""The built-in synthetic set: layout, determinism, atomic generation."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sslfast.data import synthetic as S

TINY = S.SyntheticSpec(image_size=16, train_per_class=2, val_per_class=1, seed=3)


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.jpg")):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_render_is_a_function_of_the_generator_state():
    for label in range(len(S.CLASSES)):
        a = S.render(label, np.random.default_rng([5, label]), 32)
        b = S.render(label, np.random.default_rng([5, label]), 32)
        c = S.render(label, np.random.default_rng([6, label]), 32)
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.std() > 10  # not a blank image


def test_generate_writes_an_image_folder(tmp_path):
    path = S.generate(TINY, tmp_path)
    assert path == tmp_path / TINY.folder_name and S.is_complete(path, TINY)
    marker = json.loads((path / S.MARKER).read_text())
    assert marker["counts"] == {"train": 20, "val": 10} and marker["classes"] == list(S.CLASSES)
    for split, per_class in (("train", 2), ("val", 1)):
        classes = sorted(p.name for p in (path / split).iterdir())
        assert classes == sorted(S.CLASSES) == list(S.CLASSES)  # label order = ImageFolder order
        for name in classes:
            files = sorted((path / split / name).glob("*.jpg"))
            assert len(files) == per_class
    from PIL import Image

    with Image.open(next((path / "train" / "star").glob("*.jpg"))) as img:
        assert img.size == (16, 16) and img.mode == "RGB"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = S.generate(TINY, tmp_path / "a")
    b = S.generate(TINY, tmp_path / "b")
    other = S.generate(S.SyntheticSpec(image_size=16, train_per_class=2, val_per_class=1, seed=4), tmp_path / "a")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(other)


def test_worker_processes_write_the_same_bytes(tmp_path):
    spec = S.SyntheticSpec(image_size=16, train_per_class=50, val_per_class=1, seed=1)  # 510 images
    assert _digest(S.generate(spec, tmp_path / "one", workers=1)) == _digest(S.generate(spec, tmp_path / "two",
                                                                                         workers=2))


def test_a_finished_set_is_reused(tmp_path):
    path = S.generate(TINY, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*.jpg")}
    calls = []
    assert S.generate(TINY, tmp_path, progress=lambda done, total: calls.append(done)) == path
    assert not calls and before == {p: p.stat().st_mtime_ns for p in path.rglob("*.jpg")}


def test_a_folder_without_the_marker_is_never_taken_as_complete(tmp_path):
    final = tmp_path / TINY.folder_name
    (final / "train" / "circle").mkdir(parents=True)
    assert not S.is_complete(final)
    with pytest.raises(RuntimeError, match="not a finished synthetic set"):
        S.generate(TINY, tmp_path)


def test_a_concurrent_generation_that_finishes_first_wins(tmp_path):
    nested = []

    def progress(done, total):
        if not nested:  # another "process" completes the same set while this one is writing
            nested.append(S.generate(TINY, tmp_path))

    path = S.generate(TINY, tmp_path, progress=progress)
    assert path == nested[0] and S.is_complete(path, TINY)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_generation_leaves_no_dataset_and_is_cleaned_up(tmp_path, workers):
    spec = S.SyntheticSpec(image_size=32, train_per_class=400, val_per_class=1, seed=0)
    code = (f"from sslfast.data.synthetic import SyntheticSpec, generate\n"
            f"generate(SyntheticSpec(image_size=32, train_per_class=400, val_per_class=1, seed=0), "
            f"{str(tmp_path)!r}, workers={workers})")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until it has written some images
            if len(list(tmp_path.glob(".*/train/*/*.jpg"))) >= 5:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the generating process wrote no images")
        workers_started = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = tmp_path / spec.folder_name
    assert not final.exists() and not S.is_complete(final)
    deadline = time.time() + 60  # the workers die with the process that started them
    while time.time() < deadline and _alive(workers_started):
        time.sleep(0.1)
    assert not _alive(workers_started)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers  # the killed run's temporary folder
    S._remove_stale_temporaries(tmp_path, spec.folder_name)
    assert not any(p.exists() for p in leftovers)


def _children(pid):
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _alive(pids):
    return [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]]


def test_spec_checks():
    with pytest.raises(ValueError, match="image_size"):
        S.SyntheticSpec(image_size=4)
    with pytest.raises(ValueError, match="jpeg_quality"):
        S.SyntheticSpec(jpeg_quality=101)
    with pytest.raises(TypeError, match="spec"):
        S.generate({"image_size": 32})


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSLFAST_CACHE_DIR", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "datasets"
