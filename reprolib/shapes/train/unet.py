"""The UNet and text encoder, trained together on the cached latents (with the #13 levers of ``grounding``)."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...conditioning import padding_mask, reads_mask, with_summary, without_words
from .. import grounding, grow
from ..model import (
    TEXT_DIM,
    TEXT_LAYERS,
    build_text_encoder,
    build_unet,
    match_key_lengths,
    normalise_keys,
    training_scheduler,
)
from .data import save_atomic


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


def swap_batch(scenes, ids, positions, batch, t, g, *, p, reach, late, name_size, tokenizer, text, vae, sched, sf):
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


def _models(tokenizer, init: dict | None, seed: int, width: int, layers: int, unet_shape: dict):
    """The UNet and text encoder: fresh (seeded), or ``init``'s EMA weights, grown where this run's encoder or
    UNet attention is bigger (``grow``; copied as they are otherwise)."""
    torch.manual_seed(seed)
    unet, text = build_unet(width, **unet_shape), build_text_encoder(tokenizer, width, layers)
    if init is not None:
        text.load_state_dict(grow.grow_text_encoder(init["ema"]["text"], text, seed))
        unet.load_state_dict(grow.grow_unet(init["ema"]["unet"], unet, seed))
    return unet, text


def _key_norm(unet, text, captions: list[str], tokenizer, reading: tuple[bool, str], calibrate: bool) -> None:
    """Install ``normalise_keys``; ``calibrate``: first scale the queries (``match_key_lengths``) over the first 256
    captions' read slots (``reading``: mask_padding, reads), for a UNet that was trained without it."""
    if calibrate:
        ids = token_ids(captions[:256], tokenizer)
        with torch.no_grad():
            factors = match_key_lengths(unet, text(ids)[0], reading_mask(ids, tokenizer, *reading))
        print("key norm: queries scaled by " + ", ".join(f"{v:.2f}" for v in factors.values()))
    normalise_keys(unet)


def reading_mask(ids: torch.Tensor, tokenizer, mask_padding: bool, reads: str) -> torch.Tensor | None:
    """(captions, tokens): the slots cross-attention reads (``--reads``'s words, else up to the first
    end-of-text with ``mask_padding``), or None where it reads them all."""
    words = grounding.READS[reads]
    if words is not None:
        return reads_mask(ids, tokenizer, words)
    return padding_mask(ids, tokenizer.eos_token_id) if mask_padding else None


def summary_ids(captions: list[str], tokenizer, summary: str) -> torch.Tensor | None:
    """The token ids of the captions the end-of-text summary is made from (``grounding.SUMMARIES``), or None."""
    words = grounding.SUMMARIES[summary]
    if words is None:
        return None
    return token_ids([without_words(c, words) for c in captions], tokenizer)


def token_ids(captions: list[str], tokenizer) -> torch.Tensor:
    """(captions, tokens) padded and truncated to the tokenizer's length, as the encoder reads them."""
    return tokenizer(
        captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def _text_states(text, ids: torch.Tensor, short: torch.Tensor | None, eos_id: int) -> torch.Tensor:
    """The encoder's states of ``ids``, the end-of-text one made from ``short`` where given (``with_summary``)."""
    states = text(ids)[0]
    return states if short is None else with_summary(states, ids, text(short)[0], short, eos_id)


def _read_levers(cond, mask, idx, words: dict, g, *, dropout: float, stretch: tuple[float, float]):
    """Batch ``idx``'s text states and cross-attention mask under stretched nouns, then attribute dropout (each
    draws from ``g`` only when on, so a run without it sees the same batches); ``words``: the captions' noun and
    attribute positions, found once per run."""
    if stretch[0]:
        cond = grounding.stretch_nouns(cond, words["nouns"][idx], *stretch, g)
    if dropout:
        attributes = words["attributes"][idx]
        mask = torch.ones(attributes.shape, dtype=torch.long) if mask is None else mask  # as ones_like(token ids)
        mask = grounding.drop_attributes(mask, attributes, dropout, g)
    return cond, mask


def _grounding_terms(maps, words, nouns, masks, held, weights: tuple[float, float, str]) -> torch.Tensor:
    """The grounding loss (``words`` held to their objects) and, with a second weight, its pixel side (``nouns``)
    in the layers the third names (``grounding.GROUNDED_LAYERS``)."""
    weight, exclusive, layers = weights
    out = weight * grounding.grounding_loss(maps, words, masks, held)
    if not exclusive:
        return out
    return out + exclusive * grounding.exclusive_loss(grounding.held_maps(maps, layers), nouns, masks, held)


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
    init: dict | None = None,
    mask_padding: bool = False,
    reads: str = "all",
    summary: str = "full",
    warmup: int = 0,
    scenes: list | None = None,
    grounding_weight: float = 0.0,
    grounding_layers: str = "all",
    grounding_max_t: int | None = None,
    grounding_min_t: int | None = None,
    grounding_through: str = "both",
    exclusive: float = 0.0,
    exclusive_layers: str | None = None,
    attribute_dropout: float = 0.0,
    token_swap: float = 0.0,
    swap_reach: float = 1.0,
    swap_late: float = 0.0,
    swap_name_size: float = 0.0,
    ground_adjectives: bool = False,
    short_deltas: float | None = None,
    stretch: tuple[float, float] = (0.0, 1.0),
    vae=None,
    text_width: int = TEXT_DIM,
    text_layers: int = TEXT_LAYERS,
    unet_shape: dict | None = None,
    key_norm: bool = False,
    init_key_norm: bool = False,
):
    """``init``: a UNet checkpoint to start from, as ``torch.load`` gives it (its EMA weights, as both the
    weights and the EMA copy; a fresh optimizer); only used until this run has written its own checkpoint.
    ``mask_padding``: cross-attention ignores the slots after the first end-of-text (``padding_mask``).
    ``reads``: the words it reads (``grounding.READS``; ``reads_mask``), the start token always.
    ``summary``: the words the end-of-text state is made without (``grounding.SUMMARIES``; ``with_summary``).
    ``grounding_weight`` / ``grounding_layers`` (``grounding.GROUNDED_LAYERS``) / ``grounding_max_t`` /
    ``grounding_min_t`` (held only at timesteps below the first, from the second on) / ``grounding_through``
    (``grounding.GROUNDING_THROUGH``) / ``exclusive`` (the weight of ``grounding.exclusive_loss``, in the
    grounded layers or ``exclusive_layers``) / ``attribute_dropout`` /
    ``token_swap`` / ``swap_reach`` / ``swap_late`` / ``swap_name_size`` / ``ground_adjectives`` / ``short_deltas``
    (the limit of ``change_penalty``) / ``stretch`` (share of captions, largest factor: ``stretch_nouns``)
    (need ``scenes``, the captions' scenes; ``token_swap`` also the ``vae`` to encode its changed pictures):
    see ``grounding``. ``text_width`` / ``text_layers``: the text encoder's size, ``unet_shape`` the
    UNet's (``build_unet``'s options); a smaller ``init`` is grown to them with its function kept (``grow``).
    ``key_norm``: cross-attention keys of one length (``normalise_keys``), the queries first rescaled where
    ``init`` was trained without it (``init_key_norm`` False)."""
    ckpt = out / "unet.pt"
    init = init if not ckpt.exists() else None
    unet, text = _models(tokenizer, init, seed, text_width, text_layers, unet_shape or {})
    if key_norm:
        calibrate = init is not None and not init_key_norm  # a resumed run's weights are already rescaled
        _key_norm(unet, text, captions, tokenizer, (mask_padding, reads), calibrate)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = {"unet": copy.deepcopy(unet.state_dict()), "text": copy.deepcopy(text.state_dict())}
    start, history = 0, []
    if ckpt.exists():
        c = torch.load(ckpt)
        unet.load_state_dict(c["unet"]), text.load_state_dict(c["text"]), opt.load_state_dict(c["opt"])
        ema, start, history = c["ema"], c["step"], c["history"]
    elif steps == 0:  # nothing to train (e.g. a decoder-only fine-tune): keep the starting weights as they are
        save_atomic(_state(unet, text, opt) | {"ema": ema, "step": 0, "history": []}, ckpt)
    if start >= steps:
        return unet, text, ema, history
    sched, skip = training_scheduler(), grounding.GROUNDED_LAYERS[grounding_layers]
    ids, weights = token_ids(captions, tokenizer), (grounding_weight, exclusive, exclusive_layers or grounding_layers)
    if grounding_weight or token_swap:
        positions, masks = grounding.noun_targets(scenes, ids, tokenizer)
        grounded = grounding.phrase_targets(positions, ids, tokenizer) if ground_adjectives else positions
        swap = functools.partial(
            swap_batch,
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
    words = {"attributes": grounding.attribute_positions(ids, tokenizer) if attribute_dropout else None,
             "nouns": grounding.noun_positions(ids, tokenizer) if stretch[0] else None}  # fmt: skip
    reading, short = reading_mask(ids, tokenizer, mask_padding, reads), summary_ids(captions, tokenizer, summary)
    unet.train(), text.train()
    bar = tqdm(range(start, steps), desc="unet+text", initial=start, total=steps)
    t0, running = time.time(), None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, decay_from, lr_final, warmup)
        g = torch.Generator().manual_seed(seed * 1_000_003 + 500_000 + step)
        idx = torch.randint(0, len(ids), (batch,), generator=g)
        xt, noise, t = _noised(latents["mean"][idx], latents["std"][idx], latents["scaling_factor"], sched, g)
        cond = _text_states(text, ids[idx], None if short is None else short[idx], tokenizer.eos_token_id)
        object_masks = masks[idx] if grounding_weight else None
        if token_swap:
            (xt, noise, cond, object_masks), ratio = swap(
                [scenes[i] for i in idx], ids[idx], positions[idx], (xt, noise, cond, object_masks), t, g
            )
        mask = None if reading is None else reading[idx]
        cond, mask = _read_levers(cond, mask, idx, words, g, dropout=attribute_dropout, stretch=stretch)
        with (
            grounding.cross_attention_probs(unet, skip, grounding_through)
            if grounding_weight
            else contextlib.nullcontext({}) as maps
        ):
            pred = unet(xt, t, encoder_hidden_states=cond, encoder_attention_mask=mask).sample
        loss = diffusion = F.mse_loss(pred, noise)
        if grounding_weight:
            held = grounding.held_rows(t, grounding_min_t, grounding_max_t)
            loss = loss + _grounding_terms(maps, grounded[idx], positions[idx], object_masks, held, weights)
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
            save_atomic(_state(unet, text, opt) | {"ema": ema, "step": step + 1, "history": history}, ckpt)
    return unet, text, ema, history
