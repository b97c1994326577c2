"""Where a noun's cross-attention goes: the share of its attention on its own object, ÷ the object's area share.

1.0 means no localisation (attention spread like the object's area would be by chance); the layout
chapter needs well above 1 in the layers it guides with. Objects are found in the generated image by
the ruler, so a misdrawn object counts as found only if its colour is there.

The same maps read the other way round (``reading``): what an object's *pixels* attend to, their own noun
or another object's, over the steps an edit acts on (from ``generate``'s delay). A values-only edit of one
noun moves each pixel by that pixel's attention to the noun, so another object's reading of the subject's noun
is the share of the edit a bystander receives. A noun can be well localised (most of its attention on its
object) while a bystander's pixels still read it.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from .. import checks
from ..generate import DELAY
from ..maps import attention_maps
from ..shapes import measure, world


def fresh_scenes(n_scenes: int, seed: int = 20_011) -> list:
    """``n_scenes`` fresh two- and three-object scenes (the k-th is generated with seed k)."""
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng, n_objects=int(rng.choice([2, 3]))) for _ in range(n_scenes)]


def scene_ratios(pipe, k: int, scene, steps: int | None = None) -> dict[str, tuple[int, list[float]]]:
    """``{layer: (map side, [ratio per noun found])}`` for one scene generated with seed ``k``."""
    return scene_maps(pipe, k, scene, steps)[0]


def scene_maps(pipe, k: int, scene, steps: int | None = None) -> tuple[dict, dict[str, list[tuple[float, float]]]]:
    """(``scene_ratios``'s dict, ``{layer: [(own, other) per object found]}``) for one scene, seed ``k``: an
    object's pixels' mean attention to its own noun and to the other found objects' nouns (their mean), over
    the steps from ``generate``'s delay on."""
    maps = attention_maps(pipe, scene.caption, seed=k, steps=steps)
    found = measure.measure(np.asarray(maps.image))
    ratios = {layer: (maps.resolutions[layer], []) for layer in maps.layers}
    reading: dict[str, list[tuple[float, float]]] = {layer: [] for layer in maps.layers}
    late = [s for s in maps.steps if s >= int(DELAY * len(maps.steps))]
    objects = []
    for o in scene.objects:
        f = measure.find(found, colour=o.colour)
        if f is not None:  # the noun of *this* object: the caption's n-th occurrence is not needed, colours are unique
            objects.append((f, re.compile(rf"\b{o.colour}\s+({o.shape})\b")))
    size, beside = (objects[0][0].mask.shape if objects else None), len(objects) > 1  # reading needs two objects
    for layer in maps.layers:
        every = [maps.word(word, layer=layer, size=size).numpy() for _, word in objects]
        after = [maps.word(word, layer=layer, step=late, size=size).numpy() for _, word in objects] if beside else []
        for i, (f, _) in enumerate(objects):
            m = every[i]  # the share of the noun's attention on its object ÷ the object's share of the picture
            ratios[layer][1].append(float((m * f.mask).sum() / max(m.sum(), 1e-12) / f.mask.mean()))
            if beside:
                other = np.mean([after[j][f.mask].mean() for j in range(len(objects)) if j != i])
                reading[layer].append((float(after[i][f.mask].mean()), float(other)))
    return ratios, reading


def summarise(per_scene: list[dict[str, tuple[int, list[float]]]]) -> dict[str, float]:
    """Mean ratio per layer (named with its map size) over every noun of every scene."""
    ratios: dict[str, list[float]] = defaultdict(list)
    res: dict[str, int] = {}
    for scene in per_scene:
        for layer, (side, values) in scene.items():
            ratios[layer] += values
            res[layer] = side
    return {f"{layer} ({res[layer]}x{res[layer]})": float(np.mean(v)) for layer, v in ratios.items() if v}


def summarise_reading(per_scene: list[dict[str, list[tuple[float, float]]]], sides: dict[str, int]) -> dict:
    """Per layer (named with its map size): mean attention of an object's pixels to its own noun and to another
    object's, over every object found beside another."""
    out = {}
    for layer, side in sides.items():
        pairs = [p for scene in per_scene for p in scene[layer]]
        if pairs:
            own, other = np.mean(pairs, axis=0)
            out[f"{layer} ({side}x{side})"] = {"own": float(own), "other": float(other)}
    return out


def localisation(pipe, n_scenes: int = 32, seed: int = 20_011, steps: int | None = None) -> dict:
    """Mean ratio per cross-attention layer over the nouns of ``n_scenes`` fresh 2–3 object scenes, and
    (``reading``) what the objects' pixels attend to (``scene_maps``)."""
    checks.integer(n_scenes, "n_scenes", minimum=1, fix="Measure at least one scene.")
    per_scene = [scene_maps(pipe, k, s, steps) for k, s in enumerate(fresh_scenes(n_scenes, seed))]
    sides = {layer: side for layer, (side, _) in per_scene[0][0].items()}
    return {
        "scenes": n_scenes,
        "layers": summarise([r for r, _ in per_scene]),
        "reading": summarise_reading([r for _, r in per_scene], sides),
    }
