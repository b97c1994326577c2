"""A delta measured in the model's own text space: does the direction found from some prompt pairs point the
same way as the pairs it never saw? The measure of a delta on a model without a ruler (SD 1.5, 2.1, SDXL).

For each pair of the config, the optimization-free delta of the *other* pairs is compared with the pair's own
(cosine over every encoder's vector). Near 1: one attribute direction shared by subjects and prefixes; near 0:
each pair points its own way. No image is generated, so nothing here says what the picture does.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..contrastive import contrastive_delta
from ..delta import Delta
from ..prompts import PromptConfig, load_config


def cosine(a: Delta, b: Delta) -> float:
    """Cosine of two deltas' vectors, all encoders concatenated in one order."""
    keys = sorted(a.vectors)
    u = torch.cat([a.vectors[k] for k in keys])
    v = torch.cat([b.vectors[k] for k in keys])
    return float(u @ v / (u.norm() * v.norm()).clamp_min(1e-12))


def held_out_agreement(pipe, config, i: int) -> float:
    """Cosine between pair ``i``'s own delta and the delta of every other pair of ``config``."""
    cfg: PromptConfig = load_config(config)
    if len(cfg.pairs) < 2:
        raise ValueError(f"config {cfg.tag!r} has {len(cfg.pairs)} pair; held-out agreement needs at least 2")
    own = replace(cfg, pairs=[cfg.pairs[i]])
    rest = replace(cfg, pairs=[p for j, p in enumerate(cfg.pairs) if j != i])
    return cosine(contrastive_delta(pipe, own), contrastive_delta(pipe, rest))
