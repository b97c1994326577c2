"""Training-time levers that tie each object to its own noun token (shapes world v3 candidate, issue #13).

* **Grounding loss** (as TokenCompose, Wang et al. 2024, does for SD with segmentation masks): in every
  cross-attention layer, each noun's attention should fall on its object. The loss is the same energy
  layout guidance lowers at sampling time, (1 − Σ_object A / Σ A)², here with the renderer's exact
  soft masks, averaged over the objects and layers of the batch.
* **Attribute dropout**: for a share of the captions, the colour and size words are hidden from the
  UNet's cross-attention (the causal text encoder still reads them), so the UNet learns to draw an
  object from its noun token alone, the token an attribute delta edits.

Both are off unless ``python -m reprolib.shapes.train`` is given ``--grounding`` / ``--attribute-dropout``.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from . import world

MAX_OBJECTS = 3
MASK_RES = 16  # the UNet's largest attention maps; smaller ones are average-pooled from it


def _words(ids: torch.Tensor, tokenizer) -> list[list[str]]:
    return [[t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(row.tolist())] for row in ids]


def noun_targets(scenes: list[world.Scene], ids: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene, each object's noun position in ``ids`` (−1 where none) and its coverage at 16×16.

    Colours never repeat within a scene, so an object's noun is the token after its colour word.
    Returns positions (n, 3) long and masks (n, 3, 16, 16) float16.
    """
    pos = torch.full((len(scenes), MAX_OBJECTS), -1, dtype=torch.long)
    masks = torch.zeros(len(scenes), MAX_OBJECTS, MASK_RES, MASK_RES, dtype=torch.float16)
    pool = world.RES // MASK_RES
    for i, (scene, words) in enumerate(zip(scenes, _words(ids, tokenizer))):
        if not scene.caption:
            continue
        for k, obj in enumerate(scene.objects):
            c = words.index(obj.colour)
            if words[c + 1] != obj.shape:
                raise ValueError(f"caption {scene.caption!r}: expected {obj.shape!r} after {obj.colour!r}")
            pos[i, k] = c + 1
            cov = world.coverage(obj).reshape(MASK_RES, pool, MASK_RES, pool).mean(axis=(1, 3))
            masks[i, k] = torch.from_numpy(cov.astype(np.float16))
    return pos, masks


def attribute_positions(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """(n, tokens) bool: the colour and size words of each caption."""
    attr = {*world.PALETTE, "small", "big"}
    return torch.tensor([[w in attr for w in row] for row in _words(ids, tokenizer)])


def drop_attributes(mask: torch.Tensor, attributes: torch.Tensor, p: float, generator: torch.Generator):
    """``mask`` (batch, tokens) with the attribute words zeroed for a random share ``p`` of the rows."""
    rows = torch.rand(mask.shape[0], generator=generator) < p
    return mask * ~(attributes & rows[:, None])


@contextmanager
def cross_attention_probs(unet):
    """Collect every cross-attention layer's probabilities, with their graph, while the UNet runs.

    A forward hook recomputes them from the layer's own projections with diffusers' ``get_attention_scores``
    (the training step keeps its fast fused attention). Yields a dict layer → (batch, heads, queries, tokens).
    (``reprolib.attention`` records maps for the method; this unit sits below it.)
    """
    maps: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(mod, args, kwargs, out):
            h = args[0] if args else kwargs["hidden_states"]
            enc, bias = kwargs["encoder_hidden_states"], kwargs.get("attention_mask")
            q, k = mod.head_to_batch_dim(mod.to_q(h)), mod.head_to_batch_dim(mod.to_k(enc))
            if bias is not None:
                bias = mod.prepare_attention_mask(bias, enc.shape[1], h.shape[0])
            p = mod.get_attention_scores(q, k, bias)
            maps[name] = p.view(h.shape[0], mod.heads, *p.shape[1:])

        return record

    handles = [
        m.register_forward_hook(hook(n), with_kwargs=True)
        for n, m in unet.named_modules()
        if getattr(m, "is_cross_attention", False)
    ]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def grounding_loss(maps: dict[str, torch.Tensor], positions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over layers and objects of (1 − attention inside the object ÷ all its attention)².

    ``maps``: layer → (batch, heads, h·w, tokens) attention probabilities (with their graph).
    """
    valid = positions >= 0
    if not valid.any():
        return torch.zeros(())
    idx = positions.clamp_min(0)
    total = 0.0
    for p in maps.values():
        p = p.float().mean(1)  # (batch, queries, tokens)
        side = int(round(p.shape[1] ** 0.5))
        a = torch.gather(p, 2, idx[:, None, :].expand(-1, p.shape[1], -1))  # (batch, queries, objects)
        m = F.adaptive_avg_pool2d(masks.float(), side).flatten(2).transpose(1, 2)  # (batch, queries, objects)
        inside = (a * m).sum(1) / a.sum(1).clamp_min(1e-8)
        total = total + ((1 - inside) ** 2 * valid).sum() / valid.sum()
    return total / len(maps)
