"""Section ``layout``: Chen et al.'s layout guidance, unguided / backward / backward never reset / forward.

Shapes world: the ruler's in-box fraction of the boxed object, per method, and seconds per image measured side
by side (:func:`reprolib.evaluation.layout.layout_probe`, one seed per unit of work), then diffusers'
Attend-and-Excite cost on the same model. Other models: the share of the phrase's attention in its box
(:mod:`.attention_mass`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..evaluation.attend_excite import attend_and_excite_cost
from ..evaluation.layout import DEFAULT_CASES, PAIR, LayoutTable, layout_probe, methods
from ..generate import defaults
from ..plots import draw_boxes, image_grid
from .attention_mass import REAL_CASES, mass_in_box
from .registry import Claim, Context, Outcome

FULL_CASES = ("circle top-left", "circle bottom-right", "pair: circle bottom-right", "pair: both boxed")
QUICK_CASES = ("circle top-left", "pair: both boxed")
DEVIATION = (
    "DDIM with the step x_t ← x_t − η·(1−ᾱ_t)·∇E instead of the paper's σ_t² on LMS latents; the shapes world's "
    "8×8 layers; the paper scores with a detector on COCO/VISOR, here the ruler finds the object by its colour"
)


def joined(parts: list[LayoutTable]) -> LayoutTable:
    """One table from one-seed tables, seeds in order."""
    images = {k: v for p in parts for k, v in p.images.items()}
    return LayoutTable(
        [r for p in parts for r in p.runs],
        parts[0].methods,
        parts[0].cases,
        [s for p in parts for s in p.seeds],
        images,
    )


def examples(table: LayoutTable, cases) -> object:
    """Seed 0 of every case (rows) under every method (columns), the boxes drawn."""
    pics, titles = [], []
    for case in cases:
        for m in table.methods:
            pics.append(draw_boxes(table.images[(m, case.name, table.seeds[0])], case.boxes))
            titles.append(f"{case.name[:18]}\n{m}")
    return image_grid(pics, titles, cols=len(table.methods), size=1.9)


def bars(summary: dict) -> object:
    fig, ax = plt.subplots(figsize=(4.8, 2.6))
    ax.bar(list(summary), [s["in_box"] for s in summary.values()], color="#4c72b0")
    ax.set(ylim=(0, 1.05), ylabel="in-box fraction")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


class LayoutSection:
    name = "layout"
    title = "Layout guidance (Chen et al.)"

    def skip(self, model: str) -> str | None:
        return None

    def run(self, ctx: Context) -> Outcome:
        return self.ruler(ctx) if ctx.ruler else self.attention(ctx)

    def ruler(self, ctx: Context) -> Outcome:
        names = ctx.pick(QUICK_CASES, FULL_CASES)
        cases = [c for c in DEFAULT_CASES if c.name in names]
        steps, cfg = defaults(ctx.pipe)
        warm = []  # one untimed warm-up per process, before its first timed image

        def unit(seed: int) -> LayoutTable:
            t = layout_probe(ctx.pipe, cases, [seed], warmup=not warm, keep_images=seed == 0)
            warm.append(seed)
            return t

        table = joined(ctx.workers.map(unit, range(ctx.pick(2, 16)), desc="layout: seeds"))
        summary = table.summary()
        numbers = {
            "cases": table.cases,
            "seeds": len(table.seeds),
            "methods": {m: {k: s[k] for k in ("in_box", "found", "in_box_all", "n")} for m, s in summary.items()},
            "by_case": table.by_case(),
        }
        timings = {"methods": {m: {k: s[k] for k in ("seconds", "ratio")} for m, s in summary.items()}}
        out = Outcome(numbers, timings, {"layout_in_box": bars(summary), "layout_examples": examples(table, cases)})
        ae_seeds = list(range(ctx.pick(1, 4)))
        try:
            ae = ctx.workers.on_main(
                lambda: attend_and_excite_cost(ctx.pipe, PAIR, ["circle", "square"], ae_seeds, steps, cfg)
            )
            timings["attend_and_excite"] = ae
        except (ImportError, ValueError) as e:
            out.skipped.append(("Attend-and-Excite cost", str(e)))
        out.settings = {"steps": steps, "cfg": cfg, "config": vars(methods()["backward"]), "ae_seeds": len(ae_seeds)}
        out.claims = claims(summary, ctx.workers.is_main and timings.get("attend_and_excite"))
        return out

    def attention(self, ctx: Context) -> Outcome:
        configs = methods()
        units = [(case, seed) for case in REAL_CASES for seed in range(ctx.pick(1, 8))]

        def unit(cs):
            prompt, boxes = REAL_CASES[cs[0]]
            return {m: mass_in_box(ctx.pipe, prompt, boxes, cs[1], c) for m, c in configs.items()}

        runs = ctx.workers.map(unit, units, desc="layout: attention in box")
        numbers = {
            "metric": "share of the phrase's attention (guided layers, mean over steps) inside its box",
            "cases": list(REAL_CASES),
            "methods": {m: float(np.mean([v for r in runs for v in r[m]["in_box"].values()])) for m in configs},
        }
        timings = {m: float(np.mean([r[m]["seconds"] for r in runs])) for m in configs}
        out = Outcome(numbers, timings)
        out.skipped.append(("in-box fraction of the object", "needs the shapes world's ruler (or a detector)"))
        out.skipped.append(("Attend-and-Excite cost", "measured on the shapes world only"))
        out.claims.append(
            Claim(
                "Chen et al.",
                "Backward guidance moves each phrase's attention into its box",
                ", ".join(f"{m} {v:.2f}" for m, v in numbers["methods"].items()) + " (attention mass in box)",
                None,
                "attention mass in the box stands in for the paper's detector scores; no image is scored",
            )
        )
        return out


def claims(summary: dict, ae: dict | None) -> list[Claim]:
    u, b, n, f = (summary[m] for m in ("unguided", "backward", "backward, never reset", "forward"))
    ae_text = f"; diffusers' Attend-and-Excite costs {ae['ratio']:.2f}× a plain image" if ae else ""
    return [
        Claim(
            "Chen et al.",
            "Backward guidance puts each boxed object in its box, without training",
            f"in-box fraction unguided {u['in_box']:.2f} → backward {b['in_box']:.2f} (found {b['found']:.2f})",
            "layout_examples.png",
            DEVIATION,
        ),
        Claim(
            "Chen et al.",
            "Backward guidance beats forward guidance (editing the maps directly)",
            f"forward {f['in_box']:.2f} vs backward {b['in_box']:.2f}",
            "layout_in_box.png",
            DEVIATION,
        ),
        Claim(
            "Chen et al. (official code)",
            "The official loop never resets its loss between steps",
            f"never reset {n['in_box']:.2f} vs reset each step {b['in_box']:.2f}",
            "layout_in_box.png",
            "reprolib's default re-measures the energy every step; the official behaviour is an option",
        ),
        Claim(
            "Chen et al. (cost)",
            "Guidance costs a few extra gradient steps",
            f"seconds per image × unguided: backward {b['ratio']:.2f}, never reset {n['ratio']:.2f}, forward "
            f"{f['ratio']:.2f}{ae_text} (timings: this machine, side by side)",
            None,
            "CPU timings, not the paper's GPU",
        ),
    ]
