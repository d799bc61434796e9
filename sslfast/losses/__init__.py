"""Losses as nn.Modules (lightly-compatible constructors, plus `backend=`)."""

# cross-correlation losses (Gram / cross forms)
from .barlow_twins import BarlowTwinsLoss  # noqa: E402
from .mixed_barlow_twins import MixedBarlowTwinsLoss  # noqa: E402
from .vicreg import VICRegLoss  # noqa: E402

__all__ = globals().get("__all__", []) + ["BarlowTwinsLoss", "MixedBarlowTwinsLoss", "VICRegLoss"]
