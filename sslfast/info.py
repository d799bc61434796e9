"""`python -m sslfast.info`: versions, the device, and every backend of every op with
"available" or the reasons it cannot run here."""
from __future__ import annotations

import importlib
import platform


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # missing or broken optional dependency
        return f"not available ({type(exc).__name__})"


def report() -> str:
    import torch

    from . import __version__, dispatch

    lines = [f"sslfast {__version__}", f"python {platform.python_version()} ({platform.machine()})"]
    for mod in ("torch", "triton", "numpy", "numba", "torchvision", "nvidia.dali", "xformers", "lightly"):
        lines.append(f"{mod:<12} {_version(mod)}")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        lines.append(f"device       {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)")
    else:
        device = torch.device("cpu")
        lines.append(f"device       cpu ({torch.get_num_threads()} threads); no CUDA device")
    lines.append(f"TRITON_INTERPRET={'1' if dispatch.triton_interpreter() else 'unset'}")
    lines.append("")
    lines.append(f"{'op':<28} {'backend':<10} status on {device.type}")
    for op, name, status in dispatch.describe(device):
        lines.append(f"{op:<28} {name:<10} {status}")
    lines += ["", "what runs on each op:"]
    lines += [f"{op:<28} {', '.join(users)}" for op, users in _op_users().items()]
    lines += _crosscorr_modes()
    lines += _loader_engines(device)
    return "\n".join(lines)


def _op_users() -> dict:
    """{op: [public classes computed by it]}, from each class's `op` attribute."""
    from . import losses
    from .augment import RandomFieldAugment, SSLViews

    users: dict = {}
    for cls in [getattr(losses, name) for name in sorted(losses.__all__)] + [RandomFieldAugment, SSLViews]:
        users.setdefault(cls.op, []).append(cls.__name__)
    return dict(sorted(users.items()))


def _loader_engines(device) -> list:
    """The engines sslfast.data.DaliSSLLoader can use here."""
    from .data.dali_backend import dali_unavailable_reason

    dali = dali_unavailable_reason()
    gpu = "available" if dali is None and device.type == "cuda" else (dali or "needs a CUDA device")
    rows = [('dali, device="gpu"', gpu), ('dali, device="cpu"', dali or "available"),
            ("torch (PIL fallback)", "available")]
    return ["", 'data loader (sslfast.data.DaliSSLLoader; backend="auto" picks DALI where installed):',
            *(f"{engine:<28} {status}" for engine, status in rows)]


def _crosscorr_modes() -> list:
    """What mode="auto" picks for the cross-correlation losses (Gram N x N or cross D x D)."""
    from .ops.crosscorr import TRITON_KERNELS
    from .reference.crosscorr import REFERENCE_KERNELS, describe_modes

    return ["", "cross-correlation losses, mode=\"auto\" (cost model in sslfast.reference.crosscorr):",
            *describe_modes(REFERENCE_KERNELS), *describe_modes(TRITON_KERNELS)]


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
