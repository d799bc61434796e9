"""The built-in data of `sslfast pretrain`: a procedurally generated, labelled image set.

Ten classes, five solid shapes, two outlined shapes and three textures (`CLASSES`), each drawn
with a random colour, position, scale and rotation on a randomly coloured, shaded background
with clutter (thin lines and small specks, some over the object) and sensor noise. Colour,
position and background dominate raw pixel similarity, so a randomly initialised encoder
scores poorly in k-NN, while the class is only carried by shape or texture: exactly what the
SSL augmentations (crops, colour jitter) teach an encoder to keep. That gap is what the default
run demonstrates. Colours come from small palettes (`OBJECT_PALETTE`, `BACKGROUND_PALETTE`):
with fully random colours the colour combination alone would tell any two images apart, and
instance-discrimination methods would learn colour instead of shape.

The set is written once as JPEG files in ImageFolder layout, so that the real loaders (DALI,
torchvision) read and decode real files and any ImageFolder path can take its place:

    <cache>/synthetic-shapes-v1-64px-500x100-seed0/
        train/<class>/<index>.jpg       train_per_class images per class
        val/<class>/<index>.jpg         val_per_class held-out images per class (k-NN monitor)
        COMPLETE.json                   the spec; present only in a finished set

Determinism: image i of class c in a split is drawn from its own generator seeded with
(seed, split, c, i), so the set does not depend on generation order, and the JPEG encoder is
deterministic, so the same seed gives the same bytes.

Atomicity: a set is generated in a hidden temporary folder next to its final place and moved
there with one rename once COMPLETE.json is written. A killed generation leaves only a
temporary folder, which is never taken as a dataset (and is removed by the next generation on
the same host once its process is gone); two concurrent generations both succeed and one
result wins.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .._validation import check_int

#: Class names in label order (alphabetical, the order torchvision's ImageFolder assigns).
CLASSES = ("checker", "circle", "crescent", "cross", "dots", "ring", "square", "star", "stripes", "triangle")
FORMAT_VERSION = 3
MARKER = "COMPLETE.json"
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The folder name encodes every field, so specs never share a folder."""

    image_size: int = 64
    train_per_class: int = 500
    val_per_class: int = 100
    seed: int = 0
    jpeg_quality: int = 90

    def __post_init__(self):
        check_int("image_size", self.image_size, minimum=16)
        check_int("train_per_class", self.train_per_class, minimum=1)
        check_int("val_per_class", self.val_per_class, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("jpeg_quality", self.jpeg_quality, minimum=1)
        if self.jpeg_quality > 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    @property
    def folder_name(self) -> str:
        return (f"synthetic-shapes-v{FORMAT_VERSION}-{self.image_size}px-{self.train_per_class}x"
                f"{self.val_per_class}-seed{self.seed}-q{self.jpeg_quality}")

    def count(self, split: str) -> int:
        per_class = self.train_per_class if split == "train" else self.val_per_class
        return per_class * len(CLASSES)


def default_cache_dir() -> Path:
    """Where generated sets live: $SSLFAST_CACHE_DIR/datasets, else ~/.cache/sslfast/datasets
    (the cache root the loader's file checks use too)."""
    root = os.environ.get("SSLFAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sslfast")
    return Path(root) / "datasets"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> tuple:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


#: Object and clutter colours: six saturated hues, white and black.
OBJECT_PALETTE = np.array([_hsv(h / 6, 0.85, 0.9) for h in range(6)] + [(0.95, 0.95, 0.95), (0.07, 0.07, 0.07)])
#: Background colours: slate, light grey, dusk blue, sand.
BACKGROUND_PALETTE = np.array([(0.25, 0.25, 0.28), (0.7, 0.7, 0.68), (0.2, 0.3, 0.45), (0.75, 0.65, 0.5)])


def _random_colour(rng: np.random.Generator, palette: np.ndarray = OBJECT_PALETTE) -> np.ndarray:
    """A palette colour, slightly perturbed.

    Small palettes keep colour a weak cue for telling two images apart (8 x 4 object/background
    pairs: in a batch of 128 many images share theirs), so an SSL method has to look at shape
    and pose, while colour still dominates the raw pixels and a random encoder's features.
    """
    return np.clip(palette[rng.integers(len(palette))] + rng.normal(0.0, 0.03, 3), 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_distance: float = 0.45) -> np.ndarray:
    """A random colour at least `min_distance` (Euclidean, RGB in [0, 1]) from `against`."""
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = _random_colour(rng)
        distance = float(np.linalg.norm(colour - against))
        if distance >= min_distance:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _regular_polygon(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _ellipse(rx: float, ry: float, n: int = 96) -> np.ndarray:
    angles = 2 * math.pi * np.arange(n) / n
    return np.stack([rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def _star(radius: float, inner: float) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(radius: float, half_width: float) -> np.ndarray:
    r, w = radius, half_width
    return np.array([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
                     (-w, w), (-r, w), (-r, -w), (-w, -w)])


def _object_polygons(name: str, rng: np.random.Generator, radius: float) -> list:
    """(polygon in object coordinates, 255 to fill or 0 to cut) pairs for a class's silhouette."""
    if name == "circle":
        return [(_ellipse(radius, radius * rng.uniform(0.9, 1.0)), 255)]
    if name == "square":
        side = radius * 0.85
        return [(np.array([(-side, -side), (side, -side), (side, side), (-side, side)])
                 * [1.0, rng.uniform(0.8, 1.0)], 255)]
    if name == "triangle":
        return [(_regular_polygon(3, radius * 1.1, -math.pi / 2), 255)]
    if name == "star":
        return [(_star(radius * 1.1, rng.uniform(0.38, 0.5)), 255)]
    if name == "cross":
        return [(_cross(radius, radius * rng.uniform(0.28, 0.38)), 255)]
    if name == "ring":
        inner = rng.uniform(0.5, 0.65)
        return [(_ellipse(radius, radius), 255), (_ellipse(radius * inner, radius * inner), 0)]
    if name == "crescent":
        cut = _ellipse(radius * 0.85, radius * 0.85) + [radius * rng.uniform(0.4, 0.55), 0.0]
        return [(_ellipse(radius, radius), 255), (cut, 0)]
    # textures fill an elliptic region
    return [(_ellipse(radius, radius * rng.uniform(0.75, 1.0)), 255)]


def _texture(name: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """1 where the texture takes its second colour, in object coordinates (u, v)."""
    if name == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if name == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if name == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return (du * du + dv * dv < (period * rng.uniform(0.28, 0.36)) ** 2).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


def render(label: int, rng: np.random.Generator, image_size: int = 64) -> np.ndarray:
    """One (image_size, image_size, 3) uint8 image of class CLASSES[label], drawn from rng.

    Example:
        >>> import numpy as np
        >>> from sslfast.data.synthetic import CLASSES, render
        >>> image = render(CLASSES.index("star"), np.random.default_rng(0), image_size=32)
        >>> image.shape, image.dtype
        ((32, 32, 3), dtype('uint8'))
    """
    from PIL import Image, ImageDraw

    name = CLASSES[label]
    size = image_size * _SUPERSAMPLE
    as_rgb = lambda colour: tuple(int(c * 255 + 0.5) for c in colour)  # noqa: E731

    # background: a palette colour shaded by +-15% along a random direction
    base = _random_colour(rng, BACKGROUND_PALETTE)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(direction) * np.arange(size)[None, :] + np.sin(direction) * np.arange(size)[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    background = np.clip(base * (0.85 + 0.3 * ramp[..., None]), 0.0, 1.0)
    canvas = Image.fromarray((background * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    def clutter(lines: int, specks: int) -> None:
        for _ in range(lines):
            p0, p1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            width = max(1, int(_SUPERSAMPLE * rng.uniform(0.5, 1.2)))
            draw.line([tuple(p0), tuple(p1)], fill=as_rgb(_random_colour(rng)), width=width)
        for _ in range(specks):
            c, r = rng.uniform(0, size, 2), size * rng.uniform(0.015, 0.045)
            draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=as_rgb(_random_colour(rng)))

    clutter(lines=int(rng.integers(1, 4)), specks=int(rng.integers(1, 5)))

    # the object: a silhouette mask from rotated, scaled, translated polygons
    radius = size * rng.uniform(0.24, 0.38)
    centre = rng.uniform(0.35, 0.65, 2) * size
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    for polygon, fill in _object_polygons(name, rng, radius):
        mask_draw.polygon([tuple(p) for p in polygon @ rotation.T + centre], fill=fill)

    # its colour contrasts with the background it covers (not with the clutter)
    weights = np.asarray(mask, np.float32)
    local_bg = (background * weights[..., None]).sum((0, 1)) / max(float(weights.sum()), 1.0)
    fill = _contrasting_colour(rng, local_bg)
    if name in ("stripes", "checker", "dots"):
        second = _contrasting_colour(rng, fill, min_distance=0.5)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        u = math.cos(angle) * (xx - centre[0]) + math.sin(angle) * (yy - centre[1])
        v = -math.sin(angle) * (xx - centre[0]) + math.cos(angle) * (yy - centre[1])
        pattern = _texture(name, u, v, radius * rng.uniform(0.35, 0.5), rng)[..., None]
        texture = fill * (1 - pattern) + second * pattern
        canvas.paste(Image.fromarray((texture * 255 + 0.5).astype(np.uint8)), mask=mask)
    else:
        canvas.paste(as_rgb(fill), mask=mask)

    # a few lines over the object, then anti-aliasing by box filtering, then sensor noise
    clutter(lines=int(rng.integers(0, 2)), specks=0)
    small = np.asarray(canvas.reduce(_SUPERSAMPLE), np.float32) / 255
    small = small + rng.normal(0.0, rng.uniform(0.005, 0.03), small.shape)
    return (np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sample_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLITS[split], label, index])


# --------------------------------------------------------------------------------------------
# Writing a set once, atomically
# --------------------------------------------------------------------------------------------

def is_complete(path: Union[str, Path], spec: Optional[SyntheticSpec] = None) -> bool:
    """True when `path` holds a finished set (of `spec`, if given)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return spec is None or recorded.get("spec") == asdict(spec)


def _remove_stale_temporaries(parent: Path, final_name: str) -> None:
    """Delete temporary folders of killed generations on this host (their process is gone)."""
    prefix = f".{final_name}.tmp-{socket.gethostname()}-"
    for tmp in parent.glob(prefix + "*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


def _write_images(folder: str, split: str, label: int, start: int, stop: int, spec: SyntheticSpec) -> int:
    """Render and save images start..stop-1 of one class of one split (a worker's task)."""
    from PIL import Image

    for index in range(start, stop):
        pixels = render(label, _sample_rng(spec.seed, split, label, index), spec.image_size)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:06d}.jpg"), quality=spec.jpeg_quality)
    return stop - start


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker ends when the generating process is killed (Linux), instead of
    waiting forever for tasks that will never come."""
    try:
        import ctypes
        import signal as _signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # killed while this worker was starting, before the line above
        os._exit(1)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def generate(spec: SyntheticSpec = SyntheticSpec(), root: Union[str, Path, None] = None, *,
             progress: Optional[Callable[[int, int], None]] = None, workers: Optional[int] = None) -> Path:
    """Write the set described by `spec` under `root` (default: `default_cache_dir()`), unless a
    finished copy is already there, and return its folder.

    Args:
        spec: what to generate (size, images per class, seed, JPEG quality).
        root: the cache folder that holds generated sets.
        progress: called as progress(done, total) while images are written.
        workers: processes that render in parallel (default: the CPUs this process may use;
            the images do not depend on it; small sets are written by this process).

    Example:
        >>> import tempfile
        >>> from sslfast.data.synthetic import SyntheticSpec, generate
        >>> spec = SyntheticSpec(image_size=32, train_per_class=2, val_per_class=1)
        >>> path = generate(spec, tempfile.mkdtemp(), workers=1)
        >>> sorted(p.name for p in path.iterdir())
        ['COMPLETE.json', 'train', 'val']
        >>> len(list((path / "train").glob("*/*.jpg")))
        20
    """
    if not isinstance(spec, SyntheticSpec):
        raise TypeError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
    workers = _default_workers() if workers is None else check_int("workers", workers, minimum=1)
    parent = Path(root).expanduser() if root is not None else default_cache_dir()
    final = parent / spec.folder_name
    if is_complete(final, spec):
        return final
    if final.exists():
        raise RuntimeError(f"{final} exists but is not a finished synthetic set ({MARKER} is missing or "
                           f"does not match); remove it and run again")
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(parent, spec.folder_name)
    tmp = parent / f".{spec.folder_name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tasks = []  # chunks of one class of one split, small enough to keep the workers busy
        for split in _SPLITS:
            per_class = spec.train_per_class if split == "train" else spec.val_per_class
            for label, name in enumerate(CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for start in range(0, per_class, 50):
                    tasks.append((str(folder), split, label, start, min(start + 50, per_class), spec))
        total, done = spec.count("train") + spec.count("val"), 0
        if workers == 1 or total < 500:  # starting processes costs more than a small set
            for task in tasks:
                done += _write_images(*task)
                if progress is not None:
                    progress(done, total)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: the caller may hold threads (torch, DALI) that a fork would copy in a bad state
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                for future in as_completed([pool.submit(_write_images, *task) for task in tasks]):
                    done += future.result()
                    if progress is not None:
                        progress(done, total)
        marker = {"spec": asdict(spec), "classes": list(CLASSES), "format_version": FORMAT_VERSION,
                  "counts": {split: spec.count(split) for split in _SPLITS}}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep its copy
            if not is_complete(final, spec):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure(spec: SyntheticSpec = SyntheticSpec(), root: Union[str, Path, None] = None, *,
           verbose: bool = True) -> Path:
    """`generate` with a progress bar on stderr the first time (the set is reused afterwards)."""
    parent = Path(root).expanduser() if root is not None else default_cache_dir()
    if is_complete(parent / spec.folder_name, spec) or not verbose:
        return generate(spec, parent)
    from tqdm import tqdm

    with tqdm(total=spec.count("train") + spec.count("val"), desc="generating built-in data",
              unit="img", dynamic_ncols=True) as bar:
        path = generate(spec, parent, progress=lambda done, total: bar.update(done - bar.n))
    return path


def main(argv=None) -> int:
    """`python -m sslfast.data.synthetic [--out DIR] [--image-size N] ...`: write a set, print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sslfast.data.synthetic", description=__doc__.split("\n\n")[0])
    defaults = SyntheticSpec()
    parser.add_argument("--out", default=None, help="folder that holds generated sets (default: $SSLFAST_CACHE_DIR/datasets or ~/.cache/sslfast/datasets)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(args.image_size, args.train_per_class, args.val_per_class, args.seed)
    print(ensure(spec, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
