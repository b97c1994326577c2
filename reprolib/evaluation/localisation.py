"""Where a noun's cross-attention goes: the share of its attention on its own object, ÷ the object's area share.

1.0 means no localisation (attention spread like the object's area would be by chance); the layout
chapter needs well above 1 in the layers it guides with. Objects are found in the generated image by
the ruler, so a misdrawn object counts as found only if its colour is there.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from .. import checks
from ..maps import attention_maps
from ..shapes import measure, world


def fresh_scenes(n_scenes: int, seed: int = 20_011) -> list:
    """``n_scenes`` fresh two- and three-object scenes (the k-th is generated with seed k)."""
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng, n_objects=int(rng.choice([2, 3]))) for _ in range(n_scenes)]


def scene_ratios(pipe, k: int, scene, steps: int | None = None) -> dict[str, tuple[int, list[float]]]:
    """``{layer: (map side, [ratio per noun found])}`` for one scene generated with seed ``k``."""
    maps = attention_maps(pipe, scene.caption, seed=k, steps=steps)
    found = measure.measure(np.asarray(maps.image))
    out = {layer: (maps.resolutions[layer], []) for layer in maps.layers}
    for obj in scene.objects:
        f = measure.find(found, colour=obj.colour)
        if f is None:
            continue
        share = f.mask.mean()
        # the noun of *this* object: the caption's n-th occurrence is not needed, colours are unique
        word = re.compile(rf"\b{obj.colour}\s+({obj.shape})\b")
        for layer in maps.layers:
            m = maps.word(word, layer=layer, size=f.mask.shape).numpy()
            out[layer][1].append(float((m * f.mask).sum() / max(m.sum(), 1e-12) / share))
    return out


def summarise(per_scene: list[dict[str, tuple[int, list[float]]]]) -> dict[str, float]:
    """Mean ratio per layer (named with its map size) over every noun of every scene."""
    ratios: dict[str, list[float]] = defaultdict(list)
    res: dict[str, int] = {}
    for scene in per_scene:
        for layer, (side, values) in scene.items():
            ratios[layer] += values
            res[layer] = side
    return {f"{layer} ({res[layer]}x{res[layer]})": float(np.mean(v)) for layer, v in ratios.items() if v}


def localisation(pipe, n_scenes: int = 32, seed: int = 20_011, steps: int | None = None) -> dict:
    """Mean ratio per cross-attention layer over the nouns of ``n_scenes`` fresh 2–3 object scenes."""
    checks.integer(n_scenes, "n_scenes", minimum=1, fix="Measure at least one scene.")
    per_scene = [scene_ratios(pipe, k, s, steps) for k, s in enumerate(fresh_scenes(n_scenes, seed))]
    return {"scenes": n_scenes, "layers": summarise(per_scene)}
