"""Section ``learning``: what learning a delta costs, the original scheme against reprolib's cached one.

Both schemes from the same seed (same τ and α draws), side by side: UNet rows and calls per micro-step,
wall time, the held-out loss on the same fresh draws; then the exact counts of a full-length run
(:mod:`reprolib.learn_delta.cost`). The two schemes (and the projection) are the units shared between processes.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt

from ..generate import defaults
from ..learn_delta.cost import projected_counts, scheme_cost
from .registry import Claim, Context, Outcome

TIMING_KEYS = ("wall", "wall_micro")


def figure(res: dict):
    """UNet rows per micro-step (this run and the projected full run) and held-out losses."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 2.8))
    schemes = ("original", "cached")
    x = range(len(schemes))
    a.bar([i - 0.2 for i in x], [res[s]["rows"] for s in schemes], 0.4, label="this run")
    a.bar([i + 0.2 for i in x], [res["projected"][s]["rows"] for s in schemes], 0.4, label="full run (exact)")
    a.set(xticks=list(x), xticklabels=schemes, ylabel="UNet rows / micro-step")
    a.legend(fontsize=7)
    b.bar(schemes, [res[s]["heldout"] for s in schemes], color="#55a868")
    b.set(ylabel="held-out loss")
    fig.tight_layout()
    return fig


class LearningSection:
    name = "learning"
    title = "Learning a delta: the original scheme and the cached one (Baumann et al.)"

    def skip(self, model: str) -> str | None:
        return None

    def run(self, ctx: Context) -> Outcome:
        prompts = "shapes/size" if ctx.ruler else "people/age"
        n_steps, cfg = defaults(ctx.pipe)
        steps, project = ctx.pick(2, 20), ctx.pick(10, 1000)
        common = dict(
            grad_accum_steps=ctx.pick(2, 10),
            scale_batch_size=4,
            num_steps=n_steps,
            guidance_scale=cfg,
            seed=0,
            progress=ctx.workers.is_main and not os.environ.get("CI"),
        )
        heldout = ctx.pick(2, 32)

        def unit(name: str) -> dict:
            if name == "projected":
                return projected_counts(ctx.pipe, prompts, steps=project, **common)
            return scheme_cost(ctx.pipe, prompts, name, steps=steps, heldout=heldout, **common)

        names = ["original", "cached", "projected"]
        res = dict(zip(names, ctx.workers.map(unit, names, desc="learning: schemes")))
        o, c, p = res["original"], res["cached"], res["projected"]
        numbers = {
            "prompts": prompts,
            **{s: {k: v for k, v in res[s].items() if k not in TIMING_KEYS} for s in ("original", "cached")},
            "projected": p,
            "rows_ratio": o["rows"] / c["rows"],
            "heldout_ratio": c["heldout"] / o["heldout"],
            "projected_rows_ratio": p["original"]["rows"] / p["cached"]["rows"],
            "projected_calls_ratio": p["original"]["calls"] / p["cached"]["calls"],
        }
        timings = {s: {k: res[s][k] for k in TIMING_KEYS} for s in ("original", "cached")}
        timings["wall_ratio"] = o["wall"] / c["wall"]
        settings = {"steps": steps, "project": project, "heldout": heldout, **common}
        short = "; a run this short cannot amortise the cached pool's set-up" if numbers["rows_ratio"] < 1 else ""
        claim = Claim(
            "Baumann et al. (cost) / reprolib",
            "A delta is learned by the paper's optimization; reprolib's cached scheme reaches the same loss for "
            "far fewer UNet evaluations",
            f"{steps} steps × {common['grad_accum_steps']} micro-steps: {o['rows']:.1f} vs {c['rows']:.1f} UNet rows "
            f"per micro-step (original ÷ cached {numbers['rows_ratio']:.2f}×{short}); held-out loss cached ÷ original "
            f"{numbers['heldout_ratio']:.3f}; a full {project}-step run: {p['original']['rows']:.2f} vs "
            f"{p['cached']['rows']:.2f} rows ({numbers['projected_rows_ratio']:.2f}× fewer for the cached scheme)",
            "learning_cost.png",
            "the cached scheme (reusing sampled trajectories) is reprolib's, not the paper's; the original scheme is "
            "run beside it with the same seed",
        )
        return Outcome(numbers, timings, {"learning_cost": figure(res)}, [claim], settings=settings)
