"""Every figure helper of the chapters and CLIs: image grids, attention overlays, boxes, saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw

from .layout import Box
from .maps import AttentionMaps


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    cols: int | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
    save: str | Path | None = None,
):
    """Images in a grid (one row unless ``cols``); optional titles; saved as PNG when ``save`` is a path."""
    n = len(images)
    cols = cols or n
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.3 if suptitle else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, im in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(np.asarray(im), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if save:
        save_figure(fig, save)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def draw_boxes(image, boxes: dict[str, Box] | Sequence[Box], scale: int = 3, colour=(255, 255, 255)):
    """A copy of ``image`` enlarged ``scale``× (nearest neighbour, pixels stay crisp) with the normalised
    boxes drawn on it; a PIL image."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB").resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    items = list(boxes.values()) if isinstance(boxes, dict) else list(boxes)
    for x0, y0, x1, y1 in items:
        draw.rectangle(
            [x0 * img.width, y0 * img.height, x1 * img.width - 1, y1 * img.height - 1],
            outline=colour,
            width=max(2, round(img.width / 150)),
        )
    return img


def _normalised(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    return m / m.max() if m.max() > 0 else m


def _outline_boxes(ax, boxes, height: int, width: int, colour: str = "white") -> None:
    if boxes and not isinstance(boxes[0], (tuple, list)):
        boxes = [boxes]  # one box given bare
    for x0, y0, x1, y1 in boxes or ():
        ax.add_patch(
            Rectangle(
                (x0 * width, y0 * height),
                (x1 - x0) * width,
                (y1 - y0) * height,
                fill=False,
                edgecolor=colour,
                linewidth=2,
            )
        )


def plot_overlay(
    maps: AttentionMaps,
    word: str,
    *,
    layer=None,
    step=None,
    boxes=None,
    ax=None,
    alpha: float = 0.55,
    cmap: str = "jet",
    title: str | None = None,
):
    """The word's heat map (normalised to [0, 1]) over the image, with optional normalised boxes; a Figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.2, 3.2))
    h, w = maps.size
    ax.imshow(maps.image, extent=(0, w, h, 0))
    ax.imshow(_normalised(maps.word(word, layer=layer, step=step)).numpy(), cmap=cmap, alpha=alpha, extent=(0, w, h, 0))
    _outline_boxes(ax, boxes, h, w)
    ax.set_title(word if title is None else title, fontsize=9)
    ax.axis("off")
    return fig


def _columns(maps: AttentionMaps, by: str, max_steps: int) -> list[tuple[str, dict]]:
    if by == "step":
        steps = maps.steps
        if len(steps) > max_steps:  # evenly spaced, first and last included
            steps = [steps[round(i * (len(steps) - 1) / (max_steps - 1))] for i in range(max_steps)]
        return [(f"step {s}", {"step": s}) for s in dict.fromkeys(steps)]
    if by == "resolution":
        return [(f"{r}×{r}", {"layer": r}) for r in sorted(set(maps.resolutions[n] for n in maps.layers))]
    if by == "block":
        blocks = dict.fromkeys(
            ".".join(n.split(".")[:2]) if not n.startswith("mid") else "mid_block" for n in maps.layers
        )
        return [(b.replace("_blocks", "").replace("_block", ""), {"layer": b}) for b in blocks]
    if by == "layer":
        return [(n.replace("transformer_blocks", "tb").replace("attentions", "a"), {"layer": n}) for n in maps.layers]
    raise ValueError(f"by must be 'block', 'resolution', 'layer' or 'step', not {by!r}")


def plot_grid(
    maps: AttentionMaps,
    words: Sequence[str] | None = None,
    *,
    by: str = "block",
    max_steps: int = 8,
    boxes: dict | None = None,
    cmap: str = "jet",
):
    """Rows: words; columns: the average over everything, then per block/resolution/layer/step. A Figure."""
    words = list(words or maps.words)
    cols = [("all", {})] + _columns(maps, by, max_steps)
    fig, axes = plt.subplots(len(words), len(cols), figsize=(1.8 * len(cols), 1.8 * len(words)), squeeze=False)
    for r, word in enumerate(words):
        for c, (label, sel) in enumerate(cols):
            plot_overlay(
                maps,
                word,
                ax=axes[r, c],
                cmap=cmap,
                title=label if r == 0 else "",
                boxes=(boxes or {}).get(word),
                **sel,
            )
        axes[r, 0].text(-0.08, 0.5, word, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center")
    fig.tight_layout()
    return fig
