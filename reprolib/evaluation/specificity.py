"""Subject specificity of attribute edits: does an edit of one object leave the other one alone?

For every shape as the edited subject and every shape as the bystander ("a red circle and a blue
triangle", "a red square and a blue square", ...), the size delta at α is added to the subject's
token only, and the ruler measures both objects' areas at α = 0 and α. *Leak* is the bystander's
mean area change ÷ the subject's (0: perfectly specific). *Composition*: size and colour edits
stacked on the subject; how often the bystander is still in the picture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..delta import Delta
from ..edits import Edit
from ..shapes import world
from .deltas import Sweep, presence, size_sweep


def subject_pattern(colour: str, shape: str) -> re.Pattern:
    """A regex selecting only this object's noun ("red (circle)"), so a repeated shape edits one object."""
    return re.compile(rf"\b{colour}\s+({shape})\b")


@dataclass
class Specificity:
    """Leak per (subject, bystander) shape pair, and the bystander's presence under stacked edits."""

    alpha: float
    seeds: list[int]
    leak: dict[tuple[str, str], float] = field(default_factory=dict)
    growth: dict[tuple[str, str], float] = field(default_factory=dict)  # the subject's mean area change (px)
    kept: dict[tuple[str, str], float] = field(default_factory=dict)
    sweeps: dict[tuple[str, str], Sweep] = field(default_factory=dict, repr=False)  # areas, images dropped

    @classmethod
    def merge(cls, parts: list[Specificity]) -> Specificity:
        """One result from results on disjoint seeds (e.g. from several processes), as if measured at once.

        Presence is averaged weighted by seeds; leak and growth are recomputed from the joined areas.
        """
        out = cls(parts[0].alpha, [s for p in parts for s in p.seeds])
        for key in parts[0].sweeps:
            sw = [p.sweeps[key] for p in parts]
            joined = Sweep(
                sw[0].alphas,
                out.seeds,
                np.concatenate([w.target for w in sw], axis=1),
                np.concatenate([w.other for w in sw], axis=1),
                [],
            )
            out.sweeps[key] = joined
            out.leak[key] = joined.leak()
            t = np.nanmean(joined.target, axis=1)
            out.growth[key] = float(t[-1] - t[0])
            if key in parts[0].kept:
                out.kept[key] = float(sum(p.kept[key] * len(p.seeds) for p in parts) / len(out.seeds))
        return out

    def worst_leak(self) -> float:
        return max(self.leak.values())

    def worst_kept(self) -> float:
        return min(self.kept.values()) if self.kept else float("nan")

    def numbers(self) -> dict:
        """The figures as JSON-ready numbers (the evaluation CLI's ``--json`` and the report's results)."""
        return {
            "alpha": self.alpha,
            "seeds": len(self.seeds),
            "worst_leak": self.worst_leak(),
            "worst_kept": self.worst_kept(),
            "pairs": {
                f"{s} -> {b}": {"leak": v, "growth_px": self.growth[(s, b)], "kept": self.kept.get((s, b))}
                for (s, b), v in self.leak.items()
            },
        }

    def format(self) -> str:
        lines = [
            f"size delta at α = {self.alpha:g} on the subject, {len(self.seeds)} seeds; leak = bystander's "
            "area change ÷ subject's",
            f"{'subject → bystander':<24}{'leak':>8}{'subject Δpx':>13}"
            + (f"{'bystander kept':>16}" if self.kept else ""),
        ]
        for key, v in self.leak.items():
            kept = f"{self.kept[key]:16.2f}" if key in self.kept else ""
            lines.append(f"{key[0] + ' → ' + key[1]:<24}{v:8.3f}{self.growth[key]:13.0f}{kept}")
        kept = f"; worst kept {self.worst_kept():.2f}" if self.kept else ""
        lines.append(f"worst leak {self.worst_leak():.3f}{kept}")
        return "\n".join(lines)

    __str__ = format


def specificity(
    pipe,
    size: Delta,
    colour: Delta | None = None,
    *,
    alpha: float = 1.5,
    seeds=range(12),
    colours: tuple[str, str] = ("red", "blue"),
    composition: tuple[float, float] = (2.0, 1.0),
    **generate_kwargs,
) -> Specificity:
    """Measure leak for every (subject, bystander) shape pair; with ``colour``, also the stacked-edit presence.

    The composition prompt's bystander is green (the colour delta turns red into blue, so a blue
    bystander could not be told from the recoloured subject).
    """
    seeds = [int(s) for s in seeds]
    out = Specificity(alpha, seeds)
    a, b = colours
    for subject in world.SHAPES:
        for bystander in world.SHAPES:
            prompt = f"a {a} {subject} and a {b} {bystander}"
            sweep = size_sweep(
                pipe,
                size,
                prompt,
                subject_pattern(a, subject),
                (a, subject),
                (b, bystander),
                alphas=(0.0, alpha),
                seeds=seeds,
                **generate_kwargs,
            )
            sweep.images = []
            out.sweeps[(subject, bystander)] = sweep
            out.leak[(subject, bystander)] = sweep.leak()
            t = np.nanmean(sweep.target, axis=1)
            out.growth[(subject, bystander)] = float(t[-1] - t[0])
            if colour is not None:
                s_alpha, c_alpha = composition
                edits = [
                    Edit(size, subject_pattern(a, subject), s_alpha),
                    Edit(colour, subject_pattern(a, subject), c_alpha),
                ]
                out.kept[(subject, bystander)] = presence(
                    pipe,
                    f"a {a} {subject} and a green {bystander}",
                    edits,
                    ("green", bystander),
                    seeds=seeds,
                    **generate_kwargs,
                )
    return out
