"""The training data: rendered scenes and their captions, cached in the run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...files import atomic_write
from .. import world


def save_atomic(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # never leave a half-written checkpoint behind


def _images(scenes) -> torch.Tensor:
    a = np.stack([world.render(s) for s in scenes]).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def training_scenes(n: int, seed: int, mix: str) -> list[world.Scene]:
    return world.scenes(n, seed=seed, p_empty=0.1, **world.MIXES[mix])


def data(out: Path, n_scenes: int, seed: int, mix: str = "v1") -> tuple[torch.Tensor, list[str]]:
    """Rendered training images and captions (cached; rebuilt identically from the seed and mix)."""
    path = out / "data.pt"
    if path.exists():
        d = torch.load(path)
        if d["n"] == n_scenes and d["seed"] == seed and d.get("mix", "v1") == mix:
            return d["images"], d["captions"]
    scenes = training_scenes(n_scenes, seed, mix)
    images = torch.cat([_images(scenes[i : i + 1000]) for i in tqdm(range(0, n_scenes, 1000), desc="render")])
    images = ((images + 1) * 127.5).round().to(torch.uint8)
    captions = [s.caption for s in scenes]
    save_atomic({"n": n_scenes, "seed": seed, "mix": mix, "images": images, "captions": captions}, path)
    return images, captions
