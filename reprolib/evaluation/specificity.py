"""Subject specificity of attribute edits: does an edit of one object leave the other one alone?

For every shape as the edited subject and every shape as the bystander ("a red circle and a blue
triangle", "a red square and a blue square", ...), the size delta at α is added to the subject's
token only, and the ruler measures both objects' areas at α = 0 and α. *Leak* is the bystander's
mean area change ÷ the subject's (0: perfectly specific). *Composition*: size and colour edits
stacked on the subject; how often the bystander is still in the picture, for each bystander colour
asked for (the worst of them is the pair's figure), and, in the same pictures, how often the edit took
(the subject is blue): a model can keep the bystander by not editing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .. import checks
from ..delta import Delta
from ..edits import Edit
from ..shapes import world
from .deltas import Sweep, presences, size_sweep


def subject_pattern(colour: str, shape: str) -> re.Pattern:
    """A regex selecting only this object's noun ("red (circle)"), so a repeated shape edits one object."""
    return re.compile(rf"\b{colour}\s+({shape})\b")


COLOUR_TARGET = "blue"  # what the shapes colour delta (configs/shapes/colour.yaml) turns its subject into
PAPER_REACH = ("keys+values", "keys+values")  # the size and the colour edits' reach as Baumann et al. apply them
# How the shapes world composes the two edits (session 27; benchmarks/shapes_bars.py): size on the values
# alone, so the grown subject keeps its own pixels instead of taking the bystander's; colour on keys and
# values from the first step, since this world settles colour within the paper's delay
COMPOSED_REACH, COMPOSED_COLOUR_DELAY = ("values", "keys+values"), 0.0


def edit_arguments(parser, *, reach: tuple[str, str], colour_delay: float | None, scope: str) -> None:
    """``--reach SIZE COLOUR`` and ``--colour-delay D`` on a command line: how :func:`specificity` applies its
    size and colour edits, with these defaults; ``scope`` begins their help (where the flags act)."""
    parser.add_argument(
        "--reach",
        nargs=2,
        default=list(reach),
        choices=list(checks.REACHES),
        metavar=("SIZE", "COLOUR"),
        help=f"{scope}: what cross-attention reads the size and the colour edits' tokens for (Edit.reach): "
        f"keys+values (the paper) or values (keys from the unedited tokens); default: {' '.join(reach)}",
    )
    parser.add_argument(
        "--colour-delay",
        type=float,
        default=colour_delay,
        metavar="D",
        help=f"{scope}: the colour edit's own delay (Edit.delay; 0 starts it at the first step); default: "
        + ("the library's, as the size edit's" if colour_delay is None else f"{colour_delay:g}"),
    )


@dataclass
class Specificity:
    """Leak per (subject, bystander) shape pair, and the bystander's presence under stacked edits."""

    alpha: float
    seeds: list[int]
    reach: tuple[str, str] = PAPER_REACH  # the size and the colour edits' (Edit.reach)
    colour_delay: float | None = None  # the colour edit's own delay (Edit.delay; None: generate's)
    leak: dict[tuple[str, str], float] = field(default_factory=dict)
    growth: dict[tuple[str, str], float] = field(default_factory=dict)  # the subject's mean area change (px)
    kept_by_colour: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    # in the same pictures: the subject recoloured (blue), i.e. the stacked edit took
    edited_by_colour: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    sweeps: dict[tuple[str, str], Sweep] = field(default_factory=dict, repr=False)  # areas, images dropped

    @classmethod
    def merge(cls, parts: list[Specificity]) -> Specificity:
        """One result from results on disjoint seeds (e.g. from several processes), as if measured at once.

        Presence is averaged weighted by seeds; leak and growth are recomputed from the joined areas.
        """
        out = cls(parts[0].alpha, [s for p in parts for s in p.seeds], parts[0].reach, parts[0].colour_delay)
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
            for colour in parts[0].kept_by_colour:
                for name in ("kept_by_colour", "edited_by_colour"):
                    share = sum(getattr(p, name)[colour][key] * len(p.seeds) for p in parts) / len(out.seeds)
                    getattr(out, name).setdefault(colour, {})[key] = float(share)
        return out

    @property
    def kept(self) -> dict[tuple[str, str], float]:
        """Each pair's bystander presence under the stacked edit: the worst over the bystander colours."""
        pairs = next(iter(self.kept_by_colour.values()), {})
        return {key: min(by[key] for by in self.kept_by_colour.values()) for key in pairs}

    def worst_edited(self) -> float:
        """The stacked edit's weakest pair: the least share of pictures whose subject turned blue."""
        return min((v for by in self.edited_by_colour.values() for v in by.values()), default=float("nan"))

    def seeds_behind(self, pair: tuple[str, str]) -> tuple[int, int] | None:
        """The pair's ``Sweep.seeds_behind_leak`` (None where its areas were not kept)."""
        return self.sweeps[pair].seeds_behind_leak() if pair in self.sweeps else None

    def worst_leak(self) -> float:
        return max(self.leak.values())

    def worst_kept(self) -> float:
        kept = self.kept
        return min(kept.values()) if kept else float("nan")

    def numbers(self) -> dict:
        """The figures as JSON-ready numbers (the evaluation CLI's ``--json`` and the report's results)."""
        kept = self.kept
        return {
            "alpha": self.alpha,
            "seeds": len(self.seeds),
            "reach": {"size": self.reach[0], "colour": self.reach[1]},
            "colour_delay": self.colour_delay,
            "worst_leak": self.worst_leak(),
            "worst_kept": self.worst_kept(),
            "worst_edited": self.worst_edited(),
            "pairs": {
                f"{s} -> {b}": {
                    "leak": v,
                    "growth_px": self.growth[(s, b)],
                    "kept": kept.get((s, b)),
                    "seeds_moved_lost": self.seeds_behind((s, b)),
                }
                for (s, b), v in self.leak.items()
            },
            "kept_by_colour": {
                colour: {f"{s} -> {b}": v for (s, b), v in by.items()} for colour, by in self.kept_by_colour.items()
            },
            "edited_by_colour": {
                colour: {f"{s} -> {b}": v for (s, b), v in by.items()} for colour, by in self.edited_by_colour.items()
            },
        }

    def format(self) -> str:
        reach = "" if self.reach == PAPER_REACH else f" (reach: size {self.reach[0]}, colour {self.reach[1]})"
        if self.colour_delay is not None:
            reach += f" (colour edit from {self.colour_delay:g} of the steps)"
        lines = [
            f"size delta at α = {self.alpha:g} on the subject, {len(self.seeds)} seeds; leak = bystander's "
            "area change ÷ subject's" + reach,
            f"{'subject → bystander':<24}{'leak':>8}{'subject Δpx':>13}{'seeds: moved, lost':>20}"
            + "".join(f"{'kept, ' + c + ' bystander':>24}{'blue subject':>14}" for c in self.kept_by_colour),
        ]
        for key, v in self.leak.items():
            kept = "".join(
                f"{by[key]:24.2f}{self.edited_by_colour[c][key]:14.2f}" for c, by in self.kept_by_colour.items()
            )
            behind = self.seeds_behind(key)
            seeds = "-, -" if behind is None else f"{behind[0]}, {behind[1]}"
            lines.append(f"{key[0] + ' → ' + key[1]:<24}{v:8.3f}{self.growth[key]:13.0f}{seeds:>20}{kept}")
        kept = f"; worst kept {self.worst_kept():.2f}, least edited {self.worst_edited():.2f}" if self.kept else ""
        lines.append(f"worst leak {self.worst_leak():.3f}{kept}")
        lines.append(
            "(seeds: moved = the bystander's area changed by more than half the subject's mean growth; lost = the "
            "subject found at α = 0 and not at α)"
        )
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
    bystander_colours: tuple[str, ...] = ("green",),
    reach: tuple[str, str] = PAPER_REACH,
    colour_delay: float | None = None,
    **generate_kwargs,
) -> Specificity:
    """Measure leak for every (subject, bystander) shape pair; with ``colour``, also the stacked-edit presence.

    ``colours``: the subject's and, in the leak prompts, the bystander's. The composition prompt's bystander
    takes each of ``bystander_colours`` in turn; none may be the subject's colour or blue (the shapes colour
    delta's target), which could not be told from the recoloured subject. Green, the default, is the colour
    nearest blue: a long edited token takes the place of the bystander nearest its own colour (session 23);
    ``("green", "yellow")`` measures both colours the stacked edit does not involve. ``reach``: the size and
    the colour edits' ``Edit.reach`` (what cross-attention reads the edited tokens for). ``colour_delay``: the
    colour edit's own ``Edit.delay`` (None: generate's); ``COMPOSED_REACH`` and ``COMPOSED_COLOUR_DELAY`` are
    how the shapes world composes the two.
    """
    others = [c for c in world.PALETTE if c not in (colours[0], COLOUR_TARGET)]
    bystander_colours = checks.among(bystander_colours, "bystander_colours", others)
    seeds = [int(s) for s in seeds]
    reach = tuple(checks.among(reach, "reach", checks.REACHES))
    if len(reach) != 2:
        raise checks.InputError(f"reach is the size and the colour edits' reach, two of {checks.REACHES}; got {reach}")
    checks.number(colour_delay, "colour_delay (a fraction of the steps; None: generate's delay)", low=0.0, high=1.0)
    out = Specificity(alpha, seeds, reach, colour_delay)
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
                reach=reach[0],
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
                    Edit(size, subject_pattern(a, subject), s_alpha, reach[0]),
                    Edit(colour, subject_pattern(a, subject), c_alpha, reach[1], colour_delay),
                ]
                for c in bystander_colours:
                    found = presences(
                        pipe, f"a {a} {subject} and a {c} {bystander}", edits,
                        [(c, bystander), (COLOUR_TARGET, subject)], seeds=seeds, **generate_kwargs,
                    )  # fmt: skip
                    out.kept_by_colour.setdefault(c, {})[(subject, bystander)] = found[(c, bystander)]
                    out.edited_by_colour.setdefault(c, {})[(subject, bystander)] = found[(COLOUR_TARGET, subject)]
    return out
