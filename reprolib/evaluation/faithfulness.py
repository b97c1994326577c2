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


def fresh_captions(n: int, seed: int = EVAL_SEED) -> list[str]:
    return [s.caption for s in world.scenes(n, seed=seed)]


def score(caption: str, image) -> dict:
    """Per-caption counts: objects asked for, colours present, shapes right, count right, size words obeyed."""
    asked = world.parse_caption(caption)
    found = measure.measure(np.asarray(image))
    r = {"objects": len(asked), "colour": 0, "shape": 0, "count": int(len(found) == len(asked)), "sized": 0, "size": 0}
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


def faithfulness(pipe, n: int = 200, seed: int = EVAL_SEED, batch: int = 16, **generate_kwargs) -> dict:
    """Fractions over ``n`` fresh captions: colour present, shape right, count right, size word obeyed."""
    checks.integer(n, "n", minimum=1, fix="Measure at least one caption.")
    checks.integer(batch, "batch", minimum=1)
    captions = fresh_captions(n, seed)
    totals = {"objects": 0, "colour": 0, "shape": 0, "count": 0, "sized": 0, "size": 0}
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        caps = captions[i : i + batch]
        images = generate(pipe, caps, seed=list(range(i, i + len(caps))), **generate_kwargs)
        for c, im in zip(caps, images):
            for k, v in score(c, im).items():
                totals[k] += v
    return {
        "captions": n,
        "colour": totals["colour"] / totals["objects"],
        "shape": totals["shape"] / totals["objects"],
        "count": totals["count"] / n,
        "size": totals["size"] / max(1, totals["sized"]),
        "seconds_per_image": (time.perf_counter() - t0) / n,
    }
