"""Losses as nn.Modules (lightly-compatible constructors, plus `backend=`)."""

# contrastive losses (similarity log-sum-exp family)
from .clip import CLIPLoss  # noqa: E402
from .dcl import DCLLoss, DCLWLoss  # noqa: E402
from .info_nce import InfoNCELoss  # noqa: E402
from .isogclr import ISogCLRLoss  # noqa: E402
from .moco import MoCoLoss  # noqa: E402
from .ntxent import NTXentLoss  # noqa: E402

__all__ = globals().get("__all__", []) + [
    "CLIPLoss", "DCLLoss", "DCLWLoss", "InfoNCELoss", "ISogCLRLoss", "MoCoLoss", "NTXentLoss",
]

# cross-correlation losses (Gram / cross forms)
from .barlow_twins import BarlowTwinsLoss  # noqa: E402
from .mixed_barlow_twins import MixedBarlowTwinsLoss  # noqa: E402
from .vicreg import VICRegLoss  # noqa: E402

__all__ = globals().get("__all__", []) + ["BarlowTwinsLoss", "MixedBarlowTwinsLoss", "VICRegLoss"]
