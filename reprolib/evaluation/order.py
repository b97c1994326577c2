"""Does a caption's word order say how big an object is? The size delta against "a later object".

The world places objects one after the other and retries a big one that does not fit, so in placement order
later objects are smaller. A mix that names them in that order (v1 to v4) teaches the encoder that "small"
and "named later" go together; :func:`order_bias` measures both halves of that: the objects' size bins by
their place in the caption, and the cosine between the size delta and the mean difference between a
later object's noun state and a first object's, taken within each size word (so the words themselves,
whose shares differ by place, do not make the direction).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..conditioning import TextConditioning
from ..delta import Delta
from ..shapes import world

SIZE_WORDS = ("small", "big", "none")


def _noun_states(cond: TextConditioning, captions: list[str], name: str, batch: int = 200):
    """Every shape noun's state of encoder ``name``: (states (n, dim), its object's place, its size word)."""
    states, place, word = [], [], []
    for i in range(0, len(captions), batch):
        emb = cond.encode(captions[i : i + batch])
        for b, toks in enumerate(emb.tokens):
            words = [t.removesuffix("</w>") for t in toks.tokens]
            nouns = [j for j, w in enumerate(words) if w in world.SHAPES]
            for k, j in enumerate(nouns):
                states.append(emb.states[name][b, j].float())
                place.append(k)
                word.append(words[j - 2] if words[j - 2] in ("small", "big") else "none")
    return torch.stack(states), np.array(place), np.array(word)


def order_bias(pipe, size: Delta, n: int = 3000, seed: int = 0, mix: str = "v1") -> dict:
    """Size bins by place in ``n`` captions of ``mix``, and cos(size delta, later − first noun) per size word."""
    checks.integer(n, "n (captions)", minimum=1)
    checks.among([mix], "mix", sorted(world.MIXES))
    scenes = world.scenes(n, seed=seed, **world.MIXES[mix])
    shares: dict[int, dict[str, float]] = {}
    for k in range(max(len(s.objects) for s in scenes)):
        sizes = np.array([s.objects[k].size for s in scenes if len(s.objects) > k])
        shares[k + 1] = {
            "objects": int(len(sizes)),
            "small": float(np.mean(sizes < world.SMALL_BELOW)),
            "big": float(np.mean(sizes > world.BIG_ABOVE)),
        }
    cond = TextConditioning(pipe)
    (name, d), *_ = size.vectors.items()
    states, place, word = _noun_states(cond, [s.caption for s in scenes if s.caption], name)
    cosine = {}
    for w in SIZE_WORDS:
        first, later = states[(word == w) & (place == 0)], states[(word == w) & (place > 0)]
        if len(first) and len(later):
            direction = later.mean(0) - first.mean(0)
            cosine[w] = float(F.cosine_similarity(d.float().to(direction.device), direction, dim=0))
    return {"mix": mix, "captions": n, "size_words_by_place": shares, "cos_size_delta_later_minus_first": cosine}


def format_order_bias(r: dict) -> str:
    """:func:`order_bias`'s numbers as printed lines."""
    lines = [f"object order and size on {r['captions']} captions of mix {r['mix']}:"]
    for k, v in r["size_words_by_place"].items():
        lines.append(
            f"  object {k} of the caption: small (< {world.SMALL_BELOW:g} px) {v['small']:.2f}  "
            f"big (> {world.BIG_ABOVE:g} px) {v['big']:.2f}  ({v['objects']} objects)"
        )
    cos = "  ".join(f"{w} {c:+.2f}" for w, c in r["cos_size_delta_later_minus_first"].items())
    lines.append(f"  cos(size delta, later − first object's noun state), within each size word: {cos}")
    return "\n".join(lines)
