"""Layout guidance measured without a ruler: the share of a phrase's cross-attention that falls inside its box.

The measure of success on SD 1.5 / 2.1 / SDXL, where nothing reads object positions from the picture: the
guided layers' maps of the boxed phrase, averaged over steps, and the fraction of their mass inside the box
(1 − Chen et al.'s energy, read after the fact). Chance level is the box's area.
"""

from __future__ import annotations

import time

import torch

from ..layout import LayoutConfig
from ..maps import attention_maps

# prompts and boxes for models that draw the world (no colour needed: nothing is read from the picture)
REAL_CASES: dict[str, tuple[str, dict[str, tuple[float, float, float, float]]]] = {
    "cat left, dog right": ("a photo of a cat and a dog", {"cat": (0.0, 0.1, 0.5, 0.9), "dog": (0.5, 0.1, 1.0, 0.9)}),
    "ball top-left": ("a red ball on a wooden table", {"red ball": (0.0, 0.0, 0.5, 0.5)}),
}


def box_mask(box, size: tuple[int, int]) -> torch.Tensor:
    """1 inside the normalised box (x0, y0, x1, y1) on an (H, W) grid of pixel centres, else 0."""
    h, w = size
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    x0, y0, x1, y1 = box
    return ((ys >= y0) & (ys < y1))[:, None].float() * ((xs >= x0) & (xs < x1))[None, :].float()


def mass_in_box(pipe, prompt: str, boxes: dict, seed: int, config: LayoutConfig | None, size=(64, 64)) -> dict:
    """``{phrase: share of its attention in its box}`` and ``seconds`` for one image, guided by ``config``."""
    layers = "default" if config is None or config.layers is None else config.layers
    kw = {} if config is None else {"boxes": boxes, "layout": config}
    t = time.perf_counter()
    maps = attention_maps(pipe, prompt, seed=seed, words=list(boxes), layers=layers, **kw)
    seconds = time.perf_counter() - t
    out = {}
    for phrase, box in boxes.items():
        m = maps.word(phrase, size=size).clamp_min(0)
        out[phrase] = float((m * box_mask(box, size)).sum() / m.sum().clamp_min(1e-12))
    return {"in_box": out, "seconds": seconds}
