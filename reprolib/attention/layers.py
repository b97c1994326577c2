"""Which cross-attention layers a UNet has, where they sit, and how a user names them.

Layer names are the ``Attention`` modules' names, e.g.
``up_blocks.1.attentions.0.transformer_blocks.0.attn2``; patterns ``"mid"``, ``"up.1"``, ``"down"``
select by prefix, and an ``int`` selects every cross-attention layer whose maps are that many cells
wide at the UNet's default latent size (``16``: the 16×16 layers of SD 1.5 at 512 px).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def _depth(name: str, n_blocks: int) -> int:
    """How many times the latents were halved before this layer (standard UNet2DConditionModel layout)."""
    kind, _, rest = name.partition(".")
    if kind == "mid_block":
        return n_blocks - 1
    index = int(rest.split(".")[0])
    return index if kind == "down_blocks" else n_blocks - 1 - index


def cross_attention_layers(unet, latent_size: int | None = None) -> list[tuple[str, int]]:
    """Every cross-attention layer as ``(name, map side)``, in execution order (down, mid, up).

    The side is the width of its attention maps for ``latent_size``-wide latents (default: the UNet's
    ``sample_size``, i.e. the model's native image size).
    """
    size = latent_size or unet.config.sample_size
    size = size[-1] if isinstance(size, (tuple, list)) else size
    n = len(unet.config.block_out_channels)
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    out = []
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if getattr(unet.get_submodule(name), "is_cross_attention", False):
            out.append((name, max(1, size // 2 ** _depth(name, n))))
    # attn_processors lists modules by registration order, which is down, up, mid; sort into run order
    return sorted(out, key=lambda nr: order[nr[0].split(".")[0]])


def default_layers(unet) -> list[str]:
    """The guidance layers of Chen et al.: the mid block and the first up block with cross-attention.

    * SD 1.5 / 2.1 (64×64 latents): mid (8×8) + ``up_blocks.1`` (16×16, three layers) — exactly the
      official code's ``attn_maps_mid`` + ``attn_maps_up[0]``.
    * SDXL (128×128 latents): mid + ``up_blocks.0``, both 32×32 (10 transformer layers per
      attention). SDXL has no 8×8/16×16 cross-attention; these are its lowest-resolution maps, the
      same place in the network, and its first cross-attention up block, as for SD.
    * A mid block whose maps are smaller than 8×8 cannot tell a quadrant from its neighbour; then every
      layer at the first up block's resolution is used instead. Shapes world (16×16 latents): mid is 4×4,
      so its three 8×8 layers (``down_blocks.1``, ``up_blocks.1`` ×2), where its nouns localise best
      (MODEL_CARD.md) and where ``benchmarks/layout.py`` measured the guidance.
    """
    layers = cross_attention_layers(unet)
    mid = [n for n, _ in layers if n.startswith("mid_block.")]
    ups = sorted({int(n.split(".")[1]) for n, _ in layers if n.startswith("up_blocks.")})
    first_up = [n for n, _ in layers if ups and n.startswith(f"up_blocks.{ups[0]}.")]
    side = dict(layers)
    if mid and side[mid[0]] < 8 and first_up:
        return [n for n, r in layers if r == side[first_up[0]]]
    return mid + first_up


def _expand(pattern: str) -> str:
    p = "mid_block" + pattern[3:] if pattern == "mid" or pattern.startswith("mid.") else pattern
    return re.sub(r"^(up|down)(?=\.|$)", r"\1_blocks", p)


def match_layers(layers: Sequence[tuple[str, int]], spec) -> list[str]:
    """The names among ``layers`` (``(name, side)`` pairs) that ``spec`` selects; see :func:`select_layers`."""
    names = [n for n, _ in layers]
    if spec is None:
        return names
    if isinstance(spec, (str, int)):
        spec = [spec]
    chosen: set[str] = set()
    for p in spec:
        if isinstance(p, int):
            hit = [n for n, r in layers if r == p]
        else:
            q = _expand(str(p))
            hit = [n for n in names if n == q or n.startswith(q + ".")]
        if not hit:
            sides = sorted({r for _, r in layers})
            blocks = sorted({".".join(n.split(".")[:2]).replace(".attentions", "") for n in names})
            raise ValueError(
                f"layer pattern {p!r} selects no cross-attention layer. Use a block prefix "
                f"({', '.join(blocks)}; 'mid', 'up.N', 'down.N' for short), a full layer name, "
                f"or a map side in {sides}."
            )
        chosen.update(hit)
    return [n for n in names if n in chosen]


def select_layers(unet, layers=None) -> list[str]:
    """Cross-attention layer names from ``layers``: ``None`` (all), ``"default"`` (:func:`default_layers`),
    or patterns — ``"mid"``, ``"up.1"``, ``"down"``, a full name — and ints (map side at the default size)."""
    every = cross_attention_layers(unet)
    specs = [layers] if isinstance(layers, (str, int)) else layers
    if specs is None or "default" not in specs:
        return match_layers(every, layers)
    rest = [p for p in specs if p != "default"]
    chosen = set(default_layers(unet)) | (set(match_layers(every, rest)) if rest else set())
    return [n for n, _ in every if n in chosen]


def grid_shape(cells: int, aspect: float = 1.0) -> tuple[int, int]:
    """(h, w) of a flattened map of ``cells`` positions whose height/width ratio is ``aspect``."""
    h = max(1, round(math.sqrt(cells * aspect)))
    w = cells // h
    if h * w != cells:
        raise ValueError(f"a map of {cells} cells is not a grid with height/width {aspect:g}")
    return h, w
