"""Section ``deltas``: Baumann et al.'s attribute deltas, optimization-free and learned, measured.

Shapes world (the ruler reads each object's area): α sweeps per subject (monotonicity: Spearman ρ of area
against α), the edited circle beside a blue square (leak), every subject/bystander shape pair (specificity) and
size + colour edits stacked (composition). Every model: the delta's held-out agreement in the model's own text
space (:mod:`.textspace`), the measure on models without a ruler.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..conditioning import TextConditioning
from ..contrastive import contrastive_delta
from ..delta import Delta, DeltaMismatch
from ..evaluation.deltas import Sweep, size_sweep
from ..evaluation.specificity import Specificity, specificity
from ..plots import image_grid
from ..prompts import load_config
from ..shapes import world
from .registry import Claim, Context, Outcome
from .textspace import held_out_agreement

LEARNED = Path(world.__file__).parent / "deltas" / "size_learned.safetensors"  # the shipped learned delta
PAIR = "a red circle and a blue square"


def seed_sweeps(pipe, deltas: dict[str, Delta], alphas, seed: int) -> dict:
    """Every sweep of one seed: ``{(delta, subject): Sweep}`` for "a red <shape>" and ``(delta, "pair")``."""
    out = {}
    for name, d in deltas.items():
        for shape in world.SHAPES:
            out[(name, shape)] = size_sweep(
                pipe, d, f"a red {shape}", shape, ("red", shape), alphas=alphas, seeds=[seed]
            )
        out[(name, "pair")] = size_sweep(
            pipe, d, PAIR, "circle", ("red", "circle"), ("blue", "square"), alphas=alphas, seeds=[seed]
        )
    if seed:  # only the first seed's pictures go into the figure
        for sw in out.values():
            sw.images = []
    return out


def join(parts: list[Sweep]) -> Sweep:
    """One sweep from one-seed sweeps, seeds in order."""
    other = None if parts[0].other is None else np.concatenate([p.other for p in parts], axis=1)
    target = np.concatenate([p.target for p in parts], axis=1)
    return Sweep(parts[0].alphas, [s for p in parts for s in p.seeds], target, other, parts[0].images)


def curve_figure(sweeps: dict, names: list[str]):
    """Mean area against α: each subject alone, and the circle and the square in the pair, per delta."""
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        for shape in world.SHAPES:
            sw = sweeps[(name, shape)]
            ax.plot(sw.alphas, np.nanmean(sw.target, axis=1), marker="o", label=f"{shape} alone")
        pair = sweeps[(name, "pair")]
        ax.plot(pair.alphas, np.nanmean(pair.target, axis=1), ls="--", marker="s", label="circle in pair")
        ax.plot(pair.alphas, np.nanmean(pair.other, axis=1), ls=":", marker="x", label="square (not edited)")
        ax.set(title=f"{name} size delta", xlabel="α", ylabel="area (px)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def load_deltas(pipe) -> tuple[dict[str, Delta], list[tuple[str, str]]]:
    """The optimization-free size delta, and the shipped learned one where it fits the model."""
    deltas = {"optimization-free": contrastive_delta(pipe, "shapes/size")}
    try:
        learned = Delta.load(LEARNED)
        learned.check(TextConditioning(pipe))
        deltas["learned"] = learned
        return deltas, []
    except (DeltaMismatch, FileNotFoundError) as e:
        return deltas, [("learned delta", f"the shipped learned delta does not fit this model: {e}")]


def sweep_numbers(sweeps: dict, names: list[str]) -> dict:
    out = {}
    for name in names:
        pair = sweeps[(name, "pair")]
        out[name] = {
            "rho_per_subject": {s: sweeps[(name, s)].rho() for s in world.SHAPES},
            "rho_alone": sweeps[(name, "circle")].rho(),
            "rho_pair": pair.rho(),
            "rho_of_mean_pair": pair.rho_of_mean(),
            "leak_pair": pair.leak(),
            "mean_area": {f"{k[1]}": np.nanmean(v.target, axis=1).tolist() for k, v in sweeps.items() if k[0] == name},
            "mean_area_square_in_pair": np.nanmean(pair.other, axis=1).tolist(),
        }
    return out


def specificity_numbers(spec: Specificity) -> dict:
    return spec.numbers()


class DeltaSection:
    name = "deltas"
    title = "Attribute deltas (Baumann et al.)"

    def skip(self, model: str) -> str | None:
        return None

    def ruler_part(self, ctx: Context, out: Outcome) -> None:
        deltas, skipped = load_deltas(ctx.pipe)
        out.skipped += skipped
        alphas = ctx.pick((-1.0, 0.5, 2.0), (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0))
        seeds, spec_seeds = range(ctx.pick(2, 16)), range(ctx.pick(1, 12))
        per_seed = ctx.workers.map(lambda s: seed_sweeps(ctx.pipe, deltas, alphas, s), seeds, desc="deltas: α sweeps")
        sweeps = {k: join([p[k] for p in per_seed]) for k in per_seed[0]}
        names = list(deltas)
        colour = contrastive_delta(ctx.pipe, "shapes/colour")
        size = deltas["optimization-free"]
        parts = ctx.workers.map(
            lambda s: specificity(ctx.pipe, size, colour, seeds=[s]), spec_seeds, desc="deltas: specificity"
        )
        spec = Specificity.merge(parts)
        out.numbers.update(
            {"alphas": list(alphas), "seeds": len(seeds), **sweep_numbers(sweeps, names)},
            specificity=specificity_numbers(spec),
        )
        out.figures["deltas_size_vs_alpha"] = curve_figure(sweeps, names)
        rows = [(n, k) for n in names for k in ("circle", "pair")]
        out.figures["deltas_alpha_grid"] = image_grid(
            [im[0] for key in rows for im in sweeps[key].images],
            [f"{key[0][:9]} {key[1]} α={a:g}" for key in rows for a in alphas],
            cols=len(alphas),
        )
        out.claims += ruler_claims(out.numbers, names)

    def run(self, ctx: Context) -> Outcome:
        out = Outcome({})
        if ctx.ruler:
            self.ruler_part(ctx, out)
        else:
            out.skipped.append(
                ("area against α, leak, composition", "need the shapes world's ruler; no image encoder offline")
            )
        config = "shapes/size" if ctx.ruler else "people/age"
        pairs = range(len(load_config(config).pairs))
        cos = ctx.workers.map(lambda i: held_out_agreement(ctx.pipe, config, i), pairs, desc="deltas: text space")
        out.numbers["text_space"] = {"config": config, "held_out_cosine": cos, "mean": float(np.mean(cos))}
        out.claims.append(
            Claim(
                "Baumann et al.",
                "A direction in the token-wise text embedding captures one attribute across subjects",
                f"`{config}`: cosine of each pair's own delta with the delta of the other pairs, mean "
                f"{np.mean(cos):.2f} (min {min(cos):.2f}, {len(cos)} pairs)",
                None,
                "a text-space check with the model's own encoder, not an image metric: the paper measures images "
                "(CLIP scores, user study); no image encoder is available offline here",
            )
        )
        return out


def ruler_claims(n: dict, names: list[str]) -> list[Claim]:
    free, sp = n["optimization-free"], n["specificity"]
    learned = n.get("learned")
    ruler = "measured by the shapes world's ruler (object area in px) instead of the paper's CLIP scores and users"
    return [
        Claim(
            "Baumann et al.",
            "α controls the attribute continuously (a slider)",
            "size delta, Spearman ρ(α, area) per subject: "
            + ", ".join(f"{s} {v:.2f}" for s, v in free["rho_per_subject"].items())
            + (f"; learned: {learned['rho_alone']:.2f} (circle)" if learned else "")
            + f" over α ∈ {n['alphas']}, {n['seeds']} seeds",
            "deltas_size_vs_alpha.png",
            ruler + "; size instead of age, on a 64×64 model",
        ),
        Claim(
            "Baumann et al.",
            "An edit is subject-specific: it changes the edited subject, not the others",
            f"in '{PAIR}': ρ {free['rho_pair']:.2f}, the square changes by {free['leak_pair']:.2f} of the circle's "
            f"change; all 9 shape pairs at α = {sp['alpha']:g}: worst leak {sp['worst_leak']:.2f} "
            f"({sp['seeds']} seeds)",
            "deltas_alpha_grid.png",
            ruler,
        ),
        Claim(
            "Baumann et al.",
            "Edits compose: several deltas on one subject, the rest of the scene kept",
            f"size (α 2) + colour (α 1) on the subject: the green bystander is still there in at worst "
            f"{sp['worst_kept']:.2f} of the images (over 9 shape pairs)",
            None,
            ruler,
        ),
        *(
            [
                Claim(
                    "Baumann et al.",
                    "Learned deltas are at least as good as the optimization-free ones",
                    f"learned vs optimization-free: ρ alone {learned['rho_alone']:.2f} / {free['rho_alone']:.2f}, "
                    f"ρ in pair {learned['rho_pair']:.2f} / {free['rho_pair']:.2f}, leak {learned['leak_pair']:.2f} / "
                    f"{free['leak_pair']:.2f}",
                    "deltas_size_vs_alpha.png",
                    "the learned delta is the shipped one (100 steps of the cached scheme), not learned in this run",
                )
            ]
            if learned
            else []
        ),
    ]
