"""Importing sslfast must not need Triton, DALI, xformers or the extension, nor touch CUDA."""
import subprocess
import sys

CODE = r"""
import sys
import sslfast, sslfast.losses, sslfast.functional, sslfast.metrics, sslfast.dispatch
import sslfast.info
heavy = [m for m in ("triton", "nvidia.dali", "xformers", "sslfast._C", "numba") if m in sys.modules]
assert not heavy, f"importing sslfast imported {heavy}"
import torch
assert not torch.cuda.is_initialized(), "importing sslfast initialised CUDA"
print("ok")
"""


def test_import_is_light():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_info_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "sslfast.info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "similarity_lse" in out.stdout and "reference  available" in out.stdout


def test_info_names_what_runs_on_each_op_and_the_loader_engines():
    import sslfast.losses
    from sslfast.info import report

    text = report()
    users = text.split("what runs on each op:")[1].split("\n\n")[0]
    for name in sslfast.losses.__all__ + ["RandomFieldAugment", "SSLViews"]:
        assert name in users, name
    assert "similarity_lse               CLIPLoss" in users
    assert 'dali, device="cpu"' in text and "torch (PIL fallback)         available" in text


def test_every_loss_module_has_its_function_and_both_are_exported():
    """sslfast.losses and sslfast.functional mirror each other: one function per module, both in __all__."""
    import re

    import sslfast.functional as SF
    import sslfast.losses as L

    def snake(name):  # NTXentLoss -> nt_xent_loss, ISogCLRLoss -> isogclr_loss, CLIPLoss -> clip_loss
        special = {"NTXentLoss": "nt_xent_loss", "ISogCLRLoss": "isogclr_loss", "InfoNCELoss": "info_nce_loss",
                   "MoCoLoss": "moco_loss"}
        return special.get(name) or re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name[:-len("Loss")]).lower() + "_loss"

    assert sorted(SF.__all__) == sorted(snake(name) for name in L.__all__)
    for name in SF.__all__:
        assert callable(getattr(SF, name)) and getattr(SF, name).__doc__, name
