"""Where a noun's cross-attention goes: the share of its attention on its own object, ÷ the object's area share.

1.0 means no localisation (attention spread like the object's area would be by chance); the layout
chapter needs well above 1 in the layers it guides with. Objects are found in the generated image by
the ruler, so a misdrawn object counts as found only if its colour is there.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .. import checks
from ..maps import attention_maps
from ..shapes import measure, world


def localisation(pipe, n_scenes: int = 32, seed: int = 20_011, steps: int | None = None) -> dict:
    """Mean ratio per cross-attention layer over the nouns of ``n_scenes`` fresh 2–3 object scenes."""
    checks.integer(n_scenes, "n_scenes", minimum=1, fix="Measure at least one scene.")
    rng = np.random.default_rng(seed)
    ratios: dict[str, list[float]] = defaultdict(list)
    for k in range(n_scenes):
        scene = world.random_scene(rng, n_objects=int(rng.choice([2, 3])))
        maps = attention_maps(pipe, scene.caption, seed=k, steps=steps)
        found = measure.measure(np.asarray(maps.image))
        for obj in scene.objects:
            f = measure.find(found, colour=obj.colour)
            if f is None:
                continue
            share = f.mask.mean()
            # the noun of *this* object: the caption's n-th occurrence is not needed, colours are unique
            word = rf"\b{obj.colour}\s+({obj.shape})\b"
            for layer in maps.layers:
                m = maps.word(word, layer=layer, size=f.mask.shape).numpy()
                ratios[layer].append(float((m * f.mask).sum() / max(m.sum(), 1e-12) / share))
    res = {layer: maps.resolutions[layer] for layer in ratios}
    return {
        "scenes": n_scenes,
        "layers": {f"{layer} ({res[layer]}x{res[layer]})": float(np.mean(v)) for layer, v in ratios.items()},
    }
