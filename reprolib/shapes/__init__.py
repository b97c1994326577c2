"""The shapes world: a synthetic world of coloured shapes (``world``), its ruler (``measure``), and a tiny
SD-style model of it (``model``, ``train``, ``evaluate``)."""
from . import measure, world

__all__ = ["measure", "world"]
