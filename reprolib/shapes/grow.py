"""Grow a trained text encoder wider or deeper, or the UNet's attention deeper, without changing what
the model computes (Net2Net-style).

A #13 lever: give the nouns more room (width) or more layers to bind their adjectives (depth) while
keeping every skill the UNet and the encoder have learnt. The grown pair starts as the small one's exact
function, so a fine-tune from it differs from the small model's fine-tune by the capacity alone.

- **Wider** by a whole factor k: every hidden state becomes k copies of the old one. Layer norms see the
  same mean and variance; heads keep their width and come k times over; a layer that reads the
  copies splits each old weight into k parts that sum to it, with zero-sum noise between the parts, so the
  copies get different gradients and drift apart in training (without it they would stay equal forever).
- **Deeper**: new layers are appended before the final layer norm with their output projections (attention
  ``out_proj`` and MLP ``fc2``) zero, so each adds nothing to the residual stream until it learns to.
- **A deeper UNet attention** (more transformer blocks per cross-attention layer): the new blocks come after
  the old ones, their three residual writes (self-attention, cross-attention, feed-forward) zero, so each
  block starts as the identity.
"""

from __future__ import annotations

import torch

TOKEN_EMBEDDING = "embeddings.token_embedding.weight"  # its width is the encoder's
# what a new UNet transformer block writes into its residual stream: zero, so it starts as the identity
SILENT_BLOCK = tuple(
    f"{part}.{p}" for part in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2") for p in ("weight", "bias")
)
SPLIT_NOISE = 0.1  # std of the zero-sum noise between the parts of a split weight, in units of the weight's std


def layer_count(state: dict) -> int:
    """How many layers the text encoder with this state dict has."""
    return len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})


def _widen(old: torch.Tensor, shape: torch.Size, *, reads_copies: bool, g: torch.Generator) -> torch.Tensor:
    """``old`` grown to ``shape``: outputs tiled; with ``reads_copies`` the last dim is split into parts
    (an embedding's last dim is the state it writes, so it is tiled)."""
    new = old.repeat(shape[0] // old.shape[0], *([1] * (old.dim() - 1)))
    if new.shape == shape:
        return new
    k_in = shape[-1] // old.shape[-1]
    if not reads_copies:
        return new.repeat(1, k_in)
    noise = torch.randn(k_in, *new.shape, generator=g) * SPLIT_NOISE * old.std()
    noise -= noise.mean(0)  # the parts still sum to the old weight
    return torch.cat([new / k_in + n for n in noise], dim=-1)


def grow_text_encoder(old: dict, new_model: torch.nn.Module, seed: int = 0) -> dict:
    """A state dict for ``new_model`` (a wider and/or deeper CLIP text encoder) that computes what the
    encoder with state ``old`` computed, tiled ``new width ÷ old width`` times."""
    g = torch.Generator().manual_seed(seed)
    fresh = new_model.state_dict()
    out = {}
    for key, target in fresh.items():
        if key not in old:  # a new layer: as initialised, but silent (see the module docstring)
            silent = key.endswith(("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias"))
            out[key] = torch.zeros_like(target) if silent else target.clone()
            continue
        # embeddings and layer norms write the hidden state; every linear layer (2-D, not an embedding) reads it
        reads = old[key].dim() == 2 and "embedding" not in key
        out[key] = _widen(old[key].float(), target.shape, reads_copies=reads, g=g).to(target.dtype)
    return out


def transformer_depths(state: dict) -> tuple[int, int, int]:
    """Transformer blocks per cross-attention layer at 16×16, 8×8 and the mid block of a shapes-world UNet
    state dict (``model.TRANSFORMER_LAYERS``'s order)."""

    def depth(prefix: str) -> int:
        head = prefix + "0.transformer_blocks."
        return len({k[len(head) :].split(".")[0] for k in state if k.startswith(head)})

    return depth("down_blocks.0.attentions."), depth("down_blocks.1.attentions."), depth("mid_block.attentions.")


def unet_channels(state: dict) -> tuple[int, int, int]:
    """The channels at 16×16, 8×8 and 4×4 of a shapes-world UNet state dict (``model.UNET_CHANNELS``'s order)."""
    return tuple(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(3))


def grow_unet(old: dict, new_model: torch.nn.Module, seed: int = 0) -> dict:
    """A state dict for ``new_model`` (the same UNet reading wider token states, and/or with more transformer
    blocks per attention): the cross-attention keys and values read the copies of a grown encoder's states as
    the old ones read the originals; new blocks are silent (``SILENT_BLOCK``)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = {}
    for key, target in new_model.state_dict().items():
        if key in old:
            out[key] = _widen(old[key], target.shape, reads_copies=True, g=g)
        else:  # a new transformer block: as initialised, but silent
            out[key] = torch.zeros_like(target) if key.endswith(SILENT_BLOCK) else target.clone()
    return out
