"""The shapes-world model card: how the shipped weights were trained and what the evaluation measured."""

from __future__ import annotations

import json
import re

from ..pipelines import SHAPES_DIR, model_defaults


def _training(train: dict) -> list[str]:
    """The card's training lines: the commands in order, what they trained, and how the folder was exported."""
    found = re.search(r"--out (\S+)", train["command"])
    run = train.get("exported_from") or (found[1] if found else "runs/shapes")  # a kept folder, or the run itself
    export = f"- export: `python -m reprolib.shapes.train --out {run} --export reprolib/shapes/weights --overwrite`"
    steps = f"(batch {train['batch']}, seed {train['seed']}, {train['scenes']} scenes); EMA weights shipped"
    if not train.get("init_from"):
        commands = train.get("commands", [])
        return [
            *(
                ["- commands (the run was resumed; in order):", *[f"  - `{c}`" for c in commands]]
                if len(commands) > 1
                else [f"- command: `{train['command']}`"]
            ),
            f"- VAE steps: {train['vae_steps']}, UNet + text-encoder steps done: {train['unet_steps_done']} {steps}",
            f"- final smoothed training loss: {train['final_loss']:.4f}" if train.get("final_loss") else "",
            export,
        ]
    lines = [
        f"- the starting point ({train['init_from']}, UNet + text encoder at step {train['init_step']}), trained by:",
        *[f"  - `{c}`" for c in train.get("init_commands", [])],
        "- then, from it:",
        *[f"  - `{c}`" for c in train["commands"]],
        f"- UNet + text-encoder steps in this run: {train['unet_steps_this_run']} {steps}",
    ]
    if train.get("decoder_steps"):
        lines.append(
            f"- the VAE's decoder trained on {train['decoder_steps']} steps with its encoder frozen "
            "(`finetune_decoder`): the latents, and so the UNet, are unchanged"
        )
    return [*lines, export]


def write_card(out: dict, args) -> str:
    """MODEL_CARD.md beside the weights: how they were trained and what this script measured."""
    train = json.loads((SHAPES_DIR / "training.json").read_text())
    cfg = model_defaults(SHAPES_DIR).get("guidance_scale")
    f = out["faithfulness"]
    lines = [
        "# shapes-world model card",
        "",
        "A tiny latent diffusion model of Stable Diffusion's classes (AutoencoderKL 64×64 → 16×16×4, "
        "UNet2DConditionModel with cross-attention at 16×16, 8×8 and 4×4, CLIPTextModel trained from scratch, "
        "a word-level CLIPTokenizer, DDIMScheduler with SD's scaled-linear betas), trained on CPU by reprolib.",
        "",
        "## Training",
        "",
        *_training(train),
        "- every starting point before these, back to v1, and what each was measured at: `checkpoints/README.md`",
        "",
        "## Measured (`python -m "
        + "reprolib.evaluation "
        + " ".join(f"--{k} {v}" for k, v in (("n", args.n), ("attention", args.attention)) if v)
        + " --card`)",
        "",
        f"Caption faithfulness on {f['captions']} fresh random captions (25 DDIM steps, CFG {cfg:g}), by the ruler:",
        "",
        "| colour present | shape right | object count right | small/big obeyed | s per image (CPU) |",
        "|---|---|---|---|---|",
        f"| {f['colour']:.3f} | {f['shape']:.3f} | {f['count']:.3f} | {f['size']:.3f} | {f['seconds_per_image']:.2f} |",
    ]
    if "attention" in out:
        lines += [
            "",
            f"Noun-token attention on its own object ÷ uniform share ({out['attention']['scenes']} "
            "two- and three-object scenes, mean over steps):",
            "",
            "| layer | ratio |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.2f} |" for k, v in out["attention"]["layers"].items()]
    path = SHAPES_DIR / "MODEL_CARD.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n")
    return str(path)
