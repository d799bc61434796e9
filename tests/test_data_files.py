"""Finding, labelling and checking image files (sslfast.data.scan_images)."""
import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from sslfast.data import CorruptImageError, ImageList, SkippedImageWarning, scan_images
from sslfast.data import files as files_mod


def _save(path, h=30, w=40, seed=0, fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, **kwargs)
    return str(path)


def corrupt_files(folder):
    """A truncated JPEG, a text file named .jpg, an empty .png and a truncated PNG."""
    good = _save(os.path.join(folder, "ok.jpg"), seed=1)
    data = open(good, "rb").read()
    paths = {
        "truncated": os.path.join(folder, "truncated.jpg"),
        "text": os.path.join(folder, "notes.jpg"),
        "empty": os.path.join(folder, "empty.png"),
        "png_truncated": os.path.join(folder, "cut.png"),
    }
    open(paths["truncated"], "wb").write(data[: len(data) // 2])
    open(paths["text"], "w").write("this is a text file, not a JPEG\n" * 20)
    open(paths["empty"], "wb").close()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8) + 90).save(buf, format="PNG")
    open(paths["png_truncated"], "wb").write(buf.getvalue()[:-20])
    return paths


def bad_idat_png(path):
    """A PNG with intact header and IEND whose compressed pixels are garbage: it passes the fast
    check and fails to decode (in PIL and in DALI)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    k = data.index(b"IDAT")
    length = int.from_bytes(data[k - 4:k], "big")
    data[k + 4 + length // 2: k + 4 + length // 2 + 64] = bytes(range(64))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(bytes(data))
    return path


def test_image_folder_layout_gives_sorted_classes_labels_and_sizes(tmp_path):
    _save(tmp_path / "dog" / "b.jpg", 30, 40)
    _save(tmp_path / "dog" / "sub" / "a.png", 11, 7, fmt="PNG")
    _save(tmp_path / "cat" / "z.jpeg", 50, 20)
    (tmp_path / "cat" / "readme.txt").write_text("not an image, not an image extension")
    (tmp_path / "empty_class").mkdir()
    images = scan_images(str(tmp_path), cache_dir=False)
    assert images.classes == ("cat", "dog", "empty_class")
    assert [os.path.relpath(p, tmp_path) for p in images.paths] == ["cat/z.jpeg", "dog/b.jpg", "dog/sub/a.png"]
    assert images.labels.tolist() == [0, 1, 1]
    assert images.sizes.tolist() == [[50, 20], [30, 40], [11, 7]]
    assert isinstance(images, ImageList) and len(images) == 3 and images.skipped == ()


def test_flat_folder_and_labels_false_have_no_labels(tmp_path):
    for k in range(3):
        _save(tmp_path / f"{k}.jpg", seed=k)
    flat = scan_images(tmp_path, cache_dir=False)
    assert flat.labels.tolist() == [-1, -1, -1] and flat.classes == ()
    _save(tmp_path / "sub" / "x.jpg")
    everything = scan_images(tmp_path, labels=False, cache_dir=False)
    assert len(everything) == 4 and (everything.labels == -1).all()
    with pytest.warns(UserWarning, match="ignoring 3 image file"):
        foldered = scan_images(tmp_path, cache_dir=False)
    assert len(foldered) == 1 and foldered.classes == ("sub",)
    with pytest.raises(ValueError, match="labels=True needs class subfolders"):
        scan_images(tmp_path / "sub", labels=True, cache_dir=False)


def test_exif_orientation_swaps_height_and_width(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the decoded image is 40 high, 30 wide
    _save(tmp_path / "r.jpg", 30, 40, exif=exif)
    assert scan_images(tmp_path, cache_dir=False).sizes.tolist() == [[40, 30]]


def test_file_list_with_and_without_labels(tmp_path):
    a, b = _save(tmp_path / "a.jpg"), _save(tmp_path / "b.png", fmt="PNG")
    images = scan_images([(b, 3), (a, 0)], cache_dir=False)
    assert images.paths == (b, a) and images.labels.tolist() == [3, 0] and len(images.classes) == 4
    assert scan_images([a, b], cache_dir=False).labels.tolist() == [-1, -1]
    with pytest.raises(TypeError, match=r"data\[0\] label must be an int"):
        scan_images([(a, "cat")], cache_dir=False)
    with pytest.raises(TypeError, match=r"data\[1\] must be a path"):
        scan_images([a, 3], cache_dir=False)
    with pytest.raises(ValueError, match="labels=True needs a label"):
        scan_images([a], labels=True, cache_dir=False)


def test_missing_empty_and_imageless_folders_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_images(tmp_path / "nope", cache_dir=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        scan_images(tmp_path / "empty", cache_dir=False)
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="contains no image files"):
        scan_images(tmp_path / "texts", cache_dir=False)
    with pytest.raises(ValueError, match="empty sequence"):
        scan_images([], cache_dir=False)
    with pytest.raises(ValueError, match="data must be a folder"):
        scan_images(_save(tmp_path / "one.jpg"), cache_dir=False)
    with pytest.raises(TypeError, match="data must be a folder path"):
        scan_images(42, cache_dir=False)
    with pytest.raises(ValueError, match="validate must be one of"):
        scan_images(tmp_path, validate="paranoid", cache_dir=False)


def test_corrupt_files_are_skipped_with_a_warning_naming_each(tmp_path):
    bad = corrupt_files(str(tmp_path / "c"))
    with pytest.warns(SkippedImageWarning) as record:
        images = scan_images(tmp_path, cache_dir=False)
    assert [os.path.basename(p) for p in images.paths] == ["ok.jpg"]
    message = str(record[0].message)
    for path in bad.values():
        assert repr(path) in message
    reasons = dict(images.skipped)
    assert "truncated" in reasons[bad["truncated"]] and "not an image" in reasons[bad["text"]]
    assert "empty" in reasons[bad["empty"]] and "truncated" in reasons[bad["png_truncated"]]


def test_corrupt_file_raises_with_on_error_raise(tmp_path):
    bad = corrupt_files(str(tmp_path / "c"))
    with pytest.raises(CorruptImageError) as info:
        scan_images(tmp_path, on_error="raise", cache_dir=False)
    assert info.value.path in bad.values() and info.value.path in str(info.value)


def test_only_corrupt_files_is_an_error(tmp_path):
    corrupt_files(str(tmp_path / "c"))
    os.remove(tmp_path / "c" / "ok.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        with pytest.raises(ValueError, match="no usable images: all 4 file"):
            scan_images(tmp_path, cache_dir=False)


def test_full_validation_decodes_what_the_fast_check_lets_through(tmp_path):
    _save(tmp_path / "ok.jpg")
    path = bad_idat_png(str(tmp_path / "garbled.png"))
    assert len(scan_images(tmp_path, cache_dir=False)) == 2
    with pytest.warns(SkippedImageWarning, match="garbled.png"):
        assert len(scan_images(tmp_path, validate="full", cache_dir=False)) == 1
    # a JPEG with bytes after its end marker is fine
    data = open(tmp_path / "ok.jpg", "rb").read()
    open(tmp_path / "trailing.jpg", "wb").write(data + b"\x00" * 7 + b"extra")
    assert os.path.join(tmp_path, "trailing.jpg") in scan_images(tmp_path, cache_dir=False).paths
    with pytest.warns(SkippedImageWarning, match="garbled.png"):
        assert path not in scan_images(tmp_path, validate="full", cache_dir=False).paths


def test_results_are_cached_per_file_and_rechecked_when_a_file_changes(tmp_path, monkeypatch):
    for k in range(5):
        _save(tmp_path / "d" / f"{k}.jpg", seed=k)
    calls = []
    real = files_mod.check_image
    monkeypatch.setattr(files_mod, "check_image", lambda p, v="fast": calls.append(p) or real(p, v))
    cache = tmp_path / "cache"
    first = scan_images(tmp_path / "d", cache_dir=cache)
    assert len(calls) == 5 and len(list((cache / "scans").iterdir())) == 1
    calls.clear()
    second = scan_images(tmp_path / "d", cache_dir=cache)
    assert calls == [] and second.paths == first.paths and (second.sizes == first.sizes).all()
    _save(tmp_path / "d" / "3.jpg", 64, 48, seed=9)
    third = scan_images(tmp_path / "d", cache_dir=cache)
    assert [os.path.basename(p) for p in calls] == ["3.jpg"] and third.sizes[3].tolist() == [64, 48]
    calls.clear()
    scan_images(tmp_path / "d", cache_dir=cache, validate="full")  # another mode, another cache
    assert len(calls) == 5


def test_unwritable_cache_dir_does_not_fail(tmp_path):
    _save(tmp_path / "d" / "a.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    assert len(scan_images(tmp_path / "d", cache_dir=blocker)) == 1
