"""The shapes world (``world``, its ruler ``measure``) and its tiny SD-style model
(``tokenizer``, ``model``, ``train``).

The probes that measure methods on this world live apart, in :mod:`reprolib.evaluation`.
"""

from . import measure, world

__all__ = ["measure", "world"]
