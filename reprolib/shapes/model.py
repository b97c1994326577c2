"""The shapes-world model: Stable Diffusion's component classes at a size a laptop CPU trains.

Same classes as SD 1.5 (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer,
DDIMScheduler), so every reprolib function treats it exactly like a real model.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.normalization import RMSNorm
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import MAX_LENGTH

TEXT_DIM = 64
TEXT_LAYERS = 3
HEAD_DIM = 32  # every head's width (text encoder and UNet): wider layers get more heads, not wider heads
UNET_CHANNELS = (32, 64, 64)  # the UNet's channels at 16×16, 8×8 and 4×4 (v1–v3)
# transformer blocks in each cross-attention layer at 16×16, 8×8 and the 4×4 mid block (diffusers'
# transformer_layers_per_block; SDXL has 2 and 10): one each in v1–v3
TRANSFORMER_LAYERS = (1, 1, 1)
KEY_NORM_EPS = 1e-6
# SD's noise schedule, so the scheduler chapter and the guidance maths carry over unchanged
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_vae() -> AutoencoderKL:
    """64×64 RGB ↔ 16×16×4 latents (two downsamplings, as SD's ×8 is three)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=64,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        norm_num_groups=8,
    )


def build_unet(
    text_width: int = TEXT_DIM,
    transformer_layers: tuple[int, int, int] = TRANSFORMER_LAYERS,
    channels: tuple[int, int, int] = UNET_CHANNELS,
) -> UNet2DConditionModel:
    """Cross-attention at 16×16 and 8×8 (down and up) and in the 4×4 mid block, ``transformer_layers``
    blocks deep at each, ``channels`` wide; keys and values read ``text_width``-wide token states.

    Heads are 32 channels wide (diffusers' ``attention_head_dim`` here means the number of
    heads): with SD's default of 8 heads, a 32-channel layer gets 4-dim heads whose attention
    stays nearly uniform and never localises a word.
    """
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=tuple(channels),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        # the third entry reaches only the mid block: the 4×4 down block has no attention
        transformer_layers_per_block=list(transformer_layers),
        attention_head_dim=tuple(c // HEAD_DIM for c in channels),
        norm_num_groups=16,
    )


def normalise_keys(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Give every cross-attention layer's keys one length per head (a parameter-free RMS norm in diffusers'
    ``norm_k`` seam, which its processors and reprolib's apply), in place.

    A word's key then says where it wants to be drawn by its direction alone: a token made longer by an
    attribute delta cannot outbid the other words for their pixels (issue #13); its value keeps its length.
    A model folder declares it in ``reprolib.json`` (``"key_norm": true``) and ``load_pipeline`` installs it.
    """
    for m in unet.modules():
        if getattr(m, "is_cross_attention", False):
            m.norm_k = RMSNorm(m.to_k.out_features // m.heads, eps=KEY_NORM_EPS, elementwise_affine=False)
    return unet


def _key_rms(attn, states: torch.Tensor) -> torch.Tensor:
    """(captions, tokens, heads): each head's key RMS of each token state, in cross-attention layer ``attn``."""
    k = attn.to_k(states)
    return k.view(*k.shape[:2], attn.heads, -1).pow(2).mean(-1).sqrt()


@torch.no_grad()
def match_key_lengths(unet: UNet2DConditionModel, states: torch.Tensor, read: torch.Tensor | None = None) -> dict:
    """Before :func:`normalise_keys` on a UNet trained without it: scale each cross-attention layer's queries by
    its keys' mean RMS over ``states`` (the slots ``read`` marks, 1 = read), so its attention logits start
    where they were on average. Returns layer → the factor."""
    factors = {}
    for name, m in unet.named_modules():
        if getattr(m, "is_cross_attention", False):
            rms = _key_rms(m, states)
            w = torch.ones(rms.shape[:2]) if read is None else read.to(rms.dtype)
            factors[name] = float((rms * w[..., None]).sum() / (w.sum() * m.heads))
            m.to_q.weight.mul_(factors[name])
            if m.to_q.bias is not None:
                m.to_q.bias.mul_(factors[name])
    return factors


class KeyCap(nn.Module):
    """Shortens each head's keys that are longer (RMS) than its cap to the cap; shorter keys pass unchanged.

    Sits in diffusers' ``norm_k`` seam, which sees keys as (batch, heads, tokens, d) or, in the grounding hook,
    (batch·heads, tokens, d).
    """

    def __init__(self, caps: list[float]):
        super().__init__()
        # not saved with the UNet's weights: reprolib.json holds the caps (a plain UNet loads without them)
        self.register_buffer("caps", torch.tensor(caps, dtype=torch.float32), persistent=False)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        heads = len(self.caps)
        caps = self.caps.to(k.dtype).view(-1, 1, 1)
        caps = caps if k.ndim == 4 else caps.repeat(k.shape[0] // heads, 1, 1)
        rms = k.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(KEY_NORM_EPS)
        return k * (caps / rms).clamp(max=1.0)


@torch.no_grad()
def key_caps(unet: UNet2DConditionModel, states: torch.Tensor, read: torch.Tensor | None = None) -> dict:
    """Each cross-attention layer's longest key per head (RMS) over ``states``' read slots (``read``: 1 =
    read): layer name → one cap per head, for :func:`cap_keys`."""
    caps = {}
    for name, m in unet.named_modules():
        if getattr(m, "is_cross_attention", False):
            rms = _key_rms(m, states)
            if read is not None:
                rms = rms[read.bool()]
            caps[name] = [float(f"{v:.5g}") for v in rms.reshape(-1, m.heads).max(0).values]
    return caps


def cap_keys(unet: UNet2DConditionModel, caps: dict) -> UNet2DConditionModel:
    """No key longer than the longest a caption makes (:func:`key_caps`), in place: a token an attribute
    delta made longer than any word cannot outbid the other words for their pixels by its length (issue
    #13), while every caption's keys stay as they were. ``reprolib.json`` declares it (``"key_caps"``)."""
    layers = {n: m for n, m in unet.named_modules() if getattr(m, "is_cross_attention", False)}
    if set(caps) != set(layers):
        raise ValueError(f"key caps name layers {sorted(set(caps) ^ set(layers))} this UNet does not have or lacks")
    for name, m in layers.items():
        if m.norm_k is not None:
            raise ValueError(f"{name} already has a key norm ({type(m.norm_k).__name__}): cap or normalise, not both")
        if len(caps[name]) != m.heads:
            raise ValueError(f"{name}: {len(caps[name])} key caps for {m.heads} heads")
        m.norm_k = KeyCap(caps[name])
    return unet


def build_text_encoder(tokenizer, width: int = TEXT_DIM, layers: int = TEXT_LAYERS) -> CLIPTextModel:
    """A CLIP text encoder ``width`` wide (heads of ``HEAD_DIM``) with ``layers`` layers; v1–v3: 64, 3."""
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // HEAD_DIM,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )


def assemble(vae, unet, text_encoder, tokenizer) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
