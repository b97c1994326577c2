"""Measured layout control in the shapes world: does the boxed object land in its box?

For every case (a prompt and boxes for some of its phrases) and seed, the image is generated
unguided and with each guidance method; the ruler finds each boxed object by its colour and
measures the fraction of its pixels inside its box. Nothing here is learned.

    table = layout_probe(pipe, DEFAULT_CASES, seeds=range(16))
    print(table)                      # in box, found, s/image and × unguided, per method
    table.summary()["backward"]       # {"in_box": ..., "found": ..., "seconds": ..., ...}

Timings are taken side by side: each seed's runs of all methods follow each other, so a machine
that gets busier or quieter during the run slows every method alike and the ratios stay fair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..generate import generate
from ..layout import Box, LayoutConfig, normalise_boxes
from ..shapes import measure, world


def phrase_colour(phrase: str) -> str:
    """The world colour named in a boxed phrase ("red circle" → "red"): how the ruler finds the object."""
    colours = [w for w in phrase.lower().split() if w in world.PALETTE]
    if len(colours) != 1:
        raise ValueError(
            f"boxed phrase {phrase!r} must name exactly one colour of {list(world.PALETTE)}, "
            "so that the ruler can find its object (e.g. 'red circle')"
        )
    return colours[0]


@dataclass(frozen=True)
class Case:
    """A prompt and one normalised box (x0, y0, x1, y1) for each guided phrase, named for the table."""

    name: str
    prompt: str
    boxes: dict[str, Box]

    def __post_init__(self):
        for phrase, bx in normalise_boxes(self.boxes).items():  # BoxError on bad boxes
            if len(bx) != 1:
                raise ValueError(
                    f"case {self.name!r}: give one box per phrase ({phrase!r} has {len(bx)}); "
                    "the ruler scores one object against one box"
                )
            phrase_colour(phrase)


QUADRANTS = {
    "top-left": (0.0, 0.0, 0.5, 0.5),
    "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0),
    "bottom-right": (0.5, 0.5, 1.0, 1.0),
}
CENTRE_LEFT = (0.05, 0.25, 0.55, 0.75)
PAIR = "a red circle and a blue square"

DEFAULT_CASES: list[Case] = [
    *(Case(f"circle {name}", "a red circle", {"red circle": box}) for name, box in QUADRANTS.items()),
    Case("circle centre-left", "a red circle", {"red circle": CENTRE_LEFT}),
    Case("pair: circle bottom-right", PAIR, {"red circle": QUADRANTS["bottom-right"]}),
    Case("pair: both boxed", PAIR, {"red circle": QUADRANTS["top-right"], "blue square": QUADRANTS["bottom-left"]}),
]


def methods(eta: float | None = None, layers=None, **config) -> dict[str, LayoutConfig | None]:
    """The compared methods: unguided, backward (reset each step), backward never reset (the official
    code's behaviour), forward. ``eta``, ``layers`` and other :class:`LayoutConfig` fields apply to all."""
    base = LayoutConfig(layers=layers, **config, **({} if eta is None else {"eta": eta}))
    return {
        "unguided": None,
        "backward": replace(base, reset_each_step=True, mode="backward"),
        "backward, never reset": replace(base, reset_each_step=False, mode="backward"),
        "forward": replace(base, mode="forward"),
    }


def score(image, boxes: dict[str, Box]) -> dict[str, float]:
    """``{phrase: fraction of its object's pixels inside its box}``; NaN where the ruler finds no object
    of the phrase's colour."""
    found = measure.measure(np.asarray(image))
    out = {}
    for phrase, box in boxes.items():
        f = measure.find(found, colour=phrase_colour(phrase))
        out[phrase] = float("nan") if f is None else measure.fraction_in_box(f.mask, box)
    return out


@dataclass
class Run:
    """One boxed object in one image: NaN ``in_box`` when the object was not found."""

    method: str
    case: str
    seed: int
    phrase: str
    in_box: float
    seconds: float  # of the whole image
    passes: int = 0  # the image's UNet passes under autograd: backward guidance's energy evaluations

    @property
    def found(self) -> bool:
        return not math.isnan(self.in_box)


@dataclass
class LayoutTable:
    """Every :class:`Run` of a probe, with per-method summaries and the printed table."""

    runs: list[Run]
    methods: list[str]
    cases: list[str]
    seeds: list[int]
    images: dict[tuple[str, str, int], object] = field(default_factory=dict)  # (method, case, seed) → PIL

    def _select(self, method: str, case: str | None = None) -> list[Run]:
        if method not in self.methods:
            raise KeyError(f"no method {method!r}; measured: {self.methods}")
        return [r for r in self.runs if r.method == method and (case is None or r.case == case)]

    def summary(self, case: str | None = None) -> dict[str, dict[str, float]]:
        """Per method: ``in_box`` (mean over found objects), ``found`` (rate), ``in_box_all`` (missing
        objects count 0), ``seconds`` (mean per image), ``ratio`` (seconds ÷ unguided's), ``passes`` (mean
        energy evaluations per image: what backward guidance's time grows with), ``n`` (objects)."""
        out = {}
        for m in self.methods:
            runs = self._select(m, case)
            vals = np.array([r.in_box for r in runs], float)
            per_image = {(r.case, r.seed): r.seconds for r in runs}  # one time per image, not per object
            passes = {(r.case, r.seed): r.passes for r in runs}
            found = ~np.isnan(vals)
            out[m] = {
                "in_box": float(vals[found].mean()) if found.any() else float("nan"),
                "found": float(found.mean()) if len(vals) else float("nan"),
                "in_box_all": float(np.where(found, vals, 0.0).mean()) if len(vals) else float("nan"),
                "seconds": float(np.mean(list(per_image.values()))) if per_image else float("nan"),
                "passes": float(np.mean(list(passes.values()))) if passes else float("nan"),
                "n": len(runs),
            }
        base = out.get("unguided", {}).get("seconds")
        for row in out.values():
            row["ratio"] = row["seconds"] / base if base else float("nan")
        return out

    def by_case(self) -> dict[str, dict[str, float]]:
        """``{case: {method: mean in-box fraction over found objects}}``."""
        return {c: {m: s["in_box"] for m, s in self.summary(c).items()} for c in self.cases}

    def format(self) -> str:
        """The method table, then in-box fractions per case."""
        width = max(len(m) for m in self.methods) + 2
        lines = [
            f"{'method':<{width}}{'in box':>8}{'found':>8}{'in box, missing=0':>19}{'s/image':>9}{'× unguided':>12}"
            f"{'energy passes':>15}"
        ]
        for m, s in self.summary().items():
            lines.append(
                f"{m:<{width}}{s['in_box']:8.2f}{s['found']:8.2f}{s['in_box_all']:19.2f}"
                f"{s['seconds']:9.2f}{s['ratio']:12.2f}{s['passes']:15.1f}"
            )
        cw = max(len(c) for c in self.cases) + 2
        lines += [
            "",
            f"in box per case (mean over found objects, {len(self.seeds)} seeds)",
            f"{'case':<{cw}}" + "".join(f"{m:>{max(len(m) + 2, 8)}}" for m in self.methods),
        ]
        for c, row in self.by_case().items():
            lines.append(f"{c:<{cw}}" + "".join(f"{row[m]:>{max(len(m) + 2, 8)}.2f}" for m in self.methods))
        return "\n".join(lines)

    __str__ = format

    def as_dict(self) -> dict:
        """JSON-ready: summary, per-case table and every run."""
        return {
            "methods": self.methods,
            "cases": self.cases,
            "seeds": self.seeds,
            "summary": self.summary(),
            "by_case": self.by_case(),
            "runs": [r.__dict__ for r in self.runs],
        }


def _timed(pipe, case: Case, seed: int, config: LayoutConfig | None, **generate_kwargs) -> tuple[object, float, int]:
    """One image of ``case`` (unguided when ``config`` is None), the seconds it took and its UNet passes
    under autograd (the sampler's own run without a graph; guidance's energy evaluations with one)."""
    passes = 0

    def count(module, args):
        nonlocal passes
        passes += torch.is_grad_enabled()

    kw = {} if config is None else {"boxes": case.boxes, "layout": config}
    handle = pipe.unet.register_forward_pre_hook(count)
    try:
        t = time.perf_counter()
        img = generate(pipe, case.prompt, seed=seed, **kw, **generate_kwargs)
        seconds = time.perf_counter() - t
    finally:
        handle.remove()
    return img, seconds, passes


def _check(cases: list[Case], seeds: list[int], configs: dict) -> None:
    if not cases or not seeds or not configs:
        raise ValueError("layout_probe needs at least one case, one seed and one method")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be distinct, got {names}")


def _one_seed(pipe, cases: list[Case], seed: int, configs: dict, keep_images: bool, **generate_kwargs):
    """Runs (and images) of every case × method for one seed; unguided once per prompt."""
    runs: list[Run] = []
    images: dict = {}
    for prompt in dict.fromkeys(c.prompt for c in cases):
        group = [c for c in cases if c.prompt == prompt]
        plain = None  # one unguided image per prompt and seed, scored against each case's boxes
        for name, config in configs.items():
            for case in group:
                if config is None:
                    plain = plain or _timed(pipe, case, seed, None, **generate_kwargs)
                    img, secs, passes = plain
                else:
                    img, secs, passes = _timed(pipe, case, seed, config, **generate_kwargs)
                for phrase, frac in score(img, case.boxes).items():
                    runs.append(Run(name, case.name, seed, phrase, frac, secs, passes))
                if keep_images:
                    images[(name, case.name, seed)] = img
    return runs, images


def layout_probe(
    pipe,
    cases: Sequence[Case] = tuple(DEFAULT_CASES),
    seeds: Iterable[int] = range(16),
    *,
    configs: dict[str, LayoutConfig | None] | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    keep_images: bool = False,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
) -> LayoutTable:
    """Generate every case × seed × method and score the boxed objects with the ruler.

    ``configs``: ``{name: LayoutConfig or None (unguided)}``, default :func:`methods`. The unguided
    image does not depend on the boxes, so it is generated once per prompt and seed and scored
    against each case's boxes. ``warmup``: one short untimed run per method first, so that one-off
    costs (allocations, processor swaps) do not land on the first timed image.
    """
    configs = methods() if configs is None else dict(configs)
    cases, seeds = list(cases), [int(s) for s in seeds]
    _check(cases, seeds, configs)
    if warmup:
        for config in configs.values():
            _timed(pipe, cases[0], seeds[0], config, steps=2, guidance_scale=guidance_scale)
    runs: list[Run] = []
    images: dict = {}
    for seed in seeds:
        more, imgs = _one_seed(pipe, cases, seed, configs, keep_images, steps=steps, guidance_scale=guidance_scale)
        runs += more
        images.update(imgs)
        if log:
            log(f"seed {seed} done ({len(runs)} scored objects)")
    return LayoutTable(runs, list(configs), [c.name for c in cases], seeds, images)
