"""Section ``inversion`` (chapter 05): real pictures into the sampler, then edited.

Shapes world: scenes drawn by the world's renderer (never generated) are inverted by each method and sampled
back; the ruler compares objects, masks and pixels (:mod:`reprolib.evaluation.inversion`); then the size
delta edits inverted two-object scenes. Other models: the relative latent error of redrawing a generated
picture from its inverted noise, per method (no ruler to read objects).
"""

from __future__ import annotations

import numpy as np

from ..contrastive import contrastive_delta
from ..evaluation import inversion as probe
from ..generate import INVERSION_REACH, generate
from ..inversion import METHODS, invert
from .registry import Claim, Context, Outcome

PROMPT = "a red circle and a blue square"
DEVIATION = "not a claim of either paper: inversion lets both methods edit pictures they did not generate"


class InversionSection:
    name = "inversion"
    title = "Editing pictures the model never drew (chapter 05)"

    def skip(self, model: str) -> str | None:
        return None

    def run(self, ctx: Context) -> Outcome:
        return self.ruler(ctx) if ctx.ruler else self.latent_error(ctx)

    def ruler(self, ctx: Context) -> Outcome:
        scenes = probe.held_out_scenes(ctx.pick(4, 32))

        def rec(scene) -> dict:
            r = {m: probe.reconstruction(ctx.pipe, [scene], m) for m in METHODS}
            return {**r, "vae only": probe.vae_ceiling(ctx.pipe, [scene])}

        per_scene = ctx.workers.map(rec, scenes, desc="inversion: scenes")
        recon = {}
        for m in ("vae only", *METHODS):
            joined = probe.Reconstruction(m)
            for r in per_scene:
                for k in ("same", "iou", "psnr", "seconds", "plain_seconds"):
                    getattr(joined, k).extend(getattr(r[m], k))
            recon[m] = joined.summary()
        size = contrastive_delta(ctx.pipe, "shapes/size")
        edit_scenes = probe.edit_scenes(ctx.pick(2, 16))  # subjects that can shrink, as benchmarks/inversion.py
        curves = ctx.workers.map(lambda s: probe.edit_curve(ctx.pipe, s, size), edit_scenes, desc="inversion: edits")
        rho = [c.rho for c in curves]
        leak = [c.leak for c in curves]
        intact = [c.intact_share for c in curves]
        numbers = {
            "reconstruction": {m: {k: v for k, v in r.items() if "seconds" not in k and k != "time_ratio"}
                               for m, r in recon.items()},
            "edits": {"scenes": len(curves), "subjects": "shrinkable", "delay": probe.EDIT_DELAY,
                      "reach": INVERSION_REACH, "alphas": list(probe.ALPHAS), "rho": rho, "leak": leak,
                      "intact": intact},
        }  # fmt: skip
        timings = {m: r["time_ratio"] for m, r in recon.items() if r.get("time_ratio") is not None}
        e = recon["exact"]
        claim = Claim(
            "reprolib (chapter 05)",
            "A picture the model never drew is given back by exact inversion and edited by the size delta",
            f"same objects {e['same_objects']:.2f} (VAE alone {recon['vae only']['same_objects']:.2f}), mask IoU "
            f"{e['mean_iou']:.2f}; edits: ρ min {min(rho):.2f}, leak max {max(leak):.2f}, frames intact "
            f"{np.mean(intact):.2f}",
            None,
            DEVIATION,
        )
        return Outcome(numbers, {"time_ratio": timings}, claims=[claim])

    def latent_error(self, ctx: Context) -> Outcome:
        def unit(seed: int) -> dict[str, float]:
            image = generate(ctx.pipe, PROMPT, seed=seed)
            return {m: float(invert(ctx.pipe, image, PROMPT, method=m).error) for m in METHODS}

        errors = ctx.workers.map(unit, range(ctx.pick(1, 4)), desc="inversion: seeds")
        numbers = {"methods": {m: float(np.mean([e[m] for e in errors])) for m in METHODS}, "seeds": len(errors)}
        claim = Claim(
            "reprolib (chapter 05)",
            "A generated picture is redrawn from its inverted noise",
            ", ".join(f"{m}: relative latent error {v:.2g}" for m, v in numbers["methods"].items()),
            None,
            DEVIATION,
        )
        out = Outcome(numbers, claims=[claim])
        out.skipped.append(("objects, masks and edits of inverted scenes", "need the shapes world's ruler"))
        return out
