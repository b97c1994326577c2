"""The ruler: find the objects in a shapes-world image by classical means (no learning).

Pixels are labelled by their nearest palette colour, grouped into connected components, and
each component's shape is read from how it fills its bounding box and how its width grows
from top to bottom (a triangle is narrow at the top, a square is not, a circle is in between).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import AREA_FACTOR, BACKGROUND, PALETTE

MIN_AREA = 8  # px; smaller blobs are noise from decoding
MAX_DIST = 90.0  # a pixel farther than this (RGB distance) from every colour counts as background
_COLOURS = np.asarray([BACKGROUND, *PALETTE.values()], np.float32)
_NAMES = ["background", *PALETTE]


@dataclass
class Found:
    """One object found in an image. ``size`` is the half-extent implied by area and shape."""

    colour: str
    shape: str
    area: int
    centroid: tuple[float, float]  # (x, y) in pixels, origin top-left
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    mask: np.ndarray

    @property
    def size(self) -> float:
        return float(np.sqrt(self.area / AREA_FACTOR[self.shape]))


def _to_array(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:  # floats in [0, 1]
        a = np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    return a


def colour_labels(image) -> np.ndarray:
    """Index into ['background', *PALETTE] of each pixel's nearest colour."""
    a = _to_array(image).astype(np.float32)
    d = ((a[:, :, None, :] - _COLOURS[None, None]) ** 2).sum(-1)
    lab = d.argmin(-1)
    # antialiased edges blend two colours; don't let the blend count as a third colour
    return np.where(d.min(-1) <= MAX_DIST**2, lab, 0)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, by min-label propagation (pure numpy)."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nb = np.minimum.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        nb = np.where(mask, nb, big)
        if np.array_equal(nb, lab):
            break
        lab = nb
    return [lab == v for v in np.unique(lab[mask])]


def classify_shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    fill = box.mean()
    h = box.shape[0]
    widths = box.sum(1)
    top, bottom = widths[: max(1, h // 4)].mean(), widths[-max(1, h // 4) :].mean()
    if top < 0.6 * bottom and fill < 0.7:
        return "triangle"
    if fill > 0.88:
        return "square"
    return "circle"


def measure(image, min_area: int = MIN_AREA) -> list[Found]:
    """All objects in ``image`` (uint8 or float RGB), largest first."""
    labels = colour_labels(image)
    found = []
    for ci, name in enumerate(_NAMES[1:], start=1):
        for m in components(labels == ci):
            area = int(m.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(m)
            found.append(
                Found(
                    name,
                    classify_shape(m),
                    area,
                    (float(xs.mean()), float(ys.mean())),
                    (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                    m,
                )
            )
    return sorted(found, key=lambda f: -f.area)


def find(found: list[Found], colour: str | None = None, shape: str | None = None) -> Found | None:
    """The largest found object of that colour (and shape), or None."""
    for f in found:
        if (colour is None or f.colour == colour) and (shape is None or f.shape == shape):
            return f
    return None


def fraction_in_box(obj_mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Fraction of an object's pixels inside a normalised box (x0, y0, x1, y1), origin top-left."""
    h, w = obj_mask.shape
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(obj_mask)
    if len(xs) == 0:
        return 0.0
    inside = (xs + 0.5 >= x0 * w) & (xs + 0.5 <= x1 * w) & (ys + 0.5 >= y0 * h) & (ys + 0.5 <= y1 * h)
    return float(inside.mean())
