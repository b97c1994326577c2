"""The training command's options and their checks (each refusal names the flag and the fix)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ... import checks
from .. import grounding, grow, world
from ..grounding import READS
from ..model import HEAD_DIM, SCHEDULE, TEXT_DIM, TEXT_LAYERS, TRANSFORMER_LAYERS, UNET_CHANNELS
from .export import DEFAULT_GUIDANCE, KEEP_FILES, PIPELINE_FILES
from .record import record, text_size_of, unet_shape_of


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        "scenes, a third of them repeating a shape in different colours; v3 = v2 with half the scenes three-object; "
        "v4 = v2 with a third of the multi-object scenes repeating a colour too; "
        "v5 / v6 = v2 / v4 with the objects named in random order (otherwise later objects are smaller); "
        "v7 = v2 with a third of the multi-object scenes placing their objects against each other; "
        "v8 = v2 with at least 6 px between objects (2 otherwise); v9 = v8 with 12 px in two-object scenes; "
        "v10 = v8 with a third of the multi-object scenes naming two near colours (blue and green, or red and yellow)",
    )
    p.add_argument(
        "--mask-padding",
        action="store_true",
        help="mask the slots after the first end-of-text token in cross-attention (padding_mask)",
    )
    p.add_argument(
        "--key-norm",
        action="store_true",
        help="cross-attention keys of one length per head (model.normalise_keys): a word's key places it by its "
        "direction alone, so a longer (edited) token cannot take the other words' pixels; from a model trained "
        "without it, each layer's queries are first scaled by its keys' mean length",
    )
    p.add_argument(
        "--reads",
        choices=sorted(READS),
        default="all",
        help="which words cross-attention reads, in training and sampling (the export says so): all; nouns = the "
        "start token and the shape nouns alone (each object's colour and size reach the UNet only through its "
        "noun, as the attribute deltas assume); nouns+summary = those and the end-of-text token; no-attributes = "
        "every word but the colour and size words. nouns and no-attributes leave out the end-of-text token, whose "
        "summary of the whole caption contradicts a one-word edit (unless --summary no-attributes)",
    )
    p.add_argument(
        "--summary",
        choices=sorted(grounding.SUMMARIES),
        default="full",
        help="what the end-of-text token cross-attention reads sums up, in training and sampling (the export "
        "says so): full = the caption; no-attributes = the caption without its colour and size words (how many "
        "objects and which shapes), so an edit of one noun's colour or size is not contradicted by it",
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
        help="with --grounding: the layers it holds: all, outer (16x16 and 8x8; the 4x4 mid block left free), "
        "16x16 (those alone) or 16x16+last-8x8 (and the last 8x8 up layer)",
    )
    p.add_argument(
        "--grounding-max-t",
        type=int,
        default=None,
        help="with --grounding: hold it only at timesteps below this (default: all); at the noisiest steps the "
        "picture does not yet say where an object will be",
    )
    p.add_argument(
        "--grounding-min-t",
        type=int,
        default=None,
        help="with --grounding: hold it (and --exclusive) only at timesteps from this on (default: all); the "
        "noisiest steps are where two nouns settle on their objects, before an edit's delay",
    )
    p.add_argument(
        "--grounding-through",
        choices=grounding.GROUNDING_THROUGH,
        default="both",
        help="with --grounding: the side its gradient reaches in each layer: both, keys (to_k and the text "
        "states), queries (to_q and the UNet's features below it) or unet (all but the text states)",
    )
    p.add_argument(
        "--exclusive",
        type=float,
        default=0.0,
        help="with --grounding: weight of the pixel side of grounding, each object's pixels held off the other "
        "objects' nouns in the grounded layers (grounding.exclusive_loss; 0 = off)",
    )
    p.add_argument(
        "--exclusive-layers",
        choices=list(grounding.GROUNDED_LAYERS),
        default=None,
        help="with --exclusive: hold it in these layers only, some of the grounded ones (default: all of those)",
    )
    p.add_argument(
        "--attribute-dropout",
        type=float,
        default=0.0,
        help="share of captions whose colour and size words are hidden from cross-attention (0 = off)",
    )
    p.add_argument(
        "--stretch-nouns",
        type=float,
        default=0.0,
        help="share of captions with one noun token's state made longer (x a uniform 1 to --stretch-max) in what "
        "cross-attention reads, the picture unchanged, as an attribute delta lengthens it (0 = off)",
    )
    p.add_argument("--stretch-max", type=float, default=2.5, help="with --stretch-nouns: the largest factor (> 1)")
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
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy the run's EMA weights, VAE, tokenizer and record here (a folder --init-from takes, small "
        "enough to commit) and exit",
    )
    p.add_argument(
        "--key-caps",
        action="store_true",
        help="with --export: cap each cross-attention layer's keys at the longest any of 1,024 world captions makes "
        "(model.cap_keys; the export's reprolib.json holds the caps): an edited token cannot outbid by length",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"with --export: the classifier-free guidance scale the library samples this model with (the export's "
        f"reprolib.json; default {DEFAULT_GUIDANCE}, v1's)",
    )
    p.add_argument("--overwrite", action="store_true", help="with --export or --keep: replace what is already there")
    return p


def _check_outputs(a) -> None:
    """--out, --export, --keep and what only an export takes (--key-caps, --guidance-scale)."""
    if a.out.exists() and not a.out.is_dir():
        raise checks.InputError(f"--out {a.out} is a file; give a run folder")
    for flag, dest, files in (("--export", a.export, PIPELINE_FILES), ("--keep", a.keep, KEEP_FILES)):
        if dest is None:
            continue
        if not (a.out / "unet.pt").is_file():
            raise checks.InputError(f"{flag}: {a.out} has no trained UNet (unet.pt); train it first or give its run")
        checks.output_path(dest, flag, overwrite=a.overwrite, folder=True, files=files)
    if a.key_caps and not a.export:
        raise checks.InputError("--key-caps is written into an export: give --export DIR too")
    if a.guidance_scale is not None and not a.export:
        raise checks.InputError("--guidance-scale is written into an export: give --export DIR too")
    checks.number(a.guidance_scale, "--guidance-scale", low=0.0)
    record = a.out / "run.json"
    if a.key_caps and record.is_file() and json.loads(record.read_text()).get("key_norm"):
        raise checks.InputError(f"--key-caps: {a.out} was trained with --key-norm, whose keys have one length already")
    if a.overwrite and not (a.export or a.keep):
        raise checks.InputError("--overwrite needs --export or --keep (it lets them replace what is there)")


def _check_exclusive_layers(a) -> None:
    if a.exclusive_layers is None:
        return
    if not a.exclusive:
        raise checks.InputError(f"--exclusive-layers {a.exclusive_layers} needs --exclusive > 0 (it picks its layers)")
    if not grounding.layers_within(a.exclusive_layers, a.grounding_layers):
        raise checks.InputError(
            f"--exclusive-layers {a.exclusive_layers} holds layers --grounding-layers {a.grounding_layers} does not "
            "record; pick some of the grounded layers or ground more (--grounding-layers all)"
        )


def check(a, init: dict | None) -> None:
    """Every flag's value, each refusal naming the flag and the fix; ``init``: --init-from's UNet checkpoint."""
    for flag in ("scenes", "batch"):
        checks.integer(getattr(a, flag), f"--{flag}", minimum=1)
    for flag in ("vae_steps", "unet_steps", "warmup", "decoder_steps"):
        checks.integer(getattr(a, flag), "--" + flag.replace("_", "-"), minimum=0)
    for flag in ("lr", "lr_final", "grounding", "exclusive"):
        if checks.number(getattr(a, flag), "--" + flag.replace("_", "-"), optional=False) < 0:  # 0: frozen
            raise checks.InputError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(a, flag)}")
    for flag in ("attribute_dropout", "token_swap", "swap_late", "swap_name_size", "stretch_nouns"):
        name = "--" + flag.replace("_", "-")
        if not 0 <= checks.number(getattr(a, flag), name, optional=False) <= 1:
            raise checks.InputError(f"{name} must be in [0, 1], got {getattr(a, flag)}")
    if checks.number(a.swap_reach, "--swap-reach", optional=False) < 1:
        raise checks.InputError(f"--swap-reach must be >= 1 (1 = the changed token itself), got {a.swap_reach}")
    if checks.number(a.stretch_max, "--stretch-max", optional=False) <= 1:
        raise checks.InputError(f"--stretch-max must be > 1 (1 = no stretch), got {a.stretch_max}")
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
    for flag in ("grounding_max_t", "grounding_min_t"):
        name, value = "--" + flag.replace("_", "-"), getattr(a, flag)
        if value is not None and checks.integer(value, name, minimum=1) > last:
            raise checks.InputError(f"{name} is a training timestep, 1 to {last}; got {value}")
    if None not in (a.grounding_min_t, a.grounding_max_t) and a.grounding_min_t >= a.grounding_max_t:
        raise checks.InputError(
            f"--grounding-min-t {a.grounding_min_t} is not below --grounding-max-t {a.grounding_max_t}: no timestep "
            "would be held; lower the first or raise the second"
        )
    for given, used, why in (  # the options that shape the grounding loss, each pointless without it
        (f"--grounding-layers {a.grounding_layers}", a.grounding_layers != "all", "it picks its layers"),
        (f"--grounding-through {a.grounding_through}", a.grounding_through != "both", "it picks its side"),
        ("--ground-adjectives", a.ground_adjectives, "it adds words to the grounding loss"),
        (f"--grounding-max-t {a.grounding_max_t}", a.grounding_max_t is not None, "it limits it"),
        (f"--grounding-min-t {a.grounding_min_t}", a.grounding_min_t is not None, "it limits it"),
        (f"--exclusive {a.exclusive}", bool(a.exclusive), "it is read from the grounded layers' maps"),
    ):
        if used and not a.grounding:
            raise checks.InputError(f"{given} needs --grounding > 0 ({why})")
    _check_exclusive_layers(a)
    _check_summary(a)
    checks.count(a.threads, "--threads")
    past = _resumed_record(a)
    _check_sizes(a, init, past)
    if past is not None:
        _check_same_reading(a, past)
        _check_same_recipe(a, past)
    _check_outputs(a)


def _check_summary(a) -> None:
    """--summary changes the end-of-text token: refused where cross-attention does not read it alone.

    (--token-swap composes with it: a swap changes colour and size words, which the summary is made without.)
    """
    if a.summary == "full":
        return
    if a.reads == "all" and not a.mask_padding:
        raise checks.InputError(
            f"--summary {a.summary} needs --mask-padding with --reads all: the padding slots after the end-of-text"
            " token sum up the whole caption too"
        )
    if a.reads not in ("all", "nouns+summary"):
        raise checks.InputError(
            f"--summary {a.summary}: --reads {a.reads} never reads the end-of-text token; pass --reads nouns+summary"
            " or --reads all --mask-padding"
        )


def _words(values) -> str:
    """``(2, 1, 1)`` as the command line writes it: ``2 1 1``."""
    return " ".join(map(str, values))


def _resumed_record(a) -> dict | None:
    """The run.json of the run --out resumes, or None where this call starts one (or exports or keeps)."""
    resumed = not (a.export or a.keep) and (a.out / "unet.pt").exists() and (a.out / "run.json").exists()
    return json.loads((a.out / "run.json").read_text()) if resumed else None


def _check_sizes(a, init: dict | None, past: dict | None) -> None:
    """The text encoder's and UNet's size options: valid, reachable from --init-from, a resumed run's own."""
    checks.integer(a.text_layers, "--text-layers", minimum=1)
    if checks.integer(a.text_width, "--text-width", minimum=HEAD_DIM) % HEAD_DIM:
        raise checks.InputError(f"--text-width must be a multiple of {HEAD_DIM} (the heads' width), got {a.text_width}")
    for n in a.transformer_layers:
        checks.integer(n, "--transformer-layers", minimum=1)
    for n in a.unet_channels:
        if checks.integer(n, "--unet-channels", minimum=HEAD_DIM) % HEAD_DIM:
            raise checks.InputError(f"--unet-channels must be multiples of {HEAD_DIM} (the heads' width), got {n}")
    if init is not None:
        old = init["ema"]
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
    if past is not None:  # a resumed run keeps its encoder's and UNet's size (an export reads them from run.json)
        size = text_size_of(past)
        if size != (a.text_width, a.text_layers):
            raise checks.InputError(
                f"--text-width {a.text_width} / --text-layers {a.text_layers}: {a.out} was trained with"
                f" {size[0]} / {size[1]}; pass those to resume it, or start a new --out"
            )
        was = unet_shape_of(past)
        for flag, key, given in (
            ("--transformer-layers", "transformer_layers", a.transformer_layers),
            ("--unet-channels", "channels", a.unet_channels),
        ):
            if was[key] != tuple(given):
                raise checks.InputError(
                    f"{flag} {_words(given)}: {a.out} was trained with {_words(was[key])}; pass those to resume it,"
                    " or start a new --out"
                )


# what a resumed run must be given as it started: its data and its loss (steps and the schedule may change)
RESUMED_AS_STARTED = (
    "scenes", "batch", "seed", "mix", "grounding", "grounding_layers", "grounding_max_t", "grounding_min_t",
    "grounding_through", "exclusive", "exclusive_layers", "attribute_dropout", "stretch_nouns", "stretch_max",
    "token_swap", "swap_reach", "swap_late", "swap_name_size", "ground_adjectives", "short_deltas",
)  # fmt: skip


def _check_same_recipe(a, past: dict) -> None:
    """A resumed run trains on the data and the loss it started with: another --mix or --exclusive-layers
    would silently make it a different run (and its run.json would name only the new one)."""
    now = record(a, [])
    for key in RESUMED_AS_STARTED:
        if now.get(key) != past.get(key):
            flag = "--" + key.replace("_", "-")
            given = "not given" if key not in now else f"{now[key]}"
            was = "without it" if key not in past else f"with {flag} {past[key]}"
            raise checks.InputError(
                f"{flag} {given}: {a.out} was trained {was}; pass the same to resume it, or start a new --out"
            )


def _check_same_reading(a, past: dict) -> None:
    """A resumed run reads the caption as it was trained to: a changed mask would train a different model."""
    for flag, key, given, default in (
        ("--reads", "reads", a.reads, "all"),
        ("--summary", "summary", a.summary, "full"),
        ("--mask-padding", "mask_padding", a.mask_padding, False),
        ("--key-norm", "key_norm", a.key_norm, False),
    ):
        if past.get(key, default) != given:
            raise checks.InputError(
                f"{flag} {given}: {a.out} was trained with {past.get(key, default)}; pass that to resume it,"
                " or start a new --out"
            )
