"""Train the shapes-world model on CPU: VAE first, then UNet + text encoder; export the pipeline.

    python -m reprolib.shapes.train --out runs/shapes                 # the shipped recipe (resumes if interrupted)
    python -m reprolib.shapes.train --out runs/shapes --unet-steps 16000 --decay-from 12000  # train on further
    python -m reprolib.shapes.train --out runs/shapes --export reprolib/shapes/weights
    # v2: fine-tune v1's EMA weights on the v2 scene mix with the padding slots masked in cross-attention
    python -m reprolib.shapes.train --out runs/shapes_v2 --init-from checkpoints/shapes \
        --scaling-factor 0.9965722560882568 --mix v2 --mask-padding --lr 3e-4 --warmup 100 --decay-from 100 \
        --unet-steps 4000

Every batch is drawn from a generator seeded by (seed, stage, step), so a resumed run sees the
same batches and noise as one that never stopped. Checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import checks
from ..conditioning import padding_mask
from ..files import atomic_write
from . import grounding, grow, world
from .model import (
    HEAD_DIM,
    SCHEDULE,
    TEXT_DIM,
    TEXT_LAYERS,
    TRANSFORMER_LAYERS,
    UNET_CHANNELS,
    assemble,
    build_text_encoder,
    build_unet,
    build_vae,
    training_scheduler,
)
from .tokenizer import load_tokenizer, save_tokenizer


def _save_atomic(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # never leave a half-written checkpoint behind


def _images(scenes) -> torch.Tensor:
    a = np.stack([world.render(s) for s in scenes]).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def _foreground(x: torch.Tensor) -> torch.Tensor:
    bg = torch.tensor(world.BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1) / 127.5 - 1
    return ((x - bg).abs().sum(1, keepdim=True) > 0.05).to(x.dtype)


def _scenes(n: int, seed: int, mix: str) -> list[world.Scene]:
    return world.scenes(n, seed=seed, p_empty=0.1, **world.MIXES[mix])


def data(out: Path, n_scenes: int, seed: int, mix: str = "v1") -> tuple[torch.Tensor, list[str]]:
    """Rendered training images and captions (cached; rebuilt identically from the seed and mix)."""
    path = out / "data.pt"
    if path.exists():
        d = torch.load(path)
        if d["n"] == n_scenes and d["seed"] == seed and d.get("mix", "v1") == mix:
            return d["images"], d["captions"]
    scenes = _scenes(n_scenes, seed, mix)
    images = torch.cat([_images(scenes[i : i + 1000]) for i in tqdm(range(0, n_scenes, 1000), desc="render")])
    images = ((images + 1) * 127.5).round().to(torch.uint8)
    captions = [s.caption for s in scenes]
    _save_atomic({"n": n_scenes, "seed": seed, "mix": mix, "images": images, "captions": captions}, path)
    return images, captions


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # objects are a small part of each image: weight their pixels up so edges stay sharp
    w = 1 + 4 * _foreground(x)
    return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()


def _resume(ckpt: Path, load_model, opt) -> int:
    """The step a stage's checkpoint stopped at (0: none yet), with its weights and optimizer state restored."""
    if not ckpt.exists():
        return 0
    c = torch.load(ckpt)
    load_model(c["model"]), opt.load_state_dict(c["opt"])
    return c["step"]


def train_vae(out: Path, images: torch.Tensor, steps: int, seed: int, batch: int = 32, lr: float = 1e-3):
    ckpt = out / "vae.pt"
    torch.manual_seed(seed)  # initial weights
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = _resume(ckpt, vae.load_state_dict, opt)
    if start >= steps:
        return vae
    vae.train()
    bar = tqdm(range(start, steps), desc="vae", initial=start, total=steps)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = images[idx].float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = _reconstruction_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


DECODER = ("decoder.", "post_quant_conv.")


def _load_decoder(vae, decoder: dict) -> None:
    """Put a fine-tuned decoder's weights (``finetune_decoder``'s checkpoint) into ``vae``; the encoder stays."""
    vae.load_state_dict({**vae.state_dict(), **decoder})


def finetune_decoder(out: Path, vae, images: torch.Tensor, steps: int, seed: int, batch: int = 32, lr: float = 2e-4):
    """Train the VAE's decoder on, with the encoder frozen, as Stability did for SD's ft-MSE VAE.

    The encoder is untouched, so every latent (and the UNet that learned them, and any inversion) stays
    valid; only the pictures drawn from latents get sharper. Half the batches decode the posterior's
    mean (what inversion encodes), half a sample from it (what the UNet learned to generate).
    """
    ckpt = out / "decoder.pt"
    for name, param in vae.named_parameters():
        param.requires_grad_(name.startswith(DECODER))
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = _resume(ckpt, lambda decoder: _load_decoder(vae, decoder), opt)
    if start >= steps:
        return vae
    vae.train()
    bar = tqdm(range(start, steps), desc="decoder", initial=start, total=steps)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 900_000 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = images[idx].float() / 127.5 - 1
        with torch.no_grad():
            post = vae.encode(x).latent_dist
        z = post.mean if step % 2 else post.sample(generator=g)
        loss = _reconstruction_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            decoder = {k: v for k, v in vae.state_dict().items() if k.startswith(DECODER)}
            _save_atomic({"model": decoder, "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


@torch.no_grad()
def encode_all(out: Path, vae, images: torch.Tensor, scaling_factor: float | None = None) -> tuple[torch.Tensor, float]:
    """Latent means and std-devs of all images, and the scaling factor that gives latents unit variance
    (or the given ``scaling_factor``: a fine-tuned UNet keeps the one it was trained with)."""
    path = out / "latents.pt"
    if path.exists():
        d = torch.load(path)
        if len(d["mean"]) == len(images) and scaling_factor in (None, d["scaling_factor"]):
            return d, d["scaling_factor"]
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(images), 500), desc="encode"):
        dist = vae.encode(images[i : i + 500].float() / 127.5 - 1).latent_dist
        means.append(dist.mean.half()), stds.append(dist.std.half())
    d = {"mean": torch.cat(means), "std": torch.cat(stds)}
    d["scaling_factor"] = float(1 / d["mean"].float().std()) if scaling_factor is None else float(scaling_factor)
    _save_atomic(d, path)
    return d, d["scaling_factor"]


def learning_rate(step: int, steps: int, lr: float, decay_from: int | None, lr_final: float, warmup: int = 0) -> float:
    """Constant ``lr``, then (from step ``decay_from``) a cosine down to ``lr_final`` at the last step.

    ``warmup`` > 0 ramps the LR linearly up over the first ``warmup`` steps (a fine-tune's fresh
    optimizer has no moment estimates yet). A function of the step alone, so a resumed run follows
    the same schedule as one that never stopped.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if decay_from is None or step < decay_from or steps <= decay_from:
        return lr
    progress = (step - decay_from) / (steps - decay_from)
    return lr_final + (lr - lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _ema_update(ema: dict, models: dict, decay: float) -> None:
    """EMA weights are what ships: they sample far cleaner than the last step's."""
    for name, model in models.items():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[name][k].mul_(decay).add_(v, alpha=1 - decay)


def _sampled(mean: torch.Tensor, std: torch.Tensor, sf: float, g: torch.Generator) -> torch.Tensor:
    """A latent drawn from each VAE posterior (mean, std), scaled as the UNet sees it."""
    return (mean.float() + std.float() * torch.randn(mean.shape, generator=g)) * sf


def _noised(mean: torch.Tensor, std: torch.Tensor, sf: float, sched, g: torch.Generator):
    """A latent sampled from each posterior (mean, std), scaled, and noised at a random timestep: (x_t, noise, t)."""
    x0 = _sampled(mean, std, sf, g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=g)
    return sched.add_noise(x0, noise, t), noise, t


def _state(unet, text, opt) -> dict:
    """The weights and optimizer state a checkpoint holds (beside the EMA copy, step and history)."""
    return {"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict()}


def _swap(scenes, ids, positions, batch, t, g, *, p, reach, late, name_size, tokenizer, text, vae, sched, sf):
    """The batch (noisy latents, noise targets, text states, object masks) with ``grounding.swap_tokens``
    applied: each swapped token taken a uniform 1 to ``reach`` of the way from the old to the new (1: the new);
    a share ``late`` of the swapped rows at t ≥ LATE_FROM keep the old picture's latent (``late_target``).
    Also each swap's ``change_ratio`` (empty when nothing was swapped)."""
    xt, noise, cond, object_masks = batch
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
    swapped = grounding.swap_tokens(scenes, ids, positions, tokenizer, p, rng, name_size)
    if swapped is None:
        return batch, cond.new_zeros(0)
    with torch.no_grad():
        z = vae.encode(swapped.images).latent_dist
    x0, rows = _sampled(z.mean, z.std, sf, g), swapped.rows
    fresh = sched.add_noise(x0, noise[rows], t[rows])
    if late:  # drawn only when asked, so earlier recipes keep their random stream
        old = (torch.rand(len(rows), generator=g) < late) & (t[rows] >= grounding.LATE_FROM)
        target = grounding.late_target(xt[rows], x0, t[rows], sched.alphas_cumprod)
        noise = noise.index_put((rows,), torch.where(old[:, None, None, None], target, noise[rows]))
        fresh = torch.where(old[:, None, None, None], xt[rows], fresh)
    xt = xt.index_put((rows,), fresh)
    beta = 1 + (reach - 1) * torch.rand(len(rows), generator=g) if reach > 1 else None
    states = text(swapped.ids)[0]
    ratio = grounding.change_ratio(*grounding.swapped_nouns(cond, states, swapped))
    cond = grounding.swap_states(cond, states, swapped, beta)
    if object_masks is not None:
        object_masks = object_masks.index_put((rows,), swapped.masks)
    return (xt, noise, cond, object_masks), ratio


def _text_size(run: dict) -> tuple[int, int]:
    """(width, layers) of the text encoder a run.json describes (v1–v3 runs record neither)."""
    return run.get("text_width", TEXT_DIM), run.get("text_layers", TEXT_LAYERS)


def _unet_shape(run: dict) -> dict:
    """``build_unet``'s shape options for the UNet a run.json describes (v1–v3 runs record neither)."""
    return {
        "transformer_layers": tuple(run.get("transformer_layers", TRANSFORMER_LAYERS)),
        "channels": tuple(run.get("unet_channels", UNET_CHANNELS)),
    }


def _models(tokenizer, init: Path | None, seed: int, width: int, layers: int, unet_shape: dict):
    """The UNet and text encoder: fresh (seeded), or ``init``'s EMA weights, grown where this run's encoder or
    UNet attention is bigger (``grow``; copied as they are otherwise)."""
    torch.manual_seed(seed)
    unet, text = build_unet(width, **unet_shape), build_text_encoder(tokenizer, width, layers)
    if init is not None:
        c0 = torch.load(init)
        text.load_state_dict(grow.grow_text_encoder(c0["ema"]["text"], text, seed))
        unet.load_state_dict(grow.grow_unet(c0["ema"]["unet"], unet, seed))
    return unet, text


def train_unet(
    out: Path,
    latents: dict,
    captions: list[str],
    tokenizer,
    steps: int,
    seed: int,
    batch: int = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    decay_from: int | None = None,
    lr_final: float = 5e-5,
    init: Path | None = None,
    mask_padding: bool = False,
    warmup: int = 0,
    scenes: list | None = None,
    grounding_weight: float = 0.0,
    grounding_layers: str = "all",
    grounding_max_t: int | None = None,
    grounding_through: str = "both",
    attribute_dropout: float = 0.0,
    token_swap: float = 0.0,
    swap_reach: float = 1.0,
    swap_late: float = 0.0,
    swap_name_size: float = 0.0,
    ground_adjectives: bool = False,
    short_deltas: float | None = None,
    vae=None,
    text_width: int = TEXT_DIM,
    text_layers: int = TEXT_LAYERS,
    unet_shape: dict | None = None,
):
    """``init``: a UNet checkpoint to start from (its EMA weights, as both the weights and the EMA copy;
    a fresh optimizer); only used until this run has written its own checkpoint.
    ``mask_padding``: cross-attention ignores the slots after the first end-of-text (``padding_mask``).
    ``grounding_weight`` / ``grounding_layers`` (``grounding.GROUNDED_LAYERS``) / ``grounding_max_t`` (held
    only at timesteps below it) / ``grounding_through`` (``grounding.GROUNDING_THROUGH``) / ``attribute_dropout`` /
    ``token_swap`` / ``swap_reach`` / ``swap_late`` /
    ``swap_name_size`` / ``ground_adjectives`` / ``short_deltas`` (the limit of ``change_penalty``)
    (need ``scenes``, the captions' scenes; ``token_swap`` also the ``vae`` to encode its changed pictures):
    see ``grounding``. ``text_width`` / ``text_layers``: the text encoder's size, ``unet_shape`` the
    UNet's (``build_unet``'s options); a smaller ``init`` is grown to them with its function kept (``grow``)."""
    ckpt = out / "unet.pt"
    init = init if not ckpt.exists() else None
    unet, text = _models(tokenizer, init, seed, text_width, text_layers, unet_shape or {})
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = {"unet": copy.deepcopy(unet.state_dict()), "text": copy.deepcopy(text.state_dict())}
    start, history = 0, []
    if ckpt.exists():
        c = torch.load(ckpt)
        unet.load_state_dict(c["unet"]), text.load_state_dict(c["text"]), opt.load_state_dict(c["opt"])
        ema, start, history = c["ema"], c["step"], c["history"]
    elif steps == 0:  # nothing to train (e.g. a decoder-only fine-tune): keep the starting weights as they are
        _save_atomic(_state(unet, text, opt) | {"ema": ema, "step": 0, "history": []}, ckpt)
    if start >= steps:
        return unet, text, ema, history
    sched, skip = training_scheduler(), grounding.GROUNDED_LAYERS[grounding_layers]
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    if grounding_weight or token_swap:
        positions, masks = grounding.noun_targets(scenes, ids, tokenizer)
        grounded = grounding.phrase_targets(positions, ids, tokenizer) if ground_adjectives else positions
        swap = functools.partial(
            _swap,
            p=token_swap,
            reach=swap_reach,
            late=swap_late,
            name_size=swap_name_size,
            tokenizer=tokenizer,
            text=text,
            vae=vae,
            sched=sched,
            sf=latents["scaling_factor"],
        )
    if attribute_dropout:
        attributes = grounding.attribute_positions(ids, tokenizer)
    unet.train(), text.train()
    bar = tqdm(range(start, steps), desc="unet+text", initial=start, total=steps)
    t0, running = time.time(), None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, decay_from, lr_final, warmup)
        g = torch.Generator().manual_seed(seed * 1_000_003 + 500_000 + step)
        idx = torch.randint(0, len(ids), (batch,), generator=g)
        xt, noise, t = _noised(latents["mean"][idx], latents["std"][idx], latents["scaling_factor"], sched, g)
        cond, object_masks = text(ids[idx])[0], masks[idx] if grounding_weight else None
        if token_swap:
            (xt, noise, cond, object_masks), ratio = swap(
                [scenes[i] for i in idx], ids[idx], positions[idx], (xt, noise, cond, object_masks), t, g
            )
        mask = padding_mask(ids[idx], tokenizer.eos_token_id) if mask_padding else None
        if attribute_dropout:
            mask = torch.ones_like(ids[idx]) if mask is None else mask
            mask = grounding.drop_attributes(mask, attributes[idx], attribute_dropout, g)
        with (
            grounding.cross_attention_probs(unet, skip, grounding_through)
            if grounding_weight
            else contextlib.nullcontext({}) as maps
        ):
            pred = unet(xt, t, encoder_hidden_states=cond, encoder_attention_mask=mask).sample
        loss = diffusion = F.mse_loss(pred, noise)
        if grounding_weight:
            held = None if grounding_max_t is None else t < grounding_max_t
            loss = loss + grounding_weight * grounding.grounding_loss(maps, grounded[idx], object_masks, held)
        if short_deltas is not None and token_swap and len(ratio):  # ratio exists only with swaps
            loss = loss + grounding.SHORT_WEIGHT * grounding.change_penalty(ratio, short_deltas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _ema_update(ema, {"unet": unet, "text": text}, ema_decay)
        # the smoothed diffusion loss alone, comparable across runs with and without the grounding term
        running = diffusion.item() if running is None else 0.98 * running + 0.02 * diffusion.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, "loss": running, "seconds": time.time() - t0, "lr": opt.param_groups[0]["lr"]}
                # the last batch's mean change_ratio: how far its swaps moved their noun tokens
                | ({"noun_change": ratio.mean().item()} if token_swap and len(ratio) else {})
            )
            _save_atomic(_state(unet, text, opt) | {"ema": ema, "step": step + 1, "history": history}, ckpt)
    return unet, text, ema, history


def export(out: Path, dest: Path) -> Path:
    """Write the EMA weights as a standard diffusers pipeline folder (safetensors)."""
    tokenizer = load_tokenizer(out / "tokenizer")
    vae = build_vae()
    vae.load_state_dict(torch.load(out / "vae.pt")["model"])
    vae.register_to_config(scaling_factor=torch.load(out / "latents.pt")["scaling_factor"])
    if (out / "decoder.pt").exists():  # a fine-tuned decoder (finetune_decoder)
        _load_decoder(vae, torch.load(out / "decoder.pt")["model"])
    c = torch.load(out / "unet.pt")
    meta = json.loads((out / "run.json").read_text())
    width, layers = _text_size(meta)
    unet, text = build_unet(width, **_unet_shape(meta)), build_text_encoder(tokenizer, width, layers)
    unet.load_state_dict(c["ema"]["unet"]), text.load_state_dict(c["ema"]["text"])
    pipe = assemble(vae, unet, text, tokenizer)
    pipe.save_pretrained(dest, safe_serialization=True)
    # steps in total, the starting point's included (a fine-tune's own are unet_steps_this_run)
    done = c["step"] + meta.get("init_step", 0)
    final = c["history"][-1]["loss"] if c["history"] else None
    meta.update(unet_steps_done=done, unet_steps_this_run=c["step"], final_loss=final)
    (Path(dest) / "training.json").write_text(json.dumps(meta, indent=1))
    # how the library samples this pipeline: with mask_padding it builds the same mask (padding_mask)
    sampling = {"steps": 25, "guidance_scale": 5.0, "mask_padding": bool(meta.get("mask_padding", False))}
    (Path(dest) / "reprolib.json").write_text(json.dumps(sampling, indent=1))
    return Path(dest)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/shapes"), help="run folder (checkpoints, caches)")
    # the defaults are the recipe of the shipped weights
    p.add_argument("--scenes", type=int, default=40_000)
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--unet-steps", type=int, default=12_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--decay-from",
        type=int,
        default=5000,
        help="constant LR until this UNet step, then a cosine down to --lr-final at --unet-steps",
    )
    p.add_argument("--lr-final", type=float, default=5e-5)
    p.add_argument("--lr", type=float, default=1e-3, help="UNet + text encoder peak learning rate")
    p.add_argument("--warmup", type=int, default=0, help="linear LR warm-up over this many UNet steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mix",
        choices=sorted(world.MIXES),
        default="v1",
        help="scene distribution (world.MIXES): v1 = the shipped one; v2 = more multi-object "
        "scenes, a third of them repeating a shape in different colours; v3 = v2 with half the scenes three-object",
    )
    p.add_argument(
        "--mask-padding",
        action="store_true",
        help="mask the slots after the first end-of-text token in cross-attention (padding_mask)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune: start UNet + text encoder from this run folder's EMA weights, with its "
        "tokenizer and frozen VAE (vae.pt copied; --vae-steps ignored) and a fresh optimizer",
    )
    p.add_argument(
        "--scaling-factor",
        type=float,
        default=None,
        help="latent scaling factor to keep (with --init-from: default that folder's latents.pt; "
        "checkpoints/shapes has none: pass 0.9965722560882568, v1's)",
    )
    p.add_argument(
        "--grounding",
        type=float,
        default=0.0,
        help="weight of the grounding loss: each noun's cross-attention on its own object, every layer "
        "(reprolib.shapes.grounding; 0 = off, the v1/v2 recipe)",
    )
    p.add_argument(
        "--grounding-layers",
        choices=list(grounding.GROUNDED_LAYERS),
        default="all",
        help="with --grounding: the layers it holds: all, outer (16x16 and 8x8; the 4x4 mid block left free) or "
        "16x16 (those alone)",
    )
    p.add_argument(
        "--grounding-max-t",
        type=int,
        default=None,
        help="with --grounding: hold it only at timesteps below this (default: all); at the noisiest steps the "
        "picture does not yet say where an object will be",
    )
    p.add_argument(
        "--grounding-through",
        choices=grounding.GROUNDING_THROUGH,
        default="both",
        help="with --grounding: the side its gradient reaches in each layer: both, keys (to_k and the text "
        "states), queries (to_q and the UNet's features below it) or unet (all but the text states)",
    )
    p.add_argument(
        "--attribute-dropout",
        type=float,
        default=0.0,
        help="share of captions whose colour and size words are hidden from cross-attention (0 = off)",
    )
    p.add_argument(
        "--token-swap",
        type=float,
        default=0.0,
        help="share of captions with one object recoloured (and resized) in the picture and only its noun "
        "token taken from the changed caption (reprolib.shapes.grounding; 0 = off)",
    )
    p.add_argument(
        "--swap-reach",
        type=float,
        default=1.0,
        help="with --token-swap: each swapped noun token goes a uniform 1 to this many times the way from the "
        "old token to the new one, the picture still the changed one (1 = the new token, the v4 recipe)",
    )
    p.add_argument(
        "--swap-late",
        type=float,
        default=0.0,
        help=f"with --token-swap: share of the swapped captions whose noisy latent (at t >= {grounding.LATE_FROM}) "
        "still shows the old picture while the target is the changed one, as a delayed edit meets it (0 = off)",
    )
    p.add_argument(
        "--swap-name-size",
        type=float,
        default=0.0,
        help="with --token-swap: share of the swapped objects whose caption names no size that get a size word "
        "and are drawn in that size bin (a size edit on an unsized noun, taught; 0 = off)",
    )
    p.add_argument(
        "--short-deltas",
        type=float,
        default=None,
        help="with --token-swap: hold each swap's change of its noun token under this share of the token's "
        f"length (a penalty of weight {grounding.SHORT_WEIGHT}; without it a colour delta is longer than the token)",
    )
    p.add_argument(
        "--ground-adjectives",
        action="store_true",
        help="with --grounding: hold each object's colour and size words to its mask too, not only its noun",
    )
    p.add_argument(
        "--text-width",
        type=int,
        default=TEXT_DIM,
        help="the text encoder's width (heads of 32); with --init-from a narrower encoder is grown to it, its "
        "function kept (reprolib.shapes.grow; 64 = v1-v3)",
    )
    p.add_argument(
        "--text-layers",
        type=int,
        default=TEXT_LAYERS,
        help="the text encoder's layers; with --init-from new layers start silent (3 = v1-v3)",
    )
    p.add_argument(
        "--transformer-layers",
        type=int,
        nargs=3,
        default=list(TRANSFORMER_LAYERS),
        metavar=("AT_16x16", "AT_8x8", "MID"),
        help="the UNet's transformer blocks per cross-attention layer at 16x16, 8x8 and in the 4x4 mid block "
        "(diffusers' transformer_layers_per_block); with --init-from new blocks start silent (1 1 1 = v1-v3)",
    )
    p.add_argument(
        "--unet-channels",
        type=int,
        nargs=3,
        default=list(UNET_CHANNELS),
        metavar=("AT_16x16", "AT_8x8", "AT_4x4"),
        help=f"the UNet's channels at 16x16, 8x8 and 4x4 (heads of {HEAD_DIM}); a run from scratch only "
        "(32 64 64 = v1-v3)",
    )
    p.add_argument(
        "--decoder-steps",
        type=int,
        default=0,
        help="then fine-tune the VAE's decoder alone this many steps, encoder frozen, so the latents and the "
        "UNet stay valid (finetune_decoder; 0 = off, the v1 recipe)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--export", type=Path, default=None, help="write the trained pipeline here and exit")
    return p


def _record(a, argv) -> dict:
    """run.json's content: every command that built the run (oldest first) and the recipe's settings."""
    args = sys.argv[1:] if argv is None else argv
    command = "python -m reprolib.shapes.train " + " ".join(args)
    past = json.loads((a.out / "run.json").read_text()) if (a.out / "run.json").exists() else {}
    commands = past.get("commands", [past["command"]] if "command" in past else [])
    run = {
        "command": command,
        "commands": commands + [command],
        "scenes": a.scenes,
        "vae_steps": a.vae_steps,
        "unet_steps": a.unet_steps,
        "batch": a.batch,
        "seed": a.seed,
        "decay_from": a.decay_from,
        "lr_final": a.lr_final,
    }
    # options beyond the v1 recipe are recorded only when used, so a v1 run's record is unchanged
    if a.lr != 1e-3 or a.warmup:
        run.update(lr=a.lr, warmup=a.warmup)
    if a.mix != "v1":
        run["mix"] = a.mix
    if a.mask_padding:
        run["mask_padding"] = True
    if a.grounding:
        run["grounding"] = a.grounding
    if a.grounding_layers != "all":
        run["grounding_layers"] = a.grounding_layers
    if a.grounding_max_t is not None:
        run["grounding_max_t"] = a.grounding_max_t
    if a.grounding_through != "both":
        run["grounding_through"] = a.grounding_through
    if a.attribute_dropout:
        run["attribute_dropout"] = a.attribute_dropout
    if a.token_swap:
        run["token_swap"] = a.token_swap
    if a.swap_reach != 1:
        run["swap_reach"] = a.swap_reach
    if a.swap_late:
        run["swap_late"] = a.swap_late
    if a.swap_name_size:
        run["swap_name_size"] = a.swap_name_size
    if a.ground_adjectives:
        run["ground_adjectives"] = True
    if a.short_deltas is not None:
        run["short_deltas"] = a.short_deltas
    if a.decoder_steps:
        run["decoder_steps"] = a.decoder_steps
    if a.text_width != TEXT_DIM or a.text_layers != TEXT_LAYERS:
        run.update(text_width=a.text_width, text_layers=a.text_layers)
    if tuple(a.transformer_layers) != TRANSFORMER_LAYERS:
        run["transformer_layers"] = list(a.transformer_layers)
    if tuple(a.unet_channels) != UNET_CHANNELS:
        run["unet_channels"] = list(a.unet_channels)
    return run


def _check(a) -> None:
    """Every flag's value, each refusal naming the flag and the fix."""
    for flag in ("scenes", "batch"):
        checks.integer(getattr(a, flag), f"--{flag}", minimum=1)
    for flag in ("vae_steps", "unet_steps", "warmup", "decoder_steps"):
        checks.integer(getattr(a, flag), "--" + flag.replace("_", "-"), minimum=0)
    for flag in ("lr", "lr_final", "grounding"):
        if checks.number(getattr(a, flag), "--" + flag.replace("_", "-"), optional=False) < 0:  # 0: frozen
            raise checks.InputError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(a, flag)}")
    for flag in ("attribute_dropout", "token_swap", "swap_late", "swap_name_size"):
        name = "--" + flag.replace("_", "-")
        if not 0 <= checks.number(getattr(a, flag), name, optional=False) <= 1:
            raise checks.InputError(f"{name} must be in [0, 1], got {getattr(a, flag)}")
    if checks.number(a.swap_reach, "--swap-reach", optional=False) < 1:
        raise checks.InputError(f"--swap-reach must be >= 1 (1 = the changed token itself), got {a.swap_reach}")
    if a.swap_reach != 1 and not a.token_swap:
        raise checks.InputError(f"--swap-reach {a.swap_reach} needs --token-swap > 0 (it stretches swapped tokens)")
    for flag in ("swap_late", "swap_name_size"):
        if getattr(a, flag) and not a.token_swap:
            name = "--" + flag.replace("_", "-")
            raise checks.InputError(f"{name} {getattr(a, flag)} needs --token-swap > 0 (it changes swapped captions)")
    if a.short_deltas is not None:
        if checks.number(a.short_deltas, "--short-deltas", optional=False) <= 0:
            raise checks.InputError(f"--short-deltas is a share of the token's length, > 0; got {a.short_deltas}")
        if not a.token_swap:
            raise checks.InputError(f"--short-deltas {a.short_deltas} needs --token-swap > 0 (it measures swaps)")
    last = SCHEDULE["num_train_timesteps"]
    if a.grounding_max_t is not None and checks.integer(a.grounding_max_t, "--grounding-max-t", minimum=1) > last:
        raise checks.InputError(f"--grounding-max-t is a training timestep, 1 to {last}; got {a.grounding_max_t}")
    for given, used, why in (  # the options that shape the grounding loss, each pointless without it
        (f"--grounding-layers {a.grounding_layers}", a.grounding_layers != "all", "it picks its layers"),
        (f"--grounding-through {a.grounding_through}", a.grounding_through != "both", "it picks its side"),
        ("--ground-adjectives", a.ground_adjectives, "it adds words to the grounding loss"),
        (f"--grounding-max-t {a.grounding_max_t}", a.grounding_max_t is not None, "it limits it"),
    ):
        if used and not a.grounding:
            raise checks.InputError(f"{given} needs --grounding > 0 ({why})")
    checks.count(a.threads, "--threads")
    _check_sizes(a)
    if a.out.exists() and not a.out.is_dir():
        raise checks.InputError(f"--out {a.out} is a file; give a run folder")


def _words(values) -> str:
    """``(2, 1, 1)`` as the command line writes it: ``2 1 1``."""
    return " ".join(map(str, values))


def _check_sizes(a) -> None:
    """The text encoder's and UNet's size options: valid, reachable from --init-from, a resumed run's own."""
    checks.integer(a.text_layers, "--text-layers", minimum=1)
    if checks.integer(a.text_width, "--text-width", minimum=HEAD_DIM) % HEAD_DIM:
        raise checks.InputError(f"--text-width must be a multiple of {HEAD_DIM} (the heads' width), got {a.text_width}")
    for n in a.transformer_layers:
        checks.integer(n, "--transformer-layers", minimum=1)
    for n in a.unet_channels:
        if checks.integer(n, "--unet-channels", minimum=HEAD_DIM) % HEAD_DIM:
            raise checks.InputError(f"--unet-channels must be multiples of {HEAD_DIM} (the heads' width), got {n}")
    if a.init_from and (a.init_from / "unet.pt").exists():
        old = torch.load(a.init_from / "unet.pt")["ema"]
        width, layers = old["text"][grow.TOKEN_EMBEDDING].shape[1], grow.layer_count(old["text"])
        if a.text_width % width or a.text_layers < layers:
            raise checks.InputError(
                f"--text-width {a.text_width} / --text-layers {a.text_layers}: --init-from {a.init_from} has a text"
                f" encoder {width} wide with {layers} layers; grow it (a whole multiple of {width} wide,"
                f" at least {layers} layers) or leave both options out"
            )
        had = grow.transformer_depths(old["unet"])
        if any(n < m for n, m in zip(a.transformer_layers, had)):
            raise checks.InputError(
                f"--transformer-layers {_words(a.transformer_layers)}: --init-from {a.init_from} has {_words(had)};"
                " pass at least that many at each place (new blocks are added, none taken away)"
            )
        had = grow.unet_channels(old["unet"])
        if had != tuple(a.unet_channels):
            raise checks.InputError(
                f"--unet-channels {_words(a.unet_channels)}: --init-from {a.init_from} has {_words(had)}; pass those"
                " (a UNet does not grow wider here), or train from scratch without --init-from"
            )
    resumed = not a.export and (a.out / "unet.pt").exists() and (a.out / "run.json").exists()
    if resumed:  # a resumed run keeps its encoder's and UNet's size (an export reads them from run.json)
        past = json.loads((a.out / "run.json").read_text())
        size = _text_size(past)
        if size != (a.text_width, a.text_layers):
            raise checks.InputError(
                f"--text-width {a.text_width} / --text-layers {a.text_layers}: {a.out} was trained with"
                f" {size[0]} / {size[1]}; pass those to resume it, or start a new --out"
            )
        was = _unet_shape(past)
        for flag, key, given in (
            ("--transformer-layers", "transformer_layers", a.transformer_layers),
            ("--unet-channels", "channels", a.unet_channels),
        ):
            if was[key] != tuple(given):
                raise checks.InputError(
                    f"{flag} {_words(given)}: {a.out} was trained with {_words(was[key])}; pass those to resume it,"
                    " or start a new --out"
                )


def main(argv=None) -> None:
    p = parser()
    a = p.parse_args(argv)
    _check(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.export:
        print(f"exported to {export(a.out, a.export)}")
        return
    run = _record(a, argv)
    tok_dir = a.out / "tokenizer"
    sf_keep = a.scaling_factor
    if a.init_from:
        init = a.init_from
        init_run = json.loads((init / "run.json").read_text()) if (init / "run.json").exists() else {}
        if sf_keep is None and (init / "latents.pt").exists():
            sf_keep = torch.load(init / "latents.pt")["scaling_factor"]
        if sf_keep is None:
            p.error(f"--init-from {init}: no latents.pt there; pass --scaling-factor (the one its UNet used)")
        run.update(
            init_from=str(init),
            init_step=torch.load(init / "unet.pt")["step"],
            init_commands=init_run.get("commands", []),
            scaling_factor=sf_keep,
        )
        if not (tok_dir / "vocab.json").exists():  # the text encoder's vocabulary comes with it
            shutil.copytree(init / "tokenizer", tok_dir, dirs_exist_ok=True)
        for part in ("vae.pt", "decoder.pt"):  # the same frozen VAE (its latents are what the UNet knows)
            if not (a.out / part).exists() and (init / part).exists():  # and its fine-tuned decoder, if any
                shutil.copyfile(init / part, a.out / part)
    (a.out / "run.json").write_text(json.dumps(run, indent=1))
    # a resumed run keeps the tokenizer its text encoder was trained with
    tokenizer = load_tokenizer(tok_dir if (tok_dir / "vocab.json").exists() else save_tokenizer(tok_dir))
    images, captions = data(a.out, a.scenes, a.seed, a.mix)
    vae_steps = torch.load(a.out / "vae.pt")["step"] if a.init_from else a.vae_steps
    vae = train_vae(a.out, images, vae_steps, a.seed)
    latents, sf = encode_all(a.out, vae, images, sf_keep)
    print(f"latent scaling factor {sf:.4f}")
    scenes = None
    if a.grounding or a.attribute_dropout or a.token_swap:  # the objects behind each caption, rebuilt from the seed
        scenes = _scenes(a.scenes, a.seed, a.mix)
        if [s.caption for s in scenes] != captions:
            raise checks.InputError(f"{a.out / 'data.pt'} does not match --scenes/--seed/--mix; delete it")
    _, _, _, history = train_unet(
        a.out,
        latents,
        captions,
        tokenizer,
        a.unet_steps,
        a.seed,
        batch=a.batch,
        lr=a.lr,
        decay_from=a.decay_from,
        lr_final=a.lr_final,
        init=a.init_from / "unet.pt" if a.init_from else None,
        mask_padding=a.mask_padding,
        warmup=a.warmup,
        scenes=scenes,
        grounding_weight=a.grounding,
        grounding_layers=a.grounding_layers,
        grounding_max_t=a.grounding_max_t,
        grounding_through=a.grounding_through,
        attribute_dropout=a.attribute_dropout,
        token_swap=a.token_swap,
        swap_reach=a.swap_reach,
        swap_late=a.swap_late,
        swap_name_size=a.swap_name_size,
        ground_adjectives=a.ground_adjectives,
        short_deltas=a.short_deltas,
        vae=vae,
        text_width=a.text_width,
        text_layers=a.text_layers,
        unet_shape=_unet_shape(run),
    )
    if history:
        print(f"unet+text: {history[-1]['step']} steps, smoothed loss {history[-1]['loss']:.4f}")
    if a.decoder_steps:
        finetune_decoder(a.out, vae, images, a.decoder_steps, a.seed)


if __name__ == "__main__":
    sys.exit(checks.run_cli(main, prog="python -m reprolib.shapes.train"))
