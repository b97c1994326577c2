"""The report's sections, by name: what a section gets (:class:`Context`), what it gives back (:class:`Outcome`),
and the :class:`Registry` that picks sections by name and refuses unknown ones before any work."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocols import ReportSection
from .distribute import Workers


class UnknownSection(ValueError):
    """A section name that is not registered; the message lists the known ones."""


@dataclass
class Claim:
    """One claim of a paper, what was measured here, the figure that shows it and how this differs from the paper."""

    paper: str
    claim: str
    measured: str
    figure: str | None = None
    deviation: str = "none"


@dataclass
class Outcome:
    """A section's result. ``numbers`` are deterministic (equal on any number of processes); ``timings`` depend
    on the machine. ``figures``: file stem → matplotlib figure or PIL image. ``skipped``: (metric, why)."""

    numbers: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every section gets: the pipeline, the model's name, quick or full, and the processes to share work."""

    pipe: Any
    model: str
    quick: bool
    workers: Workers

    @property
    def ruler(self) -> bool:
        """True on the shipped shapes world: its ruler reads objects, sizes and positions from the pictures."""
        return self.model == "shapes"

    def pick(self, quick, full):
        """``quick`` in a ``--quick`` run, else ``full``."""
        return quick if self.quick else full


class Registry:
    """Sections in report order; :meth:`select` checks names up front."""

    def __init__(self, sections: Iterable[ReportSection]):
        self.sections: dict[str, ReportSection] = {}
        for s in sections:
            self.add(s)

    def add(self, section: ReportSection) -> None:
        if not isinstance(section, ReportSection):
            raise TypeError(f"{section!r} is not a ReportSection (name, title, skip(model), run(context))")
        if section.name in self.sections:
            raise ValueError(f"a section named {section.name!r} is registered already")
        self.sections[section.name] = section

    @property
    def names(self) -> list[str]:
        return list(self.sections)

    def select(self, names: Iterable[str] | None = None) -> list[ReportSection]:
        """The sections named (all when None), in report order; :class:`UnknownSection` for any other name."""
        if names is None:
            return list(self.sections.values())
        names = list(names)
        unknown = [n for n in names if n not in self.sections]
        if unknown:
            raise UnknownSection(f"--sections: unknown section(s) {unknown}; choose from {', '.join(self.names)}")
        return [s for n, s in self.sections.items() if n in names]
