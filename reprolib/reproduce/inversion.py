"""Section ``inversion`` (chapter 05), registered only where ``reprolib.inversion`` exists: real pictures into the
sampler. Measured: the relative latent error of redrawing a generated picture from its inverted noise, per method.

The module is looked up by name, not imported at the top, because this slot predates it; once it ships, a plain
import and the section's claims replace the lookup.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from ..generate import generate
from .registry import Claim, Context, Outcome

MODULE = "reprolib.inversion"
PROMPT = "a red circle and a blue square"


def available() -> bool:
    """True when the inversion module is part of this reprolib (not another checkout's, found by an editable
    install's path hook)."""
    spec = importlib.util.find_spec(MODULE)
    return spec is not None and Path(spec.origin).parent == Path(__file__).resolve().parents[1]


class InversionSection:
    name = "inversion"
    title = "Inverting a picture (chapter 05)"

    def skip(self, model: str) -> str | None:
        return None if available() else f"{MODULE} is not part of this reprolib"

    def run(self, ctx: Context) -> Outcome:
        inversion = importlib.import_module(MODULE)
        methods = [m for m in ("ddim", "fixed-point", "exact") if m in getattr(inversion, "METHODS", ("ddim",))]

        def unit(seed: int) -> dict[str, float]:
            image = generate(ctx.pipe, PROMPT, seed=seed)
            return {m: float(inversion.invert(ctx.pipe, image, PROMPT, method=m).error) for m in methods}

        errors = ctx.workers.map(unit, range(ctx.pick(1, 4)), desc="inversion: seeds")
        numbers = {"methods": {m: float(np.mean([e[m] for e in errors])) for m in methods}, "seeds": len(errors)}
        claim = Claim(
            "reprolib (chapter 05)",
            "A generated picture is redrawn from its inverted noise",
            ", ".join(f"{m}: relative latent error {v:.2g}" for m, v in numbers["methods"].items()),
            None,
            "not a claim of either paper: inversion lets both methods edit pictures they did not generate",
        )
        return Outcome(numbers, claims=[claim])
