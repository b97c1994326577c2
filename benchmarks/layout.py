"""The layout-guidance bars on the shapes world, measured by the ruler.

    python benchmarks/layout.py                          # 16 seeds × 7 cases, 4 methods, + Attend-and-Excite cost
    python benchmarks/layout.py --layers 8 --eta 30      # guide with the 8×8 maps only, loss scale η = 30
    python benchmarks/layout.py --model tiny-sd15 --seeds 2 --steps 2   # a quick check of the script itself

Per method (unguided; backward guidance resetting its energy every step; backward never reset, as the
official code; forward guidance): the mean fraction of the boxed object's pixels inside its box (over
runs where the ruler found it), how often it was found, seconds per image and the ratio to unguided.
Then the cost of diffusers' Attend-and-Excite pipeline on the same model against the plain pipeline.
All timings of one table come from one run with the methods interleaved seed by seed.
A thin caller of reprolib.evaluation.layout_probe and reprolib.evaluation.attend_excite, which
``python -m reprolib.reproduce --sections layout`` also runs (the README's table comes from there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reprolib import checks
from reprolib.evaluation.attend_excite import attend_and_excite_cost
from reprolib.evaluation.layout import DEFAULT_CASES, PAIR, layout_probe, methods
from reprolib.layout import LayoutConfig


def load(model: str):
    """The pipeline (``tiny-sd15`` etc. give random tiny ones: seconds, for checking the script)."""
    from reprolib.pipelines import load_pipeline

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parse_layers(text: str | None):
    """'8,16' → [8, 16]; 'mid,up.1' → ['mid', 'up.1']; None → the library default."""
    if text is None:
        return None
    return [int(p) if p.strip().isdigit() else p.strip() for p in text.split(",") if p.strip()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="shapes | tiny-sd15 | tiny-sd21 | ... | a folder")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 25 for shapes)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--eta", type=float, default=None, help=f"loss scale η (default {LayoutConfig.eta:g})")
    p.add_argument(
        "--layers",
        default=None,
        help="guidance layers: map sides or patterns, e.g. '8', '8,16', 'mid,up.1' (default: mid + "
        "first cross-attention up block)",
    )
    p.add_argument("--guidance-steps", type=int, default=LayoutConfig.guidance_steps)
    p.add_argument("--max-iters", type=int, default=LayoutConfig.max_iters)
    p.add_argument("--threshold", type=float, default=LayoutConfig.loss_threshold)
    p.add_argument("--strength", type=float, default=LayoutConfig.forward_strength, help="λ of forward guidance")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of: unguided, backward, 'backward, never reset' as 'never-reset', "
        "forward (default: all)",
    )
    p.add_argument(
        "--cases",
        default=None,
        help="comma-separated parts of case names to keep, e.g. 'top-left,both' (default: all: "
        + "; ".join(c.name for c in DEFAULT_CASES)
        + ")",
    )
    p.add_argument("--ae-seeds", type=int, default=8, help="seeds for the Attend-and-Excite timing (0: skip it)")
    p.add_argument(
        "--ae-no-refine",
        action="store_true",
        help="Attend-and-Excite without its iterative refinement (the lower bound of its cost)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    a = p.parse_args(argv)
    if a.json:  # before the work, not after it
        checks.output_path(a.json, "--json", overwrite=a.overwrite)

    from reprolib.attention import select_layers
    from reprolib.generate import defaults

    pipe = load(a.model)
    d_steps, d_cfg = defaults(pipe)
    steps, cfg = a.steps or d_steps, d_cfg if a.cfg is None else a.cfg
    configs = methods(
        a.eta,
        parse_layers(a.layers),
        guidance_steps=a.guidance_steps,
        max_iters=a.max_iters,
        loss_threshold=a.threshold,
        forward_strength=a.strength,
    )
    if a.methods:
        alias = {"never-reset": "backward, never reset"}
        wanted = [alias.get(m.strip(), m.strip()) for m in a.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in configs]
        if unknown:
            p.error(f"unknown method(s) {unknown}; choose from unguided, backward, never-reset, forward")
        configs = {m: configs[m] for m in wanted}
    cases = DEFAULT_CASES
    if a.cases:
        parts = [c.strip() for c in a.cases.split(",") if c.strip()]
        cases = [c for c in DEFAULT_CASES if any(part in c.name for part in parts)]
        if not cases:
            p.error(f"--cases {a.cases!r} matches none of: {', '.join(c.name for c in DEFAULT_CASES)}")
    cfg0 = next((c for c in configs.values() if c is not None), LayoutConfig())
    layers = select_layers(pipe.unet, "default" if cfg0.layers is None else cfg0.layers)
    print(
        f"layout guidance on {a.model}: {a.seeds} seeds × {len(cases)} cases, {steps} steps, "
        f"cfg {cfg}, {type(pipe.scheduler).__name__}, η {cfg0.eta:g}, {cfg0.max_iters} iters × "
        f"{cfg0.guidance_steps} steps, threshold {cfg0.loss_threshold:g}, λ {cfg0.forward_strength:g}"
    )
    print(f"guidance layers: {', '.join(layers)}")
    t0 = time.perf_counter()
    table = layout_probe(
        pipe,
        cases,
        range(a.seeds),
        configs=configs,
        steps=steps,
        guidance_scale=cfg,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print()
    print(table.format())
    out = {
        "model": a.model,
        "steps": steps,
        "cfg": cfg,
        "layers": layers,
        "config": vars(cfg0).copy(),
        **table.as_dict(),
        "probe_seconds": time.perf_counter() - t0,
    }
    if a.ae_seeds > 0:
        try:
            ae = attend_and_excite_cost(
                pipe, PAIR, ["circle", "square"], list(range(a.ae_seeds)), steps, cfg, refine=not a.ae_no_refine
            )
        except (ImportError, ValueError) as e:
            print(f"\nAttend-and-Excite: skipped ({e})")
        else:
            out["attend_and_excite"] = ae
            how = "without refinement" if a.ae_no_refine else "with its iterative refinement"
            print(
                f"\nAttend-and-Excite (diffusers, {how}), {a.ae_seeds} seeds, '{PAIR}', "
                f"tokens {ae['token_indices']}, "
                f"{ae['attn_res']}×{ae['attn_res']} maps: {ae['attend_and_excite_s']:.2f} s vs plain pipe "
                f"{ae['plain_s']:.2f} s per image → {ae['ratio']:.2f}×"
            )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {a.json}")
    return out


if __name__ == "__main__":
    raise SystemExit(checks.run_cli(main, prog="python benchmarks/layout.py"))
