"""Test setup: Triton's interpreter must be switched on before any kernel module is imported,
so that Triton kernels run on CPU tensors where no GPU is present."""
import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Child processes (subprocess tests, gloo workers) import this checkout's sslfast too.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Interpreter runs are slow and timing varies with load: no deadlines, few examples by default.
settings.register_profile(
    "sslfast",
    deadline=None,
    max_examples=int(os.environ.get("SSLFAST_HYPOTHESIS_EXAMPLES", "12")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.load_profile("sslfast")

# Tolerances per dtype (CONVENTIONS.md): relative, absolute.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
GPU_TF32_TOLERANCE = (3e-4, 3e-5)


@pytest.fixture
def tol():
    def _tol(dtype, device="cpu"):
        if device != "cpu" and dtype == torch.float32:
            return GPU_TF32_TOLERANCE
        return TOLERANCES[dtype]

    return _tol
