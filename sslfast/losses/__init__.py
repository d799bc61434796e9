"""Losses as nn.Modules (lightly-compatible constructors, plus `backend=`)."""
