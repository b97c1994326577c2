"""Section ``card``: is the shipped shapes-world model still the one its model card describes?

Caption faithfulness (colour, shape, count, size word) on fresh captions and noun-attention localisation, each
against the card's bar. Both papers' measurements lean on them: a delta cannot grow a shape the model does not
draw, and guidance needs attention that sits on its object.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..evaluation import faithfulness as faith
from ..evaluation import localisation as loc
from .registry import Claim, Context, Outcome

BARS = {"colour": 0.95, "shape": 0.90, "count": 0.90, "size": 0.90}
LOCALISATION_BAR = 3.0  # noun mass on its object ÷ its area share, in the 8×8 layers guidance uses


def bar_chart(measured: dict[str, float]):
    """Measured fractions beside their bars."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    names = list(BARS)
    ax.bar(names, [measured[n] for n in names], color="#4c72b0", label="measured")
    ax.scatter(names, [BARS[n] for n in names], color="black", marker="_", s=400, zorder=3, label="bar")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


class CardSection:
    name = "card"
    title = "The model card, checked"

    def skip(self, model: str) -> str | None:
        return None if model == "shapes" else "the model card describes the shipped shapes-world weights only"

    def run(self, ctx: Context) -> Outcome:
        n, scenes = ctx.pick(16, 200), ctx.pick(4, 32)
        parts = ctx.workers.map(lambda b: faith.totals(ctx.pipe, *b), faith.batches(n), desc="card: captions")
        summed = {k: sum(p[k] for p in parts) for k in parts[0]}
        f = faith.fractions(summed, n)
        all_scenes = list(enumerate(loc.fresh_scenes(scenes)))
        per_scene = ctx.workers.map(lambda ks: loc.scene_ratios(ctx.pipe, *ks), all_scenes, desc="card: attention")
        layers = loc.summarise(per_scene)
        eight = {k: v for k, v in layers.items() if "(8x8)" in k}
        passed = {k: f[k] >= bar for k, bar in BARS.items()}
        numbers = {"faithfulness": f, "bars": BARS, "passed": passed, "localisation": layers, "scenes": scenes}
        measured = ", ".join(f"{k} {f[k]:.3f} (bar {b:g})" for k, b in BARS.items())
        loc_text = ", ".join(f"{v:.1f}×" for v in eight.values()) or "no 8×8 layer"
        claims = [
            Claim(
                "reprolib (model card)",
                "The shapes-world model draws what its caption says, well enough for the ruler to measure both "
                "methods on it",
                f"{n} fresh captions: {measured}; {sum(passed.values())} of {len(passed)} bars met",
                "card_faithfulness.png",
                "not a claim of either paper: the shapes world stands in for SD so that everything runs on a CPU",
            ),
            Claim(
                "Chen et al. (premise)",
                "A noun's cross-attention sits on its object, so an energy on the maps can move the object",
                f"noun attention on its object ÷ its area share, 8×8 layers: {loc_text} (bar ≥ {LOCALISATION_BAR:g}×; "
                f"{scenes} scenes)",
                None,
                "measured on the shapes world's own layers, not SD's 16×16 ones",
            ),
        ]
        return Outcome(numbers, figures={"card_faithfulness": bar_chart(f)}, claims=claims, settings={"captions": n})
