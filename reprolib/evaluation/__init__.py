"""Probes that measure the methods on the shapes world with its ruler, apart from the method code.

``deltas`` (size against α, leak to the other object), ``layout`` (in-box fraction per method),
``localisation`` (where a noun's attention goes), ``faithfulness`` (does the image match its caption),
``specificity`` (does an edit leave the other object alone), ``binding`` (are two near colours drawn as two objects),
``card`` (the model card), ``stats``. CLI: ``python -m reprolib.evaluation --n 200 --attention 32``.
"""

from .deltas import Sweep, presence, size_sweep
from .layout import DEFAULT_CASES, Case, LayoutTable, layout_probe, methods
from .stats import spearman

# faithfulness() and localisation() are imported from their modules of the same name (a re-export here
# would hide the module behind the function)
# fmt: off
__all__ = ["DEFAULT_CASES", "Case", "LayoutTable", "Sweep", "layout_probe", "methods", "presence", "size_sweep",
           "spearman"]
# fmt: on
