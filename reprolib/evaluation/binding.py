"""Binding of near colours: can the model draw "a green square and a blue square" as two objects?

#13's composed edit turns its red subject blue beside a green bystander of the same shape. It loses the
bystander in about the seeds where the unedited model, asked for that very picture, draws one blue object
instead of two (session 31, ``checkpoints/shapes_v3/README.md``). The unedited prompt is the edit's ceiling:
this measures it, with no edit, for every shape and both orders of the words.
"""

from __future__ import annotations

import numpy as np

from .. import checks
from ..generate import generate
from ..shapes import measure, world


def near_pairs(pipe, seeds=range(48), colours: tuple[str, str] = ("green", "blue"), **generate_kwargs) -> dict:
    """For each shape and word order, the share of ``seeds`` whose picture holds both objects (by the ruler).

    Returns ``{"seeds": n, "prompts": {prompt: share}, "least": ..., "mean": ...}``.
    """
    colours = tuple(checks.among(colours, "colours", tuple(world.PALETTE)))
    if len(colours) != 2 or colours[0] == colours[1]:
        raise checks.InputError(f"colours is two different colours of {tuple(world.PALETTE)}; got {colours}")
    seeds = [int(s) for s in seeds]
    shares = {}
    for shape in world.SHAPES:
        for a, b in (colours, colours[::-1]):
            prompt = f"a {a} {shape} and a {b} {shape}"
            both = []
            for im in generate(pipe, prompt, seed=seeds, **generate_kwargs):
                found = measure.measure(np.asarray(im))
                both.append(measure.find(found, a, shape) is not None and measure.find(found, b, shape) is not None)
            shares[prompt] = float(np.mean(both))
    values = list(shares.values())
    return {"seeds": len(seeds), "prompts": shares, "least": float(min(values)), "mean": float(np.mean(values))}


def format_near_pairs(result: dict) -> str:
    """``near_pairs``' figures, a line per prompt."""
    lines = [f"both objects drawn, unedited, {result['seeds']} seeds (the composed edit's ceiling):"]
    lines += [f"  {prompt:<40}{share:6.2f}" for prompt, share in result["prompts"].items()]
    lines.append(f"  least {result['least']:.2f}, mean {result['mean']:.3f}")
    return "\n".join(lines)
