"""Checkpoints that survive being killed, and the random state that makes a resume exact.

* `save_atomic` writes to a temporary file in the target folder, flushes it to disk and renames
  it over the target: a reader sees the old checkpoint or the new one, never a torn file, and a
  kill during the write leaves the previous checkpoint intact.
* `rng_state` / `set_rng_state` capture every generator a training step draws from: Python's
  `random`, NumPy's global generator, torch's CPU generator and every CUDA device's. Restoring
  them (plus model, optimiser, schedule step and loader position) makes a resumed run take the
  same steps, bit for bit on CPU, as one that was never interrupted.
* `StopRequest` turns SIGINT/SIGTERM into a flag that the loop polls between steps, so the
  checkpoint it then writes describes a consistent state (never half an optimiser step). A
  second SIGINT interrupts at once (the last checkpoint on disk is still whole).
"""
from __future__ import annotations

import os
import random
import signal
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

FORMAT = "sslfast-pretrain-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str) -> str:
    """torch.save(obj) to `path` through a temporary file + fsync + rename."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a pretraining checkpoint written by `save_atomic`, checking that it is one; the
    dict gets "path", the absolute path it was read from (a moved run folder still resumes)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path!r} could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an sslfast pretraining checkpoint (format marker missing)")
    if state.get("version") != VERSION:
        raise ValueError(f"{path!r} has checkpoint version {state.get('version')}, this sslfast reads {VERSION}")
    state["path"] = os.path.abspath(path)
    return state


def rng_state() -> Dict[str, Any]:
    """Every random generator a training step may draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set `requested` instead of killing.

    Example:
        >>> import os, signal
        >>> from sslfast.train.checkpoint import StopRequest
        >>> with StopRequest() as stop:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     stop.requested, stop.signal_name
        (True, 'SIGTERM')
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False  # a signal reached this process
        self.requested_everywhere = False  # set by the loop once every rank has agreed to stop
        self.signal_name: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
