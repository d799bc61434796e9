"""The DALI engine: one pipeline definition, decoded and augmented on the GPU ("mixed" nvJPEG
decoder, GPU operators) or on CPU threads (device_id=None).

Graph, per batch:

    external_source -> encoded bytes, global index, and per view a row of 13 parameters
    decoders.image(device="mixed" | "cpu", RGB, EXIF orientation)
    per view: resize(ROI = the sampled crop, antialiased linear) -> color_twist -> gaussian_blur
              -> solarize (x XOR 255 where x >= 128)
              -> crop_mirror_normalize(mirror flag, mean/std, CHW, output dtype)

Operators a view's spec can never use (no jitter, blur or solarize) are left out of the graph,
and colour, blur and solarize run under DALI conditionals (the batch is split by the per-sample
flag and merged again), so that only the samples drawn for them pay for them: on DALI's CPU
backend a blur with a 1-tap window still costs ~9 copies of a 224x224 image, a colour twist
with identity parameters ~13 (measured single-threaded).

Why external_source instead of fn.readers.file: the reader shuffles within a buffer per shard,
keeps its epoch position inside the pipeline and stops the pipeline on the first undecodable
file. Feeding the pipeline ourselves gives a global per-epoch permutation shared by every rank
(sslfast.data.sampling), set_epoch and mid-epoch resume without replaying data, a partial last
batch with no padding to trim, and augmentation parameters that are pure functions of
(seed, epoch, index), identical on the GPU, CPU and fallback paths. Reading a batch of files
in the Python callback costs well under a millisecond per image from the page cache; DALI runs
the callback ahead of the consumer (prefetch_queue_depth), overlapping it with decoding.

Failure handling: a file that passes the up-front checks and still fails to decode raises out
of the pipeline (DALI marks the pipeline object invalid). The engine then finds the file(s)
among the batches in flight by decoding them with PIL, reports them through `on_bad`, rebuilds
the pipeline and feeds the in-flight batches again without them. Errors that name no bad file
are re-raised with the files of the batches in flight. Nothing waits on a queue that an error
could leave empty, so nothing hangs.

GPU path (device="gpu"): identical graph with the decoder on "mixed" and the per-sample
solarize flag moved to the GPU; outputs are made ready on PyTorch's current stream. It cannot
run on CPU-only machines and is unverified there (see benchmarks/RESULTS.md).
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import torch

from .torch_backend import decode

MIB = 1 << 20


def dali_unavailable_reason() -> Optional[str]:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as exc:
        return (f"NVIDIA DALI is not installed or cannot be imported ({exc}); "
                "install it with pip install 'sslfast[dali]' (nvidia-dali-cuda130)")
    return None


def default_nvjpeg_memory(sizes: np.ndarray, batch_size: int, budget_bytes: int = 512 * MIB) -> dict:
    """nvJPEG preallocation: DALI's default paddings (16 MiB device, 8 MiB host), and the
    hardware decoder preallocated for the dataset's largest image only while batch_size such
    images fit in `budget_bytes` (the huge ImageNet paddings of DALI's examples exhausted
    12 GB GPUs in solo-learn #104)."""
    height, width = (int(v) for v in np.max(sizes, axis=0))
    fits = batch_size * height * width * 3 <= budget_bytes
    return {
        "device_memory_padding": 16 * MIB,
        "host_memory_padding": 8 * MIB,
        "preallocate_height_hint": height if fits else 0,
        "preallocate_width_hint": width if fits else 0,
    }


NVJPEG_KEYS = ("device_memory_padding", "host_memory_padding", "preallocate_height_hint",
               "preallocate_width_hint", "hw_decoder_load", "device_memory_padding_jpeg2k",
               "host_memory_padding_jpeg2k")


class _Feeder:
    """The external_source callback: hands out queued batches and remembers those in flight.

    File reads run in a small thread pool, one batch ahead of the batch DALI asks for, so that
    neither the Python callback nor disk latency holds the decoders up (a single thread reads
    ~250 ImageNet JPEGs in ~50 ms, as long as a GPU takes to decode them).

    An empty batch (every file of it found corrupt at run time) cannot go through DALI: it is
    put in flight as a placeholder, and the consumer yields it empty in its place, so that the
    number of batches per epoch stays the same on every rank.
    """

    def __init__(self, paths, make_params: Callable, read_threads: int):
        self.paths, self.make_params = paths, make_params
        self.pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="sslfast-read")
        self.read_threads = read_threads
        self.queue: collections.deque = collections.deque()
        self.in_flight: collections.deque = collections.deque()
        self._reads: dict = {}

    def _read_many(self, indices) -> list:
        out = []
        for i in indices:
            with open(self.paths[i], "rb") as fh:
                out.append(np.frombuffer(fh.read(), dtype=np.uint8))
        return out

    def _start_reads(self, key) -> None:
        if id(key) not in self._reads:
            chunks = np.array_split(np.asarray(key[2]), min(self.read_threads, len(key[2])))
            self._reads[id(key)] = (key, [self.pool.submit(self._read_many, c) for c in chunks])

    def reset(self, keys=()) -> None:
        self.queue = collections.deque(keys)
        self.in_flight.clear()
        self._reads.clear()

    def __call__(self):
        while self.queue and len(self.queue[0][2]) == 0:
            self.in_flight.append(self.queue.popleft())
        if not self.queue:
            raise StopIteration
        key = self.queue.popleft()
        self._start_reads(key)
        for ahead in self.queue:  # the next batch with files: read it while DALI decodes this one
            if len(ahead[2]):
                self._start_reads(ahead)
                break
        _, futures = self._reads.pop(id(key))
        self.in_flight.append(key)
        encoded = [data for future in futures for data in future.result()]
        epoch, _, indices = key
        params = self.make_params(epoch, indices)  # one (n, 13) array per view
        return [encoded, [np.array(i, dtype=np.int64) for i in indices], *[list(p) for p in params]]

    def close(self) -> None:
        self._reads.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _build_pipeline(feeder: _Feeder, specs, *, device: str, batch_size: int, num_threads: int,
                    device_id: Optional[int], prefetch: int, seed: int, dtype: Optional[torch.dtype],
                    nvjpeg: dict):
    from nvidia.dali import fn, pipeline_def, types

    out_type = {None: types.UINT8, torch.uint8: types.UINT8, torch.float32: types.FLOAT,
                torch.float16: types.FLOAT16}[dtype]
    gpu = device == "gpu"

    def _recolour(view, p):
        return fn.color_twist(view, brightness=p[4], contrast=p[5], saturation=p[6], hue=p[7])

    def _blur(view, p):
        return fn.gaussian_blur(view, window_size=fn.cast(p[8], dtype=types.INT32), sigma=p[9])

    def _solarize(view, p):
        flag = fn.cast(p[10], dtype=types.UINT8)  # 255 where the sample solarizes
        return view ^ ((view >= 128) * (flag.gpu() if gpu else flag))  # 255 - x == x XOR 255 for uint8

    # enable_conditionals turns `if <per-sample DataNode>:` into a split of the batch and a merge
    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                  prefetch_queue_depth=prefetch, seed=seed, exec_dynamic=True, enable_conditionals=True)
    def ssl_pipeline():
        encoded, index, *params = fn.external_source(
            source=feeder, num_outputs=2 + len(specs), batch=True,
            dtype=[types.UINT8, types.INT64] + [types.FLOAT] * len(specs))
        decoder_options = nvjpeg if gpu else {}
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                   **decoder_options)
        outputs = []
        for spec, p in zip(specs, params):
            view = fn.resize(images, size=[spec.size, spec.size], roi_start=p[0:2], roi_end=p[2:4],
                             roi_relative=False, antialias=True, interp_type=types.INTERP_LINEAR)
            if spec.jitter_p == 1.0:
                view = _recolour(view, p)
            elif spec.jitters:
                if p[12] > 0.0:
                    view = _recolour(view, p)
            if spec.blur_p == 1.0:
                view = _blur(view, p)
            elif spec.blur_p > 0:
                if p[8] > 1.0:  # per-sample branch: only the samples drawn for blurring pay for it
                    view = _blur(view, p)
            if spec.solarize_p > 0:
                if p[10] > 0.0:
                    view = _solarize(view, p)
            normalise = out_type != types.UINT8
            outputs.append(fn.crop_mirror_normalize(
                view, mirror=fn.cast(p[11], dtype=types.INT32), output_layout="CHW", dtype=out_type,
                mean=[255.0 * m for m in spec.mean] if normalise else [0.0],
                std=[255.0 * s for s in spec.std] if normalise else [1.0]))
        return (index, *outputs)

    pipe = ssl_pipeline()
    pipe.build()
    return pipe


class DaliEngine:
    """Runs an epoch's batches through a DALI pipeline (see the module docstring)."""

    def __init__(self, images, specs, *, device: str, batch_size: int, num_threads: int, seed: int,
                 dtype: Optional[torch.dtype], prefetch: int = 2, device_id: Optional[int] = None,
                 nvjpeg_memory: Optional[dict] = None):
        from .sampling import view_params

        reason = dali_unavailable_reason()
        if reason:
            raise ImportError(reason)
        self.name = f"dali-{device}"
        self.paths, self.sizes = images.paths, images.sizes
        self.specs, self.device, self.dtype = specs, device, dtype
        self.device_id = device_id
        nvjpeg = default_nvjpeg_memory(images.sizes, batch_size)
        nvjpeg.update(nvjpeg_memory or {})
        self._build_args = dict(device=device, batch_size=batch_size, num_threads=num_threads,
                                device_id=device_id, prefetch=prefetch, seed=seed, dtype=dtype, nvjpeg=nvjpeg)

        def make_params(epoch, indices):
            return [view_params(spec, self.sizes[indices], indices, seed=seed, epoch=epoch, view=v).packed()
                    for v, spec in enumerate(specs)]

        self.feeder = _Feeder(self.paths, make_params, read_threads=min(8, max(2, num_threads)))
        self.pipe = None

    def _rebuild(self) -> None:
        self._close_pipeline()
        self.pipe = _build_pipeline(self.feeder, self.specs, **self._build_args)

    def _close_pipeline(self) -> None:
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            del pipe

    def close(self) -> None:
        self._close_pipeline()
        self.feeder.close()

    def _to_torch(self, tensor_list) -> torch.Tensor:
        # exec_dynamic outputs are not recycled by DALI, so sharing them through DLPack is safe
        # (DALI's own PyTorch iterator does the same); DLPack orders the GPU work for us.
        tensor = tensor_list.as_tensor()
        if self.device == "gpu" and "GPU" in type(tensor).__name__:
            with torch.cuda.device(self.device_id):
                return torch.from_dlpack(tensor)
        return torch.from_dlpack(tensor)

    def _undecodable(self, keys) -> list:
        """(path, reason) of the files in these batches that PIL cannot decode."""
        found = []
        for _, _, indices in keys:
            for i in indices:
                try:
                    decode(self.paths[i])
                except Exception as exc:  # noqa: BLE001
                    found.append((int(i), f"cannot be decoded ({type(exc).__name__}: {exc})"))
        return found

    def run(self, epoch: int, batches: list, first_position: int = 0):
        """Yields (views, indices, skipped) per batch, in order. Closing the generator early
        drains the batches in flight, so that the next epoch starts clean."""
        if self.pipe is None:
            self._rebuild()
        self.pipe.reset()  # a no-op unless the previous epoch ran to its end
        feeder = self.feeder
        feeder.reset((epoch, first_position + k, b) for k, b in enumerate(batches))
        skipped: list = []
        finished = False
        try:
            while True:
                try:
                    if self.device == "gpu":
                        outputs = self.pipe.run(torch.cuda.current_stream(self.device_id))
                    else:
                        outputs = self.pipe.run()
                except StopIteration:
                    break
                except Exception as err:  # DALI raises RuntimeError/IndexError on failures
                    skipped += self._recover(err)
                    continue
                while len(feeder.in_flight[0][2]) == 0:  # placeholders of emptied batches
                    feeder.in_flight.popleft()
                    yield self._empty(), np.zeros(0, dtype=np.int64), skipped
                    skipped = []
                epoch_, position, expected = feeder.in_flight.popleft()
                index = self._to_torch(outputs[0]).reshape(-1).cpu().numpy()
                if not np.array_equal(index, expected):  # would mean a feeder/pipeline mismatch
                    raise RuntimeError(f"DALI returned samples {index[:8]} for batch {position} of epoch "
                                       f"{epoch_}, expected {np.asarray(expected)[:8]}")
                yield [self._to_torch(o) for o in outputs[1:]], index, skipped
                skipped = []
            for _ in range(len(feeder.in_flight) + len(feeder.queue)):  # trailing placeholders
                yield self._empty(), np.zeros(0, dtype=np.int64), skipped
                skipped = []
            finished = True
        finally:
            if not finished and self.pipe is not None:
                self._drain()

    def _empty(self) -> list:
        device = torch.device("cuda", self.device_id) if self.device == "gpu" else torch.device("cpu")
        dtype = self.dtype or torch.uint8
        return [torch.empty(0, 3, s.size, s.size, dtype=dtype, device=device) for s in self.specs]

    def _recover(self, err: Exception) -> list:
        """After a pipeline failure: find the bad files among the batches in flight, rebuild the
        pipeline and queue those batches again without them; re-raise if no file is to blame."""
        in_flight = list(self.feeder.in_flight)
        bad = self._undecodable(in_flight)
        if not bad:
            files = [self.paths[i] for _, _, idx in in_flight for i in idx][:16]
            raise RuntimeError(f"the DALI pipeline failed on a batch of these files (first 16): {files}") from err
        bad_indices = {i for i, _ in bad}
        retry = [(e, p, np.array([i for i in idx if int(i) not in bad_indices], dtype=np.int64))
                 for e, p, idx in in_flight]
        self.feeder.reset(retry + list(self.feeder.queue))
        self._rebuild()
        return [(self.paths[i], reason) for i, reason in bad]

    def _drain(self) -> None:
        self.feeder.reset()
        try:
            while True:
                self.pipe.run()
        except StopIteration:
            pass
        except Exception:  # a failing pipeline is rebuilt at the next epoch
            self._close_pipeline()
        self.feeder.reset()
