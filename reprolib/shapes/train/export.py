"""A run folder written out: as a standard diffusers pipeline folder (export), or kept as a small
starting point that --init-from takes (keep)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ... import checks
from ...conditioning import with_summary
from .. import world
from ..grounding import READS, SUMMARIES
from ..model import assemble, build_text_encoder, build_unet, build_vae, key_caps
from ..tokenizer import load_tokenizer
from .record import text_size_of, unet_shape_of
from .unet import reading_mask, summary_ids, token_ids
from .vae import load_decoder

# what an export writes: an existing one is replaced only when asked (--overwrite)
PIPELINE_FILES = ("model_index.json", "unet", "text_encoder", "vae", "tokenizer", "scheduler", "training.json")
# what keep writes: the EMA weights alone (no optimiser state, no raw weights), the frozen VAE, its decoder
KEEP_FILES = ("unet.pt", "vae.pt", "decoder.pt", "tokenizer", "run.json")
DEFAULT_GUIDANCE = 5.0  # v1's sampling guidance; a model's export can name its own (--guidance-scale)
KEY_CAP_CAPTIONS, KEY_CAP_SEED = 1024, 7  # the captions --key-caps measures the longest keys on


def recorded_scaling_factor(out: Path, meta: dict) -> float | None:
    """The latent scaling factor the run's UNet was trained on: its latents', or, in a kept folder, its record's
    (``meta``, its run.json); None where it has neither."""
    if (out / "latents.pt").exists():
        return torch.load(out / "latents.pt")["scaling_factor"]
    return meta.get("scaling_factor")


def scaling_factor(out: Path, meta: dict) -> float:
    """:func:`recorded_scaling_factor`, refused by name where there is none."""
    sf = recorded_scaling_factor(out, meta)
    if sf is None:
        raise checks.InputError(f"{out} has neither latents.pt nor a scaling_factor in run.json: give its run folder")
    return sf


def export(out: Path, dest: Path, key_caps: bool = False, guidance_scale: float | None = None) -> Path:
    """Write the EMA weights as a standard diffusers pipeline folder (safetensors); ``key_caps``: with the
    caps of :func:`caption_key_caps` in its ``reprolib.json``; ``guidance_scale``: the CFG scale written there
    (None: ``DEFAULT_GUIDANCE``)."""
    tokenizer = load_tokenizer(out / "tokenizer")
    vae = build_vae()
    vae.load_state_dict(torch.load(out / "vae.pt")["model"])
    meta = json.loads((out / "run.json").read_text())
    vae.register_to_config(scaling_factor=scaling_factor(out, meta))
    if (out / "decoder.pt").exists():  # a fine-tuned decoder (finetune_decoder)
        load_decoder(vae, torch.load(out / "decoder.pt")["model"])
    c = torch.load(out / "unet.pt")
    width, layers = text_size_of(meta)
    unet, text = build_unet(width, **unet_shape_of(meta)), build_text_encoder(tokenizer, width, layers)
    unet.load_state_dict(c["ema"]["unet"]), text.load_state_dict(c["ema"]["text"])
    pipe = assemble(vae, unet, text, tokenizer)
    pipe.save_pretrained(dest, safe_serialization=True)
    # steps in total, the starting point's included (a fine-tune's own are unet_steps_this_run)
    done = c["step"] + meta.get("init_step", 0)
    final = c["history"][-1]["loss"] if c["history"] else None
    meta.update(unet_steps_done=done, unet_steps_this_run=c["step"], final_loss=final, exported_from=str(out))
    (Path(dest) / "training.json").write_text(json.dumps(meta, indent=1))
    # how the library samples this pipeline: with mask_padding it builds the same mask (padding_mask), with
    # cross_attention_reads the one of --reads (reads_mask)
    cfg = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
    sampling = {"steps": 25, "guidance_scale": cfg, "mask_padding": bool(meta.get("mask_padding", False))}
    reads = READS[meta.get("reads", "all")]
    if reads:
        sampling["cross_attention_reads"] = list(reads)
    summary = SUMMARIES[meta.get("summary", "full")]
    if summary:  # TextConditioning makes the end-of-text state without these words (with_summary)
        sampling["summary_without"] = list(summary)
    if meta.get("key_norm"):  # load_pipeline installs the same key norm (model.normalise_keys)
        sampling["key_norm"] = True
    if key_caps:  # load_pipeline installs them (model.cap_keys)
        sampling["key_caps"] = caption_key_caps(unet, text, tokenizer, meta)
    (Path(dest) / "reprolib.json").write_text(json.dumps(sampling, indent=1))
    return Path(dest)


@torch.no_grad()
def caption_key_caps(unet, text, tokenizer, meta: dict) -> dict:
    """The longest key per layer and head (``model.key_caps``) over world captions, read as the model reads them
    (its end-of-text summary, its reading mask; as ``TextConditioning.encode``)."""
    captions = [s.caption for s in world.scenes(KEY_CAP_CAPTIONS, seed=KEY_CAP_SEED)]
    ids = token_ids(captions, tokenizer)
    states = text(ids)[0]
    short = summary_ids(captions, tokenizer, meta.get("summary", "full"))
    if short is not None:
        states = with_summary(states, ids, text(short)[0], short, tokenizer.eos_token_id)
    read = reading_mask(ids, tokenizer, bool(meta.get("mask_padding", False)), meta.get("reads", "all"))
    return key_caps(unet, states, read)


def keep(out: Path, dest: Path) -> Path:
    """Copy what another run needs to start from this one (``--init-from dest``) into ``dest``.

    The EMA weights with their step and loss history (a fifth of a resumable checkpoint: no raw weights, no
    AdamW moments), the frozen VAE and fine-tuned decoder, the tokenizer and the run's record with the latent
    scaling factor its UNet was trained on. Small enough to commit, so a candidate outlives the machine that
    trained it; the rendered data and latents are not kept (the seed rebuilds them).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    c = torch.load(out / "unet.pt")
    torch.save({"ema": c["ema"], "step": c["step"], "history": c["history"]}, dest / "unet.pt")
    for part in ("vae.pt", "decoder.pt"):
        if (out / part).exists():
            shutil.copyfile(out / part, dest / part)
    shutil.copytree(out / "tokenizer", dest / "tokenizer", dirs_exist_ok=True)
    meta = json.loads((out / "run.json").read_text())
    meta["scaling_factor"] = scaling_factor(out, meta)  # --init-from and --export need it without latents.pt
    meta.update(kept_from=str(out), unet_steps_done=c["step"] + meta.get("init_step", 0))
    (dest / "run.json").write_text(json.dumps(meta, indent=1))
    return dest
