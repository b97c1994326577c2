"""Small matplotlib helpers the chapters share: image grids and saving figures."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def image_grid(images: Sequence, titles: Sequence[str] | None = None, cols: int | None = None,
               size: float = 1.6, suptitle: str | None = None, save: str | Path | None = None):
    """Images in a grid (one row unless ``cols``); optional titles; saved as PNG when ``save`` is a path."""
    n = len(images)
    cols = cols or n
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.3 if suptitle else 0)),
                             squeeze=False)
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
