"""How far reprolib's layout energy is from the official code's formula, measured on the sampler's own maps.

reprolib's :func:`reprolib.layout.layout_energy` averages a phrase's attention over heads and tokens
*before* taking the in-box share, and weights map cells on a box's edge by the fraction they cover.
The official code takes the share per head and token and averages the squared energies, and rounds
box edges down to whole cells (``int(x0 * W)``). Both choices are written out here and evaluated on
the maps of unguided generations, one change at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..attention import AttentionStore, select_layers
from ..conditioning import TextConditioning
from ..generate import generate
from ..layout import Box, Target, box_mask, layout_energy, targets_for
from ..maps import StepClock

Mask = Callable[[list[Box], int, int], torch.Tensor]


def rounded_mask(boxes: list[Box], h: int, w: int) -> torch.Tensor:
    """The official code's mask: 1 on the cells from int(x0·W) to int(x1·W) (likewise in y), else 0."""
    m = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes:
        m[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = 1
    return m


def energy(maps: list[torch.Tensor], targets: list[Target], mask: Mask, per_head: bool) -> float:
    """Mean over layers and phrases of (1 − in-box share)², for batch row 0 of maps (batch, heads, h, w, tokens).

    ``per_head``: the share per head and token, then the mean of the squares (the official formula);
    else the share of the attention averaged over heads and tokens first (reprolib's).
    """
    total, n = 0.0, 0
    for a in maps:
        a = a[0].float()  # (heads, h, w, tokens)
        for tg in targets:
            m = mask(tg.boxes, a.shape[1], a.shape[2])
            att = a[..., tg.positions[0]]
            if per_head:  # (heads, tokens) shares
                share = (att * m[None, :, :, None]).sum((1, 2)) / att.sum((1, 2))
            else:
                att = att.mean(dim=(0, -1))
                share = (att * m).sum() / att.sum()
            total += float(((1 - share) ** 2).mean())
            n += 1
    return total / n


def energy_variants(
    pipe, prompt: str, boxes: dict, seeds=range(8), steps: int | None = None, record_steps=range(10), layers=None
) -> dict[str, float]:
    """reprolib's mean energy, then the mean |difference| to it of each official choice and of both."""
    cond = TextConditioning(pipe)
    targets = targets_for([cond.tokenize(prompt)], boxes)
    names = select_layers(pipe.unet, "default" if layers is None else layers)
    rows: dict[str, list[float]] = {"reprolib": [], "check": [], "per head": [], "int() edges": [], "official": []}
    for seed in seeds:
        store = AttentionStore(pipe.unet, names, rows="cond", batch=2, steps=record_steps, to_cpu=True)
        generate(pipe, prompt, seed=int(seed), steps=steps, hooks=[StepClock(store)])
        for s in sorted(store.maps[names[0]]):
            maps = [store.grid(n, s) for n in names]
            ours = energy(maps, targets, box_mask, per_head=False)
            rows["reprolib"].append(ours)
            rows["check"].append(abs(ours - float(layout_energy(maps, targets))))
            rows["per head"].append(abs(energy(maps, targets, box_mask, per_head=True) - ours))
            rows["int() edges"].append(abs(energy(maps, targets, rounded_mask, per_head=False) - ours))
            rows["official"].append(abs(energy(maps, targets, rounded_mask, per_head=True) - ours))
    return {k: float(np.mean(v)) for k, v in rows.items()}
