"""What learning a delta costs under each scheme: UNet rows and calls per micro-step, wall time, and the loss reached.

Both schemes run with the same seed, so they draw the same τ (noise level) and α (scale) sequences; only how
x_t is obtained differs. "rows" are latents through the UNet (a guided step is 2, the scale batch S), the
measure of compute; "calls" are UNet invocations. The held-out loss (the same fresh draws for every delta) is
the fair comparison: the cached scheme's training loss comes from the few trajectories it keeps reusing.

A short run cannot amortise the cached pool's set-up, so :func:`projected_counts` repeats the cached schedule
with a stub UNet that returns zeros (counts do not depend on the UNet's outputs) and takes the original's exact
counts from its τ draws: full-run counts in a minute or two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..prompts import load_config
from .loop import heldout_loss, learn_delta
from .objective import Problem


@contextmanager
def stub_unet(pipe) -> Iterator[None]:
    """Every UNet evaluation returns zeros (still differentiable in the text states): counts only, no compute.

    Patched at the UNet's ``forward``, inside the module call that the counter hooks, so the counts are the real
    ones.
    """

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        return UNet2DConditionOutput(sample=sample * 0 + encoder_hidden_states.float().mean() * 0)

    pipe.unet.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del pipe.unet.forward


def original_counts(pipe, prompts, micro_steps: int, n_steps: int, cfg: float, S: int, seed: int) -> dict:
    """The original scheme's exact counts from its τ draws alone: 2k + 3 + S rows, k + 4 calls a micro-step.

    (tests/test_learn_delta.py checks this formula against the counter on real runs.)
    """
    p = Problem(
        pipe, load_config(prompts), seed=seed, target="x0", num_steps=n_steps, guidance_scale=cfg, scale_batch_size=S
    )
    ks = [p.draw(n)[0] for n in range(micro_steps)]
    g = 2 if cfg > 1 else 1
    return {
        "rows": sum(g * k + 3 + S for k in ks) / micro_steps,
        "calls": sum(k + 4 for k in ks) / micro_steps,
        "grad_rows": S,
    }


def per_micro(delta) -> dict[str, float]:
    """UNet rows, calls and gradient rows per micro-step of a learned delta (from its meta)."""
    ev = delta.meta["unet_evals"]
    n = max(ev["micro_steps"], 1)
    return {k: ev[k] / n for k in ("rows", "calls", "grad_rows")}


def scheme_cost(pipe, prompts, scheme: str, *, steps: int, last: int = 5, heldout: int = 32, **common) -> dict:
    """One scheme's run: counts per micro-step, wall seconds, mean training loss of the ``last`` steps, held-out
    loss on ``heldout`` fresh draws (NaN when 0) and |Δ|. ``common``: :func:`learn_delta` keywords."""
    t0 = time.perf_counter()
    d = learn_delta(pipe, prompts, max_steps=steps, scheme=scheme, **common)
    wall = time.perf_counter() - t0
    tail = d.meta["loss_history"][-last:]
    keep = ("target", "num_steps", "guidance_scale", "scale_batch_size", "height", "width")
    held = (
        heldout_loss(pipe, prompts, d, samples=heldout, **{k: common[k] for k in keep if k in common})
        if heldout
        else float("nan")
    )
    return {
        **per_micro(d),
        "wall": wall,
        "wall_micro": wall / (steps * common.get("grad_accum_steps", 10)),
        "loss": sum(tail) / len(tail),
        "heldout": held,
        "norm": d.norm(),
    }


def projected_counts(pipe, prompts, *, steps: int, **common) -> dict[str, dict]:
    """Exact counts per micro-step of a ``steps``-step run of each scheme, without the UNet's compute."""
    with stub_unet(pipe):
        cached = per_micro(
            learn_delta(pipe, prompts, max_steps=steps, scheme="cached", **{**common, "progress": False})
        )
    original = original_counts(
        pipe,
        prompts,
        steps * common.get("grad_accum_steps", 10),
        common["num_steps"],
        common["guidance_scale"],
        common.get("scale_batch_size", 4),
        common.get("seed", 0),
    )
    return {"original": original, "cached": cached}
