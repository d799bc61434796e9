"""Finding and checking the images a loader reads.

`scan_images` turns a folder (ImageFolder layout, or a flat folder) or a list of files into an
`ImageList`: absolute paths in a fixed (sorted) order, integer labels, and each image's height
and width after EXIF orientation (the crop sampler needs them before decoding). The position of
a file in that list is its global sample index: every rank and node computes the same list, so
an index names the same image everywhere.

Why check files up front: DALI's decoders stop the whole pipeline on one undecodable file and
the pipeline object is unusable afterwards, so a corrupt file must be found before it reaches
DALI. The check is cheap and runs in a thread pool:

- the leading bytes must be an image signature (JPEG, PNG, BMP, TIFF, WebP, PNM): a text file
  renamed .jpg fails here, whatever its extension says;
- PIL parses the header (size, mode, EXIF orientation) without decoding pixels;
- a JPEG must end with its EOI marker and a PNG with its IEND chunk, which catches truncated
  downloads. A JPEG that fails only this tail check is decoded in full before it is rejected,
  because some encoders append bytes after EOI; a PNG without IEND is rejected outright, since
  DALI's PNG decoder refuses it even where PIL decodes the pixels.

`validate="full"` decodes every image with PIL instead (slow, thorough). Results are cached per
file under `cache_dir`, keyed by (path, size, mtime), so a second scan of a large dataset only
stats its files. Files the check rejects are skipped with a `SkippedImageWarning` naming them,
or raise `CorruptImageError` with `on_error="raise"`. The loaders keep a second line of
defence for files that pass these checks and still fail to decode.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
VALIDATE_CHOICES = ("fast", "full")
ON_ERROR_CHOICES = ("skip", "raise")
_CACHE_VERSION = 1
_EXIF_ORIENTATION = 0x0112
_TAIL_BYTES = 64


class CorruptImageError(ValueError):
    """An image file that cannot be read or decoded (raised with on_error="raise")."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot use image file {path!r}: {reason}")
        self.path, self.reason = path, reason


class SkippedImageWarning(UserWarning):
    """Image files were skipped because they cannot be read or decoded."""


@dataclass(frozen=True)
class ImageList:
    """The images of a dataset, in global-index order.

    Attributes:
        paths: absolute file paths; `paths[i]` is global sample index i.
        labels: (N,) int64 class labels, -1 where the dataset has no labels.
        sizes: (N, 2) int64 (height, width) after EXIF orientation.
        classes: class names, label k is `classes[k]` (empty without labels).
        skipped: (path, reason) of every file left out.
    """

    paths: tuple
    labels: np.ndarray
    sizes: np.ndarray
    classes: tuple = ()
    skipped: tuple = field(default=())

    def __len__(self) -> int:
        return len(self.paths)


def default_cache_dir() -> str:
    return os.environ.get("SSLFAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sslfast")


# ---------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------

def _signature(head: bytes) -> Optional[str]:
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) > 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "pnm"
    return None


def _tail_ok(kind: str, tail: bytes) -> bool:
    if kind == "jpeg":
        return b"\xff\xd9" in tail.rstrip(b"\x00\r\n\t ")[-4:]
    if kind == "png":
        return b"IEND" in tail[-16:]
    return True


def _decode_error(path: str) -> Optional[str]:
    """None when PIL decodes every pixel of the file, else the reason it cannot."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
    except Exception as exc:  # PIL raises many types for bad data
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    return None


def check_image(path: str, validate: str = "fast") -> tuple:
    """((height, width) after EXIF orientation, None) for a usable image, else (None, reason)."""
    from PIL import Image

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(16)
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read(_TAIL_BYTES)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return None, "is empty (0 bytes)"
    kind = _signature(head)
    if kind is None:
        return None, f"is not an image (leading bytes {head[:8]!r} match no JPEG/PNG/BMP/TIFF/WebP/PNM signature)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF noise
            with Image.open(path) as img:
                width, height = img.size
                # (PNG keeps EXIF anywhere in the file: PIL would decode it all to look)
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if kind in ("jpeg", "webp", "tiff") else 1
    except Exception as exc:
        return None, f"has an unreadable {kind} header ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1:
        return None, f"has an empty {width}x{height} image"
    if kind == "png" and not _tail_ok(kind, tail):
        # PIL decodes a PNG that lost its last chunk; DALI's decoder rejects it.
        return None, "is truncated (a PNG must end with its IEND chunk)"
    if validate == "full" or not _tail_ok(kind, tail):
        reason = _decode_error(path)
        if reason is not None:
            if not _tail_ok(kind, tail):
                reason = f"is truncated: {reason}"
            return None, reason
    if orientation in (5, 6, 7, 8):  # EXIF transpose/rotate by 90 degrees swaps the axes
        height, width = width, height
    return (height, width), None


# ---------------------------------------------------------------------------------------------
# Many files, cached
# ---------------------------------------------------------------------------------------------

def _cache_path(cache_dir: str, key_text: str, validate: str) -> str:
    digest = hashlib.sha1(f"{key_text}\0{validate}".encode()).hexdigest()[:20]
    return os.path.join(cache_dir, "scans", f"scan-v{_CACHE_VERSION}-{digest}.pkl")


def _load_cache(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError):
        return {}


def _save_cache(path: str, entries: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(entries, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # atomic: ranks scanning at once never see half a file
    except OSError:
        pass  # a read-only home is no reason to fail; the next scan checks again


def check_images(paths: Sequence[str], *, validate: str = "fast", num_threads: Optional[int] = None,
                 cache_file: Optional[str] = None) -> list:
    """[(size or None, reason or None)] for every path, reusing cached results of unchanged files."""
    cache = _load_cache(cache_file) if cache_file else {}
    results: list = [None] * len(paths)
    stamps: list = [None] * len(paths)
    todo = []
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
            stamps[i] = (st.st_size, st.st_mtime_ns)
        except OSError as exc:
            results[i] = (None, f"cannot be read ({exc.strerror or exc})")
            continue
        hit = cache.get(path)
        if hit is not None and hit[0] == stamps[i]:
            results[i] = hit[1]
        else:
            todo.append(i)
    if todo:
        workers = num_threads or min(32, 4 * (os.cpu_count() or 1))
        if len(todo) < 64 or workers == 1:
            checked = [check_image(paths[i], validate) for i in todo]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                checked = list(pool.map(lambda i: check_image(paths[i], validate), todo, chunksize=64))
        for i, result in zip(todo, checked):
            results[i] = result
        if cache_file:
            fresh = {paths[i]: (stamps[i], results[i]) for i in range(len(paths)) if stamps[i] is not None}
            _save_cache(cache_file, fresh)
    return results


def _walk_images(folder: str) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def _folder_entries(root: str, labels: Union[bool, str]) -> tuple:
    """(paths, labels, classes, ignored-root-files) for a folder."""
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    top_files = sorted(e.path for e in os.scandir(root)
                       if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if labels is False:
        paths = _walk_images(root)
        return paths, [-1] * len(paths), (), []
    per_class = [(name, _walk_images(os.path.join(root, name))) for name in subdirs]
    if any(files for _, files in per_class):
        paths, out_labels = [], []
        for label, (_, files) in enumerate(per_class):
            paths.extend(files)
            out_labels.extend([label] * len(files))
        return paths, out_labels, tuple(subdirs), top_files
    if labels is True:
        raise ValueError(f"labels=True needs class subfolders (ImageFolder layout) under {root!r}, "
                         f"found {'only files' if top_files else 'no images'} there")
    return top_files, [-1] * len(top_files), (), []


def _list_entries(items: Iterable, labels: Union[bool, str]) -> tuple:
    paths, out_labels = [], []
    for k, item in enumerate(items):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            path, label = item
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < -1:
                raise TypeError(f"data[{k}] label must be an int >= -1, got {label!r}")
        elif isinstance(item, (str, os.PathLike)):
            path, label = item, -1
        else:
            raise TypeError(f"data[{k}] must be a path or a (path, label) pair, got {type(item).__name__}")
        paths.append(os.path.abspath(os.fspath(path)))
        out_labels.append(int(label) if labels is not False else -1)
    if labels is True and any(lb < 0 for lb in out_labels):
        raise ValueError("labels=True needs a label for every file: pass (path, label) pairs")
    return paths, out_labels


def scan_images(
    data: Union[str, os.PathLike, Sequence],
    *,
    labels: Union[bool, str] = "auto",
    validate: str = "fast",
    on_error: str = "skip",
    num_threads: Optional[int] = None,
    cache_dir: Union[str, os.PathLike, None, bool] = None,
) -> ImageList:
    """Find, label and check the images of a dataset.

    Args:
        data: a folder, or a sequence of image paths or (path, label) pairs. A folder with class
            subfolders is read in ImageFolder layout (label = index of the sorted class names,
            images found recursively inside each class); a folder with images only at its top
            level has no labels.
        labels: "auto" (as above), True (require labels) or False (label -1 for every image,
            images found recursively).
        validate: "fast" (signature, header and truncation checks) or "full" (PIL also decodes
            every image). The header is always read: the crop sampler needs each image's size.
        on_error: "skip" drops bad files with a SkippedImageWarning naming them; "raise" raises
            CorruptImageError for the first one.
        num_threads: threads that check files (default: min(32, 4 x cpu count)).
        cache_dir: where results are cached (default $SSLFAST_CACHE_DIR or ~/.cache/sslfast);
            False disables the cache.

    Returns:
        ImageList, sorted by path (by class, then path, in ImageFolder layout).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for cls in ("cat", "dog"):
        ...     os.makedirs(os.path.join(root, cls))
        ...     Image.new("RGB", (40, 30), "red").save(os.path.join(root, cls, "a.jpg"))
        >>> images = scan_images(root, cache_dir=False)
        >>> images.classes, images.labels.tolist(), images.sizes.tolist()
        (('cat', 'dog'), [0, 1], [[30, 40], [30, 40]])
    """
    from .._validation import check_choice

    check_choice("labels", labels, ("auto", True, False))
    check_choice("validate", validate, VALIDATE_CHOICES)
    check_choice("on_error", on_error, ON_ERROR_CHOICES)
    ignored: list = []
    if isinstance(data, (str, os.PathLike)):
        root = os.path.abspath(os.fspath(data))
        if not os.path.exists(root):
            raise FileNotFoundError(f"data path {root!r} does not exist")
        if not os.path.isdir(root):
            raise ValueError(f"data must be a folder or a sequence of image paths, got the file {root!r}")
        paths, label_list, classes, ignored = _folder_entries(root, labels)
        where, key_text = f"folder {root!r}", root
        if not paths:
            raise ValueError(f"data folder {root!r} contains no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")
    elif isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("data is an empty sequence: give at least one image path")
        paths, label_list = _list_entries(data, labels)
        n_classes = max(label_list) + 1
        classes, where = tuple(str(k) for k in range(n_classes)) if n_classes > 0 else (), f"{len(paths)} listed files"
        key_text = "\n".join(paths)
    else:
        raise TypeError(f"data must be a folder path or a sequence of image paths, got {type(data).__name__}")

    cache_file = None
    if cache_dir is not False:
        cache_file = _cache_path(os.fspath(cache_dir or default_cache_dir()), key_text, validate)
    checked = check_images(paths, validate=validate, num_threads=num_threads, cache_file=cache_file)

    good, skipped = [], []
    for i, (size, reason) in enumerate(checked):
        if reason is None:
            good.append(i)
        elif on_error == "raise":
            raise CorruptImageError(paths[i], reason)
        else:
            skipped.append((paths[i], reason))
    if ignored:
        warnings.warn(f"{where} has class subfolders; ignoring {len(ignored)} image file(s) directly under it "
                      f"(first: {ignored[0]!r})", UserWarning, stacklevel=2)
    if skipped:
        warn_skipped(skipped, stacklevel=3)
    if not good:
        raise ValueError(f"{where} has no usable images: all {len(paths)} file(s) were rejected "
                         f"(first: {skipped[0][0]!r} {skipped[0][1]})")
    sizes = np.array([checked[i][0] for i in good], dtype=np.int64).reshape(-1, 2)
    return ImageList(
        paths=tuple(paths[i] for i in good),
        labels=np.array([label_list[i] for i in good], dtype=np.int64),
        sizes=sizes,
        classes=tuple(classes),
        skipped=tuple(skipped),
    )


def warn_skipped(skipped: Sequence, stacklevel: int = 2) -> None:
    shown = "; ".join(f"{p!r} {r}" for p, r in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    warnings.warn(f"skipped {len(skipped)} image file(s): {shown}{more}", SkippedImageWarning, stacklevel=stacklevel)
