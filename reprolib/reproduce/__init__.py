"""``python -m reprolib.reproduce``: both papers reproduced on one model, as a report folder.

:mod:`.registry` (what a section gets and gives), :mod:`.sections` (the sections in order: ``card``, ``deltas``,
``learning``, ``layout``, ``inversion``), :mod:`.distribute` (work shared between processes by accelerate),
:mod:`.report` (the folder), :mod:`.readme` (README's tables from the numbers).
"""

from .distribute import Workers
from .registry import Claim, Context, Outcome, Registry, UnknownSection
from .report import ReportExists
from .sections import default_sections

# fmt: off
__all__ = ["Claim", "Context", "Outcome", "Registry", "ReportExists", "UnknownSection", "Workers", "default_sections"]
# fmt: on
