"""`DaliSSLLoader`: multi-view SSL batches from an image folder, decoded and augmented by DALI
on the GPU or CPU, or by a PIL/PyTorch DataLoader where DALI is missing.

    for batch in loader:                    # one epoch; the next `for` runs the next epoch
        views = batch["views"]              # [tensor(B, 3, H, W), ...]: global views, then local
        batch["label"], batch["index"]      # tensor(B) int64: class (-1 without labels), global index

Epochs: iterating to the end advances `loader.epoch`; `set_epoch(e)` picks an epoch explicitly
(the order and the augmentations of an epoch depend only on (seed, epoch)). `len(loader)` is
the number of batches per epoch, the same on every rank. `state_dict()` / `load_state_dict()`
resume mid-epoch at the next batch, with the batches an uninterrupted run would have produced.

Sharding: shard_id / num_shards default to torch.distributed's rank / world size when a process
group is initialised. With drop_last=False every image is seen exactly once per epoch over all
ranks, and the last batch holds floor(R/S) or ceil(R/S) images per rank (R = images left after
the full global batches; possibly 0). Losses that all_gather across ranks need equal batch
sizes, so distributed training usually passes drop_last=True.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import distributed
from .._validation import check_choice, check_int
from .files import ON_ERROR_CHOICES, VALIDATE_CHOICES, CorruptImageError, ImageList, scan_images, warn_skipped
from .recipes import Recipe, ViewSpec, view_specs
from .sampling import ShardPlan, hash64

log = logging.getLogger("sslfast.data")

DEVICE_CHOICES = ("gpu", "cpu")
BACKEND_CHOICES = ("auto", "dali", "torch")
DTYPE_CHOICES = (torch.float32, torch.float16, torch.uint8)


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _random_field_module(random_fields, spec: ViewSpec, dtype: torch.dtype):
    """None, or the module that random_fields= asks for (see DaliSSLLoader's Args)."""
    if random_fields is None or random_fields is False:
        return None
    if random_fields is True or isinstance(random_fields, (str, dict)):
        try:
            from ..augment import RandomFieldAugment
        except ImportError as exc:
            raise ImportError(f"random_fields={random_fields!r} needs sslfast.augment.RandomFieldAugment, which "
                              f"this installation lacks ({exc}); pass a module instead") from exc
        # the fused kernel normalises in the same pass, so the loader has nothing left to do
        output = {"out_dtype": torch.uint8} if dtype == torch.uint8 else \
            {"mean": spec.mean, "std": spec.std, "out_dtype": dtype}
        if isinstance(random_fields, dict):
            return RandomFieldAugment(**{**output, **random_fields})
        return RandomFieldAugment.preset("mild" if random_fields is True else random_fields, **output)
    if not callable(random_fields):
        raise TypeError("random_fields must be None, True, a preset name, a dict of RandomFieldAugment arguments "
                        f"or a callable module on (B, 3, H, W) uint8 images, got {type(random_fields).__name__}")
    return random_fields


class _Finisher:
    """Random fields on the uint8 views, then whatever normalisation the module did not do.

    The module's output is read as: uint8 pixels; or floats in [0, 1]; or, when the module has
    `mean` and `std` attributes that are not None (RandomFieldAugment(mean=..., std=...)),
    floats it has normalised itself. It runs under a torch RNG seeded by (seed, epoch, batch
    position), so that a batch is reproducible wherever it is computed (DataLoader worker or
    main process) and on resume.
    """

    def __init__(self, module, specs, dtype: torch.dtype, seed: int):
        self.module, self.specs, self.dtype, self.seed = module, specs, dtype, seed
        self.normalises = getattr(module, "mean", None) is not None and getattr(module, "std", None) is not None

    def _finish(self, result: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        from .transforms import normalize, to_uint8

        if result.dtype == torch.uint8:
            return normalize(result, spec.mean, spec.std, self.dtype)
        if self.normalises:
            if self.dtype == torch.uint8:
                raise ValueError("dtype=torch.uint8 asks for raw pixels but random_fields returned normalised "
                                 "floats: give the module out_dtype=torch.uint8 and no mean/std")
            return result.to(self.dtype)
        pixels = result.to(torch.float32) * 255.0  # floats in [0, 1]
        return to_uint8(pixels) if self.dtype == torch.uint8 else normalize(pixels, spec.mean, spec.std, self.dtype)

    def __call__(self, views: list, epoch: int, position: int) -> list:
        batch_seed = int(hash64(self.seed, epoch, position, 0xF1E1D)[0] >> np.uint64(1))
        devices = [v.device for v in views if v.device.type == "cuda"]
        out = []
        with torch.random.fork_rng(devices=devices[:1]):
            torch.manual_seed(batch_seed)
            for view, spec in zip(views, self.specs):
                result = self.module(view) if len(view) else view
                if not isinstance(result, torch.Tensor) or result.shape != view.shape:
                    raise ValueError(f"random_fields must return a tensor of the view's shape {tuple(view.shape)}, "
                                     f"got {getattr(result, 'shape', type(result).__name__)}")
                out.append(self._finish(result, spec))
        return out


class DaliSSLLoader:
    """Multi-view SSL batches from image files (see the module docstring).

    Args:
        data: an image folder (ImageFolder layout: class subfolders give labels; or images at
            the top level, unlabelled), a sequence of paths or (path, label) pairs, or an
            ImageList from sslfast.data.scan_images (used as is, without checking again).
        batch_size: images per batch on this rank.
        views: number of global views.
        recipe: "simclr", "byol", "barlowtwins", a Recipe, a ViewSpec or a list of ViewSpec
            (global view v uses entry v mod len).
        crop_size: side of the global views (unless a ViewSpec sets its own size).
        local_crops: number of multi-crop local views, after the global ones.
        local_crop_size: side of the local views.
        device: "gpu" (decode with nvJPEG, augment on the GPU, CUDA tensors out) or "cpu";
            default "gpu" when CUDA is available.
        num_threads: DALI CPU threads, or DataLoader workers of the fallback (default: the CPUs
            this process may use).
        seed: seed of the epoch order and of every augmentation; must agree across ranks.
        shard_id, num_shards: this rank's shard (default: torch.distributed rank / world size).
        drop_last: drop the partial last global batch (see the module docstring).
        shuffle: shuffle the order each epoch.
        labels: "auto", True or False (see sslfast.data.scan_images).
        random_fields: random-field augmentation of every view, right after decoding and
            augmentation, on the output device (the GPU for device="gpu"; numba in the CPU
            workers of the fallback): None; True or a preset name ("mild", "medium", "strong")
            or a dict of arguments for sslfast.augment.RandomFieldAugment; or any module taking
            (B, 3, H, W) uint8 views and returning uint8 pixels, floats in [0, 1], or (when it
            has `mean` and `std` attributes that are not None) floats it normalised itself.
            It runs under torch's RNG seeded per batch from (seed, epoch, batch position).
        dtype: torch.float32, torch.float16 (normalised) or torch.uint8 (raw pixels, CHW).
        backend: "auto" (DALI where installed, else the torch fallback), "dali" or "torch".
        on_error: "skip" corrupt files with a warning naming them, or "raise".
        validate: "fast" or "full" up-front file checks (see sslfast.data.scan_images).
        cache_dir: cache of file checks (False disables it).
        prefetch: batches prepared ahead (DALI prefetch_queue_depth, DataLoader prefetch_factor).
        device_id: CUDA device for device="gpu" (default: torch.cuda.current_device()).
        nvjpeg_memory: overrides of nvJPEG's preallocation, keys of
            sslfast.data.dali_backend.NVJPEG_KEYS (default: default_nvjpeg_memory).

    Example:
        >>> import tempfile, os
        >>> import numpy as np
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for k in range(5):
        ...     os.makedirs(os.path.join(root, f"class{k % 2}"), exist_ok=True)
        ...     pixels = np.random.default_rng(k).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ...     Image.fromarray(pixels).save(os.path.join(root, f"class{k % 2}", f"{k}.jpg"))
        >>> loader = DaliSSLLoader(root, batch_size=2, crop_size=32, device="cpu", num_threads=1,
        ...                        cache_dir=False)
        >>> len(loader), [len(batch["index"]) for batch in loader]
        (3, [2, 2, 1])
        >>> batch = next(iter(loader))
        >>> [tuple(v.shape) for v in batch["views"]], batch["label"].dtype
        ([(2, 3, 32, 32), (2, 3, 32, 32)], torch.int64)
    """

    def __init__(
        self,
        data: Union[str, os.PathLike, Sequence, ImageList],
        batch_size: int,
        *,
        views: int = 2,
        recipe: Union[str, Recipe, ViewSpec, Sequence[ViewSpec]] = "simclr",
        crop_size: int = 224,
        local_crops: int = 0,
        local_crop_size: int = 96,
        device: Optional[str] = None,
        num_threads: Optional[int] = None,
        seed: int = 0,
        shard_id: Optional[int] = None,
        num_shards: Optional[int] = None,
        drop_last: bool = False,
        shuffle: bool = True,
        labels: Union[bool, str] = "auto",
        random_fields=None,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        on_error: str = "skip",
        validate: str = "fast",
        cache_dir: Union[str, os.PathLike, None, bool] = None,
        prefetch: int = 2,
        device_id: Optional[int] = None,
        nvjpeg_memory: Optional[dict] = None,
    ):
        check_int("batch_size", batch_size, minimum=1)
        check_int("views", views, minimum=1)
        check_int("crop_size", crop_size, minimum=1)
        check_int("local_crops", local_crops, minimum=0)
        check_int("local_crop_size", local_crop_size, minimum=1)
        check_int("seed", seed, minimum=0)
        check_int("prefetch", prefetch, minimum=1)
        for name, flag in (("drop_last", drop_last), ("shuffle", shuffle)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if device is None:
            device = "gpu" if torch.cuda.is_available() else "cpu"
        check_choice("device", device, DEVICE_CHOICES)
        check_choice("backend", backend, BACKEND_CHOICES)
        check_choice("on_error", on_error, ON_ERROR_CHOICES)
        check_choice("validate", validate, VALIDATE_CHOICES)
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {[str(d) for d in DTYPE_CHOICES]}, got {dtype!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("device='gpu' needs a CUDA device and none is available; pass device='cpu'")
        num_threads = _available_cpus() if num_threads is None else check_int("num_threads", num_threads, minimum=1)
        if (shard_id is None) != (num_shards is None):
            raise ValueError(f"give both shard_id and num_shards or neither, got shard_id={shard_id!r}, "
                             f"num_shards={num_shards!r}")
        if shard_id is None:
            shard_id, num_shards = distributed.rank(), distributed.world_size()
        check_int("num_shards", num_shards, minimum=1)
        check_int("shard_id", shard_id, minimum=0)
        if shard_id >= num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")

        self.specs = view_specs(recipe, views, crop_size, local_crops, local_crop_size)
        self.num_global_views, self.num_local_views = views, local_crops
        if isinstance(data, ImageList):
            self.images = data
        else:
            self.images = scan_images(data, labels=labels, validate=validate, on_error=on_error,
                                      num_threads=num_threads, cache_dir=cache_dir)
        self.plan = ShardPlan(len(self.images), batch_size, num_shards, shard_id, drop_last, shuffle, seed)
        if len(self.plan) == 0:
            raise ValueError(f"drop_last=True with batch_size={batch_size} x num_shards={num_shards} = "
                             f"{self.plan.step} > {len(self.images)} images: an epoch would have no batches")
        self.device, self.dtype, self.on_error, self.seed = device, dtype, on_error, seed
        self.batch_size, self.num_threads, self.prefetch = batch_size, num_threads, prefetch
        self.device_id = (device_id if device_id is not None else torch.cuda.current_device()) if device == "gpu" else None
        self.random_fields = _random_field_module(random_fields, self.specs[0], dtype)
        self.nvjpeg_memory = self._check_nvjpeg(nvjpeg_memory)
        self.backend = self._pick_backend(backend)
        self._engine = None
        self._epoch = 0
        self._resume_at = 0
        self._batches_done = 0
        self._active = None
        self._skipped = list(self.images.skipped)
        self._bad_indices = np.zeros(0, dtype=np.int64)  # found undecodable while running

    # ---- configuration ----------------------------------------------------------------------

    @staticmethod
    def _check_nvjpeg(options):
        from .dali_backend import NVJPEG_KEYS

        if options is None:
            return {}
        if not isinstance(options, dict):
            raise TypeError(f"nvjpeg_memory must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(NVJPEG_KEYS))
        if unknown:
            raise ValueError(f"nvjpeg_memory has unknown keys {unknown}; known: {list(NVJPEG_KEYS)}")
        for key, value in options.items():
            if key == "hw_decoder_load":
                if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"nvjpeg_memory['hw_decoder_load'] must be in [0, 1], got {value!r}")
            else:
                check_int(f"nvjpeg_memory[{key!r}]", value, minimum=0)
        return dict(options)

    def _pick_backend(self, backend: str) -> str:
        from .dali_backend import dali_unavailable_reason

        if backend == "torch":
            return "torch"
        reason = dali_unavailable_reason()
        if reason is None:
            return f"dali-{self.device}"
        if backend == "dali":
            raise ImportError(f"backend='dali': {reason}")
        log.info("DALI unavailable (%s): using the PIL/PyTorch DataLoader fallback", reason)
        return "torch"

    def _make_engine(self):
        finish = None
        engine_dtype = self.dtype
        if self.random_fields is not None:
            finish = _Finisher(self.random_fields, self.specs, self.dtype, self.seed)
            engine_dtype = None  # uint8 views go to the random fields
        if self.backend == "torch":
            from .torch_backend import TorchEngine

            # On device="gpu" without DALI the random fields run on the GPU after the copy.
            in_worker = finish if self.device == "cpu" else None
            engine = TorchEngine(self.images, self.specs, seed=self.seed, num_workers=self.num_threads,
                                 dtype=engine_dtype, finish=in_worker, prefetch=self.prefetch,
                                 pin_memory=self.device == "gpu")
            return engine, (finish if in_worker is None else None)
        from .dali_backend import DaliEngine

        engine = DaliEngine(self.images, self.specs, device=self.device, batch_size=self.batch_size,
                            num_threads=self.num_threads, seed=self.seed, dtype=engine_dtype,
                            prefetch=self.prefetch, device_id=self.device_id, nvjpeg_memory=self.nvjpeg_memory)
        return engine, finish

    # ---- epochs and state --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        check_int("epoch", epoch, minimum=0)
        self._close_active()
        self._epoch, self._resume_at = epoch, 0

    @property
    def skipped(self) -> list:
        """(path, reason) of every file skipped so far (at the scan or while decoding)."""
        return list(self._skipped)

    def state_dict(self) -> dict:
        """Where the loader stands: resuming from it continues with the next batch."""
        return {"epoch": self._epoch, "batches_done": self._batches_done, "seed": self.seed,
                "num_images": len(self.images), "batch_size": self.batch_size,
                "num_shards": self.plan.num_shards, "drop_last": self.plan.drop_last,
                "shuffle": self.plan.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); mid-epoch only with the same images, seed and sharding."""
        missing = [k for k in ("epoch", "batches_done", "seed", "num_images") if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected the dict from DaliSSLLoader.state_dict()")
        mine = self.state_dict()
        must_match = ["seed", "num_images", "shuffle"]
        if state["batches_done"]:
            must_match += ["batch_size", "num_shards", "drop_last"]
        mismatched = {k: (state[k], mine[k]) for k in must_match if k in state and state[k] != mine[k]}
        if mismatched:
            raise ValueError("cannot resume: the state was saved with different settings "
                             + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in mismatched.items()))
        check_int("state['epoch']", state["epoch"], minimum=0)
        check_int("state['batches_done']", state["batches_done"], minimum=0)
        if state["batches_done"] > len(self):
            raise ValueError(f"state['batches_done']={state['batches_done']} exceeds the {len(self)} batches per epoch")
        self.set_epoch(state["epoch"])
        self._resume_at = self._batches_done = state["batches_done"]
        if self._resume_at == len(self):
            self._epoch, self._resume_at, self._batches_done = self._epoch + 1, 0, 0

    # ---- iteration ---------------------------------------------------------------------------

    def __iter__(self):
        self._close_active()
        active = self._iterate()
        # Only a weak reference: the generator refers to the loader, and a strong one back would
        # make a cycle that keeps an abandoned epoch (DALI work, DataLoader workers) alive until
        # the cyclic garbage collector runs; this way it stops when its last user drops it.
        self._active = weakref.ref(active)
        return active

    def _close_active(self) -> None:
        active = self._active() if self._active is not None else None
        self._active = None
        if active is not None:
            active.close()  # drains what the engine has in flight

    def _iterate(self):
        if self._engine is None:
            self._engine, self._finish = self._make_engine()
        epoch, start = self._epoch, self._resume_at
        self._resume_at, self._batches_done = 0, start
        batches = self.plan.batches(epoch)[start:]
        if len(self._bad_indices):
            batches = [b[~np.isin(b, self._bad_indices)] for b in batches]
        out_device = torch.device("cuda", self.device_id) if self.device == "gpu" else torch.device("cpu")
        run = self._engine.run(epoch, batches, start)
        try:
            for position, (views, index, skipped) in enumerate(run, start):
                if skipped:
                    self._report(skipped)
                if self.device == "gpu":
                    views = [v.to(out_device, non_blocking=True) for v in views]
                if self._finish is not None:
                    views = self._finish(views, epoch, position)
                index_t = torch.as_tensor(np.asarray(index, dtype=np.int64))
                labels = torch.from_numpy(self.images.labels[index_t.numpy()])
                self._batches_done = position + 1
                yield {"views": views, "label": labels, "index": index_t}
        finally:
            run.close()  # on break or error: drain DALI / stop the workers now, not at garbage collection
        self._epoch, self._batches_done = epoch + 1, 0

    def _report(self, skipped: list) -> None:
        skipped = [(str(path), str(reason)) for path, reason in skipped]  # workers send lists
        if self.on_error == "raise":
            path, reason = skipped[0]
            raise CorruptImageError(path, reason)
        self._skipped.extend(skipped)
        index_of = {p: i for i, p in enumerate(self.images.paths)}
        bad = [index_of[p] for p, _ in skipped if p in index_of]
        self._bad_indices = np.union1d(self._bad_indices, np.asarray(bad, dtype=np.int64))
        warn_skipped(skipped, stacklevel=4)

    def close(self) -> None:
        """Stop the pipeline and free its threads and memory (the loader can run again later)."""
        self._close_active()
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"DaliSSLLoader({len(self.images)} images, batch_size={self.batch_size}, "
                f"views={self.num_global_views}+{self.num_local_views}, backend={self.backend!r}, "
                f"shard {self.plan.shard_id}/{self.plan.num_shards}, epoch={self._epoch})")
