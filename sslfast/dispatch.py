"""The one place that picks a backend for an op (xformers' pattern, kept small).

Every op has backends "cuda" (compiled csrc/), "triton" (kernels/) and "reference" (pure
PyTorch); an op with a CPU kernel compiled by numba also has "numba" (CPU only). Each backend
declares what it supports and answers `not_supported_reasons(...)`; `select` walks
cuda -> triton -> numba -> reference and returns the first with no reasons. A backend
forced with `backend="..."` (or the SSLFAST_BACKEND environment variable) that cannot run
raises with its reasons; "auto" falls back silently and logs the choice at DEBUG level on the
"sslfast.dispatch" logger.

The Triton interpreter (TRITON_INTERPRET=1) runs Triton kernels on CPU tensors, 100-1000x
slower than torch: it is used only when "triton" is forced (tests do that), never by "auto".
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ._validation import FLOAT_DTYPES, compiling

BACKEND_ORDER = ("cuda", "triton", "numba", "reference")
BACKEND_CHOICES = ("auto",) + BACKEND_ORDER
log = logging.getLogger("sslfast.dispatch")


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unavailable_reason() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton; Linux only)"
    return None


def numba_unavailable_reason() -> Optional[str]:
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed (pip install numba)"
    return None


def cuda_extension_unavailable_reason() -> Optional[str]:
    try:
        import sslfast._C  # noqa: F401
    except ImportError:
        return ("the compiled extension sslfast._C is not built (on a CUDA machine: "
                "pip install --no-build-isolation .)")
    return None


@dataclass(frozen=True)
class Backend:
    """One implementation of one op and what it supports."""

    op: str
    name: str
    fn: Callable
    devices: tuple = ("cpu", "cuda")
    dtypes: tuple = FLOAT_DTYPES
    min_compute_capability: Optional[tuple] = None
    unavailable: Callable[[], Optional[str]] = field(default=lambda: None)
    extra_reasons: Optional[Callable[..., list]] = None

    def not_supported_reasons(self, *tensors: torch.Tensor, forced: bool = False, **kwargs) -> list:
        reason = self.unavailable()
        if reason:
            return [reason]
        reasons = []
        for t in tensors:
            if t is None:
                continue
            dev = t.device.type
            on_interpreter = self.name == "triton" and dev == "cpu" and triton_interpreter()
            if on_interpreter and not forced:
                reasons.append("cpu tensors run on the Triton interpreter only when backend='triton' is forced")
            elif dev not in self.devices and not on_interpreter:
                reasons.append(f"device {dev} not supported (supports {', '.join(self.devices)})")
            if t.is_floating_point() and t.dtype not in self.dtypes:
                reasons.append(f"dtype {t.dtype} not supported")
            if dev == "cuda" and self.min_compute_capability is not None:
                cc = torch.cuda.get_device_capability(t.device)
                if cc < tuple(self.min_compute_capability):
                    reasons.append(f"compute capability {cc} < {self.min_compute_capability}")
        if not reasons and self.extra_reasons is not None:
            reasons.extend(self.extra_reasons(*tensors, **kwargs))
        return sorted(set(reasons), key=reasons.index)


_REGISTRY: dict = {}


def register(backend: Backend) -> Backend:
    if backend.name not in BACKEND_ORDER:
        raise ValueError(f"backend name must be one of {BACKEND_ORDER}, got {backend.name!r}")
    _REGISTRY.setdefault(backend.op, {})[backend.name] = backend
    return backend


def check_backend_name(backend: Optional[str], op: Optional[str] = None) -> str:
    """Validate a user's `backend=` argument (None means auto, or SSLFAST_BACKEND); with `op`,
    a backend named explicitly must be one that op has (SSLFAST_BACKEND is checked at use)."""
    explicit = backend is not None
    if backend is None:
        backend = os.environ.get("SSLFAST_BACKEND", "auto") or "auto"
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {list(BACKEND_CHOICES)}, got {backend!r}")
    if explicit and op is not None and backend != "auto" and backend not in backends(op):
        raise ValueError(f"backend {backend!r} is not a backend of op {op!r} (it has "
                         f"{', '.join(['auto', *backends(op)])})")
    return backend


def backends(op: str) -> dict:
    if op not in _REGISTRY:
        load_all_ops()
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    return {name: _REGISTRY[op][name] for name in BACKEND_ORDER if name in _REGISTRY[op]}


def select(op: str, *tensors: torch.Tensor, backend: Optional[str] = None, **kwargs) -> Backend:
    """The backend that will run `op` on these inputs."""
    backend = check_backend_name(backend)
    candidates = backends(op)
    if backend != "auto":
        if backend not in candidates:
            raise ValueError(f"op {op!r} has no {backend!r} backend (has {list(candidates)})")
        reasons = candidates[backend].not_supported_reasons(*tensors, forced=True, **kwargs)
        if reasons:
            raise RuntimeError(f"backend {backend!r} cannot run {op!r} on these inputs: " + "; ".join(reasons))
        return candidates[backend]
    skipped = []
    for name, impl in candidates.items():
        reasons = impl.not_supported_reasons(*tensors, **kwargs)
        if not reasons:
            # Dynamo cannot trace Logger methods (a graph break under torch.compile): log eagerly only
            if not compiling() and log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s (skipped: %s)", op, name, "; ".join(skipped) or "none")
            return impl
        skipped.append(f"{name}: {', '.join(reasons)}")
    raise RuntimeError(f"no backend of {op!r} can run these inputs: " + "; ".join(skipped))


def load_all_ops() -> None:
    """Import every sslfast.ops module so that its backends are registered."""
    ops_pkg = importlib.import_module("sslfast.ops")
    for info in pkgutil.iter_modules(ops_pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"sslfast.ops.{info.name}")


def registry() -> dict:
    load_all_ops()
    return {op: backends(op) for op in sorted(_REGISTRY)}


def describe(device: Optional[torch.device] = None) -> list:
    """(op, backend, status) rows for `python -m sslfast.info`: "available" or why not."""
    rows = []
    probe_device = device or torch.device("cpu")
    probe = torch.empty(0, device=probe_device)
    for op, impls in registry().items():
        for name, impl in impls.items():
            reasons = impl.not_supported_reasons(probe)
            rows.append((op, name, "available" if not reasons else "; ".join(reasons)))
    return rows


