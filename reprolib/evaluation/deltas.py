"""Measured effects of attribute edits in the shapes world: size against α, and what leaks to other objects.

The ruler (``measure``) reads each object's area from the generated image; nothing here is learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..edits import Edit
from ..generate import generate
from ..shapes import measure
from .stats import leak_ratio, spearman


@dataclass
class Sweep:
    """Areas (px) of the edited and of the other object, shape (len(alphas), len(seeds)); NaN where not found."""

    alphas: list[float]
    seeds: list[int]
    target: np.ndarray
    other: np.ndarray | None
    images: list  # [alpha][seed]

    def rho(self) -> float:
        """Mean over seeds of Spearman ρ(α, area of the edited object)."""
        return float(np.nanmean([spearman(self.alphas, self.target[:, j]) for j in range(len(self.seeds))]))

    def rho_of_mean(self) -> float:
        """Spearman ρ(α, mean area over seeds)."""
        return spearman(self.alphas, np.nanmean(self.target, axis=1))

    def leak(self) -> float:
        """|change of the other object's mean area| ÷ |change of the edited one's|, first α to last."""
        if self.other is None:
            return float("nan")
        t, o = np.nanmean(self.target, axis=1), np.nanmean(self.other, axis=1)
        return leak_ratio(t[-1] - t[0], o[-1] - o[0])

    def seeds_behind_leak(self, share: float = 0.5) -> tuple[int, int]:
        """(seeds whose bystander's area changed by more than ``share`` of the subject's mean change, first α to
        last; seeds whose subject is found at the first α and not at the last). The leak is a ratio of means, so
        a few such seeds (a swap of the two objects, a merge) can make it; the count says whether they did."""
        if self.other is None:
            return 0, 0
        growth = abs(np.nanmean(self.target[-1]) - np.nanmean(self.target[0]))
        change = np.abs(self.other[-1] - self.other[0])  # NaN where the bystander is missing at either end
        lost = ~np.isnan(self.target[0]) & np.isnan(self.target[-1])
        return int(np.sum(change > share * growth)), int(lost.sum())


def size_sweep(
    pipe,
    delta,
    prompt: str,
    word: str,
    target: tuple[str, str],
    other: tuple[str, str] | None = None,
    alphas=(-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
    seeds=range(8),
    reach: str = "keys+values",
    **generate_kwargs,
) -> Sweep:
    """Generate ``prompt`` with ``(delta, word, α)`` for each α and seed; measure the (colour, shape) objects.
    ``reach``: the edit's (``Edit.reach``).

    ``target``/``other`` are (colour, shape) of the edited object and of a bystander, e.g.
    ``("red", "circle")`` and ``("blue", "square")``.
    """
    alphas, seeds = list(alphas), list(seeds)
    tgt = np.full((len(alphas), len(seeds)), np.nan)
    oth = np.full_like(tgt, np.nan) if other else None
    images = []
    for i, a in enumerate(alphas):
        row = generate(pipe, prompt, seed=seeds, edits=[Edit(delta, word, a, reach)], **generate_kwargs)
        images.append(row)
        for j, im in enumerate(row):
            found = measure.measure(np.asarray(im))
            f = measure.find(found, colour=target[0])
            tgt[i, j] = f.area if f else np.nan
            if other:
                g = measure.find(found, colour=other[0])
                oth[i, j] = g.area if g else np.nan
    return Sweep(alphas, seeds, tgt, oth, images)


def presence(pipe, prompt: str, edits, obj: tuple[str, str], seeds=range(8), **generate_kwargs) -> float:
    """Fraction of ``seeds`` whose image (with ``edits``) holds an object of ``obj`` = (colour, shape)."""
    return presences(pipe, prompt, edits, [obj], seeds, **generate_kwargs)[obj]


def presences(pipe, prompt: str, edits, objects, seeds=range(8), **generate_kwargs) -> dict[tuple[str, str], float]:
    """:func:`presence` of each of ``objects`` in the same pictures (one generation per seed)."""
    images = generate(pipe, prompt, seed=list(seeds), edits=edits, **generate_kwargs)
    found = [measure.measure(np.asarray(im)) for im in images]
    return {obj: float(np.mean([measure.find(f, *obj) is not None for f in found])) for obj in objects}


def intact(sweep: Sweep, obj: tuple[str, str]) -> np.ndarray:
    """Per α, the fraction of seeds whose image holds exactly one object of ``obj``'s colour, of ``obj``'s shape.

    A size edit pushed too far splits the object into blobs or changes its shape: the area alone can still
    fall monotonically while the picture is no longer a smaller ``obj``.
    """
    colour, shape = obj
    out = []
    for row in sweep.images:
        ok = []
        for im in row:
            same = [f for f in measure.measure(np.asarray(im)) if f.colour == colour]
            ok.append(len(same) == 1 and same[0].shape == shape)
        out.append(float(np.mean(ok)))
    return np.array(out)


def usable_range(alphas, mean_area, intact_share, need: float = 1.0) -> tuple[float, float]:
    """The widest run of ``alphas`` around α = 0 (the one nearest 0) where every step enlarges the mean area
    and at least ``need`` of the seeds show one intact object: the range a slider should offer."""
    alphas, area, ok = np.asarray(alphas, float), np.asarray(mean_area, float), np.asarray(intact_share, float)
    order = np.argsort(alphas)
    alphas, area, ok = alphas[order], area[order], ok[order]
    i0 = int(np.argmin(np.abs(alphas)))
    if ok[i0] < need:
        raise ValueError(
            f"at α = {alphas[i0]:g} only {ok[i0]:.0%} of the seeds show the object intact; need {need:.0%}"
        )
    lo = hi = i0
    while lo > 0 and ok[lo - 1] >= need and area[lo - 1] < area[lo]:
        lo -= 1
    while hi < len(alphas) - 1 and ok[hi + 1] >= need and area[hi + 1] > area[hi]:
        hi += 1
    return float(alphas[lo]), float(alphas[hi])
