"""Caption faithfulness of the shapes-world model, read by the ruler from the images it generates.

Captions come from a seed the training data never used, so they are new combinations.
"""

from __future__ import annotations

import time

import numpy as np

from .. import checks
from ..generate import generate
from ..shapes import measure, world

EVAL_SEED = 10_007  # training used seed 0; these captions are drawn afresh
OBJECTS = (1, 2, 3)  # how many objects a caption of the world asks for
# the summed counts: per caption, and per number of objects asked; "more": miscounts that found too many
KEYS = ("objects", "colour", "shape", "count", "sized", "size", "more") + tuple(
    f"{w}{k}" for k in OBJECTS for w in ("asked", "right")
)


def fresh_captions(n: int, seed: int = EVAL_SEED) -> list[str]:
    return [s.caption for s in world.scenes(n, seed=seed)]


def score(caption: str, image) -> dict:
    """Per-caption counts: objects asked for, colours present, shapes right, count right, size words obeyed."""
    asked = world.parse_caption(caption)
    found = measure.measure(np.asarray(image))
    r = {"objects": len(asked), "colour": 0, "shape": 0, "count": int(len(found) == len(asked)), "sized": 0, "size": 0}
    # count, by how many objects the caption asks for, and how often a miscount is one object too many
    r |= {f"asked{len(asked)}": 1, f"right{len(asked)}": r["count"], "more": int(len(found) > len(asked))}
    for a in asked:
        f = measure.find(found, colour=a["colour"])
        if f is None:
            continue
        r["colour"] += 1
        r["shape"] += f.shape == a["shape"]
        if a["size_word"]:
            r["sized"] += 1
            r["size"] += (f.size < world.SIZE_MIDDLE) == (a["size_word"] == "small")
    return r


def totals(pipe, captions: list[str], seeds: list[int], **generate_kwargs) -> dict[str, int]:
    """Summed :func:`score` counts of one batch of captions, each generated with its seed."""
    out = dict.fromkeys(KEYS, 0)
    for c, im in zip(captions, generate(pipe, captions, seed=seeds, **generate_kwargs)):
        for k, v in score(c, im).items():
            out[k] += v
    return out


def fractions(t: dict[str, int], n: int) -> dict[str, float]:
    """Colour present, shape right, count right, size word obeyed, from summed counts over ``n`` captions."""
    return {
        "captions": n,
        "colour": t["colour"] / t["objects"],
        "shape": t["shape"] / t["objects"],
        "count": t["count"] / n,
        "size": t["size"] / max(1, t["sized"]),
        # {objects asked: [captions, counted right]}, and the miscounts that found more objects than asked
        "count_by_objects": {k: [t[f"asked{k}"], t[f"right{k}"]] for k in OBJECTS if t[f"asked{k}"]},
        "miscounts_with_more": t["more"],
    }


def batches(n: int, seed: int = EVAL_SEED, batch: int = 16) -> list[tuple[list[str], list[int]]]:
    """The ``n`` fresh captions in batches of ``batch``, with their seeds: the units of work."""
    captions = fresh_captions(n, seed)
    return [(captions[i : i + batch], list(range(i, min(i + batch, n)))) for i in range(0, n, batch)]


def faithfulness(pipe, n: int = 200, seed: int = EVAL_SEED, batch: int = 16, **generate_kwargs) -> dict:
    """Fractions over ``n`` fresh captions: colour present, shape right, count right, size word obeyed."""
    checks.integer(n, "n", minimum=1, fix="Measure at least one caption.")
    checks.integer(batch, "batch", minimum=1)
    t0 = time.perf_counter()
    summed = dict.fromkeys(KEYS, 0)
    for caps, seeds in batches(n, seed, batch):
        for k, v in totals(pipe, caps, seeds, **generate_kwargs).items():
            summed[k] += v
    return {**fractions(summed, n), "seconds_per_image": (time.perf_counter() - t0) / n}
