"""run.json: the commands that built a run and the recipe's settings (the model sizes read back from it)."""

from __future__ import annotations

import json
import sys

from ..model import TEXT_DIM, TEXT_LAYERS, TRANSFORMER_LAYERS, UNET_CHANNELS


def text_size_of(run: dict) -> tuple[int, int]:
    """(width, layers) of the text encoder a run.json describes (v1–v3 runs record neither)."""
    return run.get("text_width", TEXT_DIM), run.get("text_layers", TEXT_LAYERS)


def unet_shape_of(run: dict) -> dict:
    """``build_unet``'s shape options for the UNet a run.json describes (v1–v3 runs record neither)."""
    return {
        "transformer_layers": tuple(run.get("transformer_layers", TRANSFORMER_LAYERS)),
        "channels": tuple(run.get("unet_channels", UNET_CHANNELS)),
    }


def record(a, argv) -> dict:
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
    if a.key_norm:
        run["key_norm"] = True
    if a.reads != "all":
        run["reads"] = a.reads
    if a.summary != "full":
        run["summary"] = a.summary
    if a.grounding:
        run["grounding"] = a.grounding
    if a.grounding_layers != "all":
        run["grounding_layers"] = a.grounding_layers
    if a.grounding_max_t is not None:
        run["grounding_max_t"] = a.grounding_max_t
    if a.grounding_min_t is not None:
        run["grounding_min_t"] = a.grounding_min_t
    if a.grounding_through != "both":
        run["grounding_through"] = a.grounding_through
    if a.exclusive:
        run["exclusive"] = a.exclusive
    if a.exclusive_layers is not None:
        run["exclusive_layers"] = a.exclusive_layers
    if a.attribute_dropout:
        run["attribute_dropout"] = a.attribute_dropout
    if a.stretch_nouns:
        run["stretch_nouns"], run["stretch_max"] = a.stretch_nouns, a.stretch_max
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
