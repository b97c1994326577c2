"""The report's sections, in order: adding one is a class with ``name``, ``title``, ``skip`` and ``run`` (the
:class:`reprolib.protocols.ReportSection` protocol) and a line here."""

from __future__ import annotations

from .card import CardSection
from .deltas import DeltaSection
from .inversion import InversionSection
from .layout import LayoutSection
from .learning import LearningSection
from .registry import Registry


def default_sections() -> Registry:
    """Every section this reprolib can run."""
    return Registry(
        [
            CardSection(),
            DeltaSection(),
            LearningSection(),
            LayoutSection(),
            InversionSection(),
        ]
    )
