"""The true SD 1.5, SD 2.1 and SDXL architectures, built offline with random weights in seconds.

No weights reach a machine without internet access, but much of what decides whether a real run works
does not depend on their values: which blocks hold the guided maps and at which resolution, SDXL's two
encoders and time ids, dtypes, memory and time at native size. These builders give exactly the published
models' modules (every number below is from the model repositories' ``unet/``, ``vae/``,
``text_encoder*/`` and ``scheduler/`` configs: ``stable-diffusion-v1-5/stable-diffusion-v1-5``,
``stabilityai/stable-diffusion-2-1``, ``stabilityai/stable-diffusion-xl-base-1.0``) with random values:

    pipe = random_pipeline("sdxl")                     # 3.5 B parameters, ~14 GB in fp32
    pipe = random_pipeline("sdxl", on_meta=["unet"])   # the encoders only; the UNet has shapes, no memory
    parameter_counts("sd15")                           # free: counted on the meta device

Modules are built on the meta device (no memory, no init) and then filled with a fixed random tile
scaled per tensor (``1/√fan_in`` for weights, 1 for norm scales, 0 for biases): a strided copy, not billions
of random draws. What is left is the OS handing out the memory (on the 2-core CI machine about 1 GB/s: the
fp32 SDXL UNet in ~30 s against 52 s with the default init, OpenCLIP-G in 3.4 s against 15 s). The values are
finite and of sane scale, so forward passes give finite numbers; the pictures are noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import diffusers
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .tiny import clip_bpe_tokenizer

FAMILIES = ("sd15", "sd21", "sdxl")
NATIVE_SIZE = {"sd15": 512, "sd21": 768, "sdxl": 1024}  # pixels: the resolution each was trained at

_SD_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
UNET = {
    "sd15": _SD_UNET,
    # OpenCLIP-H context, per-block head widths, linear projections, attention computed in fp32
    "sd21": {
        **_SD_UNET,
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    # three levels, no cross-attention at the top one, 1/2/10 transformer layers; pooled text + 6 time ids
    # (6·256 + 1280 = 2816) added to the timestep embedding
    "sdxl": {
        **_SD_UNET,
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 2048,
        "attention_head_dim": (5, 10, 20),
        "transformer_layers_per_block": (1, 2, 10),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}
_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
VAE = {
    "sd15": _VAE,
    "sd21": {**_VAE, "sample_size": 768},
    "sdxl": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},  # overflows in fp16
}
_CLIP = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0)
CLIP_L = {
    **_CLIP,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}  # OpenAI CLIP ViT-L/14's text tower
OPENCLIP_H = {
    **_CLIP,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,  # of 24: SD 2
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
}  # drops the last
OPENCLIP_G = {
    **_CLIP,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}  # ViT-bigG/14, with projection
# (component, model class, config, tokenizer pad token) per text encoder
TEXT_ENCODERS = {
    "sd15": [("text_encoder", CLIPTextModel, CLIP_L, "<|endoftext|>")],
    "sd21": [("text_encoder", CLIPTextModel, OPENCLIP_H, "!")],
    "sdxl": [
        ("text_encoder", CLIPTextModel, CLIP_L, "<|endoftext|>"),
        ("text_encoder_2", CLIPTextModelWithProjection, OPENCLIP_G, "!"),
    ],
}
_BETAS = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    clip_sample=False,
)
SCHEDULERS = {
    "sd15": ("PNDMScheduler", {**_BETAS, "prediction_type": "epsilon"}),
    "sd21": ("DDIMScheduler", {**_BETAS, "prediction_type": "v_prediction"}),
    "sdxl": (
        "EulerDiscreteScheduler",
        {
            **_BETAS,
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
            "sample_max_value": 1.0,
        },
    ),
}
TILE = 1_048_573  # a prime: the repeating random tile never lines up with the rows of a weight matrix


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; the true-size architectures are {FAMILIES}")
    return family


def empty_components(family: str) -> dict[str, torch.nn.Module]:
    """The family's UNet, VAE and text encoder(s) on the meta device: shapes and configs, no memory."""
    check_family(family)
    with init_empty_weights(include_buffers=False):  # buffers (CLIP's position ids) stay real and small
        parts = {"unet": UNet2DConditionModel(**UNET[family]), "vae": AutoencoderKL(**VAE[family])}
        for name, cls, cfg, _ in TEXT_ENCODERS[family]:
            parts[name] = cls(CLIPTextConfig(**cfg))
    return {k: m.eval() for k, m in parts.items()}


def parameter_counts(family: str) -> dict[str, int]:
    """Parameters per component, counted on the meta device (instant, no memory)."""
    return {k: sum(p.numel() for p in m.parameters()) for k, m in empty_components(family).items()}


def _bound(module: torch.nn.Module, p: torch.Tensor) -> float:
    """How wide a matrix's or kernel's random values are: ±1/√fan_in (PyTorch's default bound), or std 0.02
    for embedding tables (CLIP's)."""
    return 0.02 * math.sqrt(3) if isinstance(module, torch.nn.Embedding) else 1 / math.sqrt(p[0].numel())


def _fill(flat: torch.Tensor, tile: torch.Tensor, offset: int, scale: float) -> None:
    """``flat`` ← ``scale`` × the tile repeated from ``offset``, in one pass (a strided copy, no random draws)."""
    src = tile[offset : offset + TILE]
    full, rest = divmod(flat.numel(), TILE)
    if full:
        torch.mul(src.expand(full, TILE), scale, out=flat[: full * TILE].view(full, TILE))
    if rest:
        torch.mul(src[:rest], scale, out=flat[full * TILE :])


@torch.no_grad()
def materialise(
    module: torch.nn.Module, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Every parameter and buffer of ``module`` in ``dtype`` on ``device``; meta-device parameters get memory,
    filled as the module doc says. ``device="meta"`` keeps shapes only (a forward pass computes no numbers)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    tile = (torch.rand(2 * TILE, generator=g) * 2 - 1).to(device, dtype)  # U(-1, 1), twice: any window fits
    for i, (_, mod) in enumerate(module.named_modules()):
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.device.type != "meta" or device.type == "meta":
                new = p.to(device, dtype)
            elif p.dim() < 2:  # norm scales 1, biases 0
                new = torch.full(p.shape, 1.0 if name == "weight" else 0.0, dtype=dtype, device=device)
            else:
                new = torch.empty(p.shape, dtype=dtype, device=device)
                _fill(new.view(-1), tile, (i * 7919 + len(name)) % TILE, _bound(mod, p))
            setattr(mod, name, torch.nn.Parameter(new, requires_grad=p.requires_grad))
        for name, b in list(mod.named_buffers(recurse=False)):  # (diffusers' .to(dtype) would warn here)
            setattr(mod, name, b.to(device, dtype) if b.is_floating_point() else b.to(device))
    return module


def random_pipeline(
    family: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    on_meta: Iterable[str] = (),
):
    """A diffusers pipeline of the true ``family`` architecture ("sd15", "sd21", "sdxl") with random weights.

    Tokenizers are OpenAI CLIP's real BPE (:func:`reprolib.tiny.clip_bpe_tokenizer`; SD 2.x's OpenCLIP pads
    with "!"); schedulers are the published ones (PNDM, DDIM with v-prediction, Euler). ``on_meta``: components
    ("unet", "vae", "text_encoder", "text_encoder_2") left on the meta device, e.g. to use the encoders at
    true size without the UNet's memory, or to run the UNet on meta tensors (shapes only, no compute).
    """
    parts = empty_components(family)
    on_meta = set(on_meta)
    unknown = on_meta - set(parts)
    if unknown:
        raise ValueError(f"on_meta names {sorted(unknown)}; the components are {sorted(parts)}")
    for k, (name, m) in enumerate(parts.items()):
        parts[name] = materialise(m, seed=seed + k, dtype=dtype, device="meta" if name in on_meta else device)
    toks = {
        name.replace("text_encoder", "tokenizer"): clip_bpe_tokenizer(pad) for name, _, _, pad in TEXT_ENCODERS[family]
    }
    cls_name, sched_cfg = SCHEDULERS[family]
    scheduler = getattr(diffusers, cls_name).from_config(sched_cfg)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(scheduler=scheduler, force_zeros_for_empty_prompt=True, **parts, **toks)
    else:
        pipe = StableDiffusionPipeline(
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **parts,
            **toks,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
