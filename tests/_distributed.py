"""Run a function on W gloo processes (CPU) and collect what each rank returns.

    results = run_on_ranks(worker, world_size=2, args=(...))   # results[r] is rank r's return

`worker(rank, world_size, *args)` must be a module-level function (it is pickled by name into
spawned processes) and return something torch.save can write (tensors, dicts, lists, numbers).
The process group is initialised before it runs and destroyed after; an exception on any rank
fails the caller with that rank's traceback. Use it to compare a `gather_distributed=True` run
against one process on the concatenated batch.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


COLLECTIVE_TIMEOUT_S = 60


def _entry(rank, world_size, init_file, out_dir, worker, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    # a collective that the other rank never joins fails after this, instead of hanging
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        result = {"ok": worker(rank, world_size, *args)}
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_on_ranks(worker, world_size: int = 2, args: tuple = (), timeout: float = 240.0) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.start_processes(_entry, args=(world_size, init_file, tmp, worker, args), nprocs=world_size,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    raise TimeoutError(f"gloo workers still running after {timeout} s")
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a gloo worker died: {exc}") from exc
        results = []
        for rank in range(world_size):
            path = os.path.join(tmp, f"rank{rank}.pt")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {rank} wrote no result")
            result = torch.load(path, weights_only=False)
            if "error" in result:
                raise RuntimeError(f"rank {rank} failed:\n{result['error']}")
            results.append(result["ok"])
        return results
