"""Input checks shared by every public entry point.

Each check raises TypeError/ValueError naming the argument, what was expected and what was
given. The finiteness check reads a value back to the host, so it is skipped while
torch.compile traces and can be switched off for speed with SSLFAST_CHECK_FINITE=0.
"""
import os
from numbers import Real

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compiling() -> bool:
    """Whether torch.compile is tracing (checks that read values back must not run then)."""
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def value_checks_enabled() -> bool:
    """Whether checks that read tensor values back to the host run (see the module docstring)."""
    return os.environ.get("SSLFAST_CHECK_FINITE", "1") != "0" and not compiling()


def check_tensor(name: str, x, *, ndim=None, min_size0: int = 0, what: str = "rows") -> torch.Tensor:
    """A floating tensor of `ndim` dims (an int or a tuple of allowed ranks), finite, with at
    least `min_size0` entries along dim 0."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {x.dtype}")
    if x.dim() > 0 and x.shape[0] < min_size0:
        noun = what[:-1] if min_size0 == 1 and what.endswith("s") else what  # "1 row", "2 rows"
        raise ValueError(f"{name} needs at least {min_size0} {noun}, got {x.shape[0]} (shape {tuple(x.shape)})")
    if x.dim() > 1 and x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty feature dimension, got shape {tuple(x.shape)}")
    check_finite(name, x)
    return x


def check_finite(name: str, x: torch.Tensor) -> None:
    # one pass: min and max are finite iff every entry is (NaN propagates through both)
    if x.numel() and value_checks_enabled() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf value(s) (shape {tuple(x.shape)})")


def check_embeddings(name: str, z, *, min_batch: int = 1) -> torch.Tensor:
    """A (N, D) floating embedding matrix with N >= min_batch."""
    return check_tensor(name, z, ndim=2, min_size0=min_batch, what="samples (rows)")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def check_same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same feature dimension D, got {a.shape[-1]} and {b.shape[-1]}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    bad = value < 0 if allow_zero else value <= 0
    if bad or value != value or value in (float("inf"), float("-inf")):
        op = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {op}, got {value}")
    return value


def check_nonnegative(name: str, value) -> float:
    return check_positive(name, value, allow_zero=True)


def check_int(name: str, value, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_same_dtype(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def check_fraction(name: str, value, *, allow_zero: bool = False) -> float:
    """A real number in (0, 1] (or [0, 1])."""
    value = check_positive(name, value, allow_zero=allow_zero)
    if value > 1:
        low = "[0" if allow_zero else "(0"
        raise ValueError(f"{name} must be in {low}, 1], got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_index(name: str, index, *, length: int, size: int, distinct: bool = True) -> torch.Tensor:
    """A 1-D integer tensor of `length` entries in [0, size), pairwise distinct. The value checks
    read back to the host, so they follow the finiteness check's switch (SSLFAST_CHECK_FINITE)."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of sample indices, got {type(index).__name__}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {index.dtype}")
    if index.dim() != 1 or index.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(index.shape)}")
    if index.numel() and value_checks_enabled():
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= size:
            raise ValueError(f"{name} must lie in [0, {size}), got values from {low} to {high}")
        if distinct and torch.unique(index).numel() != index.numel():
            raise ValueError(f"{name} must not repeat a sample within a batch, got {index.numel()} entries "
                             f"with {torch.unique(index).numel()} distinct")
    return index


def check_index_range(name: str, idx, *, length: int, device, low: int, high: int) -> torch.Tensor:
    """An integer (length,) tensor on `device` with values in [low, high), returned as int64.
    The value range is checked where value checks are enabled (it reads the tensor back)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {idx.dtype}")
    if idx.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(idx.shape)}")
    if idx.device != torch.device(device):
        raise ValueError(f"{name} must be on {device}, got {idx.device}")
    if length and value_checks_enabled():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < low or hi >= high:
            raise ValueError(f"{name} values must lie in [{low}, {high - 1}], got values from {lo} to {hi}")
    return idx.to(torch.int64)


def check_finite_real(name: str, value) -> float:
    """A finite real number (any sign)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
