"""``python -m reprolib.layout``: one guided image, its attention maps and settings, written to a folder.

python -m reprolib.layout --model shapes --prompt "a red circle" --box "red circle=0,0,.5,.5" --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt

from .. import checks
from ..conditioning import TextConditioning
from ..maps import AttentionMaps, attention_maps
from ..pipelines import load_pipeline
from ..plots import plot_grid, plot_overlay
from .boxes import Box, parse_box
from .energy import layout_energy
from .guidance import LayoutConfig, LayoutGuidance


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reprolib.layout", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        default="shapes",
        help="shapes | sd15 | sd21 | sdxl | tiny-sd15 | tiny-sd21 | tiny-sdxl | hub id | folder",
    )
    ap.add_argument("--prompt", required=True)
    ap.add_argument(
        "--box",
        action="append",
        required=True,
        metavar="PHRASE=X0,Y0,X1,Y1",
        help="normalised box from the top left; repeat for more boxes or phrases",
    )
    ap.add_argument("--seed", type=int, default=445)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    ap.add_argument("--eta", type=float, default=LayoutConfig.eta)
    ap.add_argument("--guidance-steps", type=int, default=LayoutConfig.guidance_steps)
    ap.add_argument("--max-iters", type=int, default=LayoutConfig.max_iters)
    ap.add_argument("--threshold", type=float, default=LayoutConfig.loss_threshold)
    ap.add_argument(
        "--layers",
        default=None,
        help="comma-separated patterns or map sides, e.g. 'mid,up.1' or '8,16' (default: mid + "
        "first cross-attention up block)",
    )
    ap.add_argument("--no-reset", action="store_true", help="stop for good once under the threshold (official)")
    ap.add_argument("--mode", choices=("backward", "forward"), default="backward")
    ap.add_argument("--strength", type=float, default=LayoutConfig.forward_strength, help="λ of forward mode")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the guidance pass")
    ap.add_argument("--no-guidance", action="store_true", help="plain generation (boxes only drawn and scored)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--overwrite", action="store_true", help="replace image.png and settings.json already in --out")
    return ap


PROG = "python -m reprolib.layout"
WRITES = ("image.png", "settings.json", "attention_grid.png")


def _boxes_and_config(args) -> tuple[dict[str, list[Box]], LayoutConfig]:
    boxes: dict[str, list[Box]] = {}
    for text in args.box:
        phrase, box = parse_box(text)
        boxes.setdefault(phrase, []).append(box)
    layers = (
        None
        if args.layers is None
        else [int(p) if p.strip().isdigit() else p.strip() for p in args.layers.split(",") if p.strip()]
    )
    config = LayoutConfig(
        eta=args.eta,
        max_iters=args.max_iters,
        loss_threshold=args.threshold,
        guidance_steps=args.guidance_steps,
        layers=layers,
        reset_each_step=not args.no_reset,
        mode=args.mode,
        forward_strength=args.strength,
        gradient_checkpointing=args.checkpointing,
    )
    return boxes, config


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "phrase"


def _write(out: Path, maps: AttentionMaps, boxes: dict[str, list[Box]], guidance: LayoutGuidance) -> list[float]:
    """image.png, one overlay per phrase and the grid; returns the energy of the sampler's maps per step."""
    out.mkdir(parents=True, exist_ok=True)
    maps.image.save(out / "image.png")
    for phrase, bx in boxes.items():
        fig = plot_overlay(maps, phrase, layer=guidance.layers, boxes=bx)
        fig.savefig(out / f"attention_{_slug(phrase)}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    fig = plot_grid(maps, list(boxes), by="block", boxes=boxes)
    fig.savefig(out / "attention_grid.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    # the energy of the conditional maps the sampler actually used, per step (guided or not)
    return [
        float(layout_energy([maps.token_maps(n, s)[None, None] for n in guidance.layers], guidance.targets))
        for s in maps.steps
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code 0, or 2 with one ``error:`` line for a user error (bad box, NaN --cfg, unwritable --out, ...)."""
    return checks.run_cli(run, argv, PROG)


def run(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plt.switch_backend("Agg")
    # every argument checked before the model is loaded
    boxes, config = _boxes_and_config(args)
    checks.count(args.steps, "--steps")
    checks.number(args.cfg, "--cfg")
    checks.prompts(args.prompt, "--prompt")
    checks.output_path(args.out, "--out", overwrite=args.overwrite, folder=True, files=WRITES)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    cond = TextConditioning(pipe)
    height, width = cond.default_size()
    guidance = LayoutGuidance(cond, [cond.tokenize(args.prompt)], boxes, config, height=height, width=width)

    maps = attention_maps(
        pipe,
        args.prompt,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.cfg,
        words=list(boxes),
        hooks=[] if args.no_guidance else [guidance],
    )
    energies = _write(args.out, maps, boxes, guidance)
    settings = {
        "model": args.model,
        "prompt": args.prompt,
        "seed": args.seed,
        "steps": len(maps.steps),
        "cfg": args.cfg,
        "boxes": boxes,
        "guidance": not args.no_guidance,
        "config": asdict(config),
        "layers": guidance.layers,
        "scheduler": type(pipe.scheduler).__name__,
        "energy_by_step": energies,
        "guidance_history": guidance.history,
    }
    (args.out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(
        f"wrote {args.out}/image.png, attention_*.png and settings.json; energy at the first/last step: "
        f"{energies[0]:.3f} / {energies[-1]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
