"""Measure the shapes-world model: caption faithfulness (by the ruler) and where its words attend.

    python -m reprolib.shapes.evaluate --n 200            # faithfulness on 200 fresh captions
    python -m reprolib.shapes.evaluate --attention 32     # + attention localisation on 32 scenes

Captions come from a seed the training data never used, so they are new combinations.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import measure, world

EVAL_SEED = 10_007  # training used seed 0; these captions are drawn afresh


def fresh_captions(n: int, seed: int = EVAL_SEED) -> list[str]:
    return [s.caption for s in world.scenes(n, seed=seed)]


def score(caption: str, image) -> dict:
    """Per-caption counts: objects asked for, colours present, shapes right, count right, size words obeyed."""
    asked = world.parse_caption(caption)
    found = measure.measure(np.asarray(image))
    r = {"objects": len(asked), "colour": 0, "shape": 0, "count": int(len(found) == len(asked)),
         "sized": 0, "size": 0}
    for a in asked:
        f = measure.find(found, colour=a["colour"])
        if f is None:
            continue
        r["colour"] += 1
        r["shape"] += f.shape == a["shape"]
        if a["size_word"]:
            r["sized"] += 1
            r["size"] += (f.size < world.SIZE_MIDDLE) == (a["size_word"] == "small")
    return r


def faithfulness(pipe, n: int = 200, seed: int = EVAL_SEED, batch: int = 16, **generate_kwargs) -> dict:
    """Fractions over ``n`` fresh captions: colour present, shape right, count right, size word obeyed."""
    from ..generate import generate

    captions = fresh_captions(n, seed)
    totals = {"objects": 0, "colour": 0, "shape": 0, "count": 0, "sized": 0, "size": 0}
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        caps = captions[i:i + batch]
        images = generate(pipe, caps, seed=list(range(i, i + len(caps))), **generate_kwargs)
        for c, im in zip(caps, images):
            for k, v in score(c, im).items():
                totals[k] += v
    return {"captions": n, "colour": totals["colour"] / totals["objects"],
            "shape": totals["shape"] / totals["objects"], "count": totals["count"] / n,
            "size": totals["size"] / max(1, totals["sized"]), "seconds_per_image": (time.perf_counter() - t0) / n}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--attention", type=int, default=0, help="also measure attention localisation on N scenes")
    p.add_argument("--json", default=None, help="write the figures here too")
    p.add_argument("--card", action="store_true", help="write MODEL_CARD.md beside the shipped weights")
    a = p.parse_args(argv)
    from ..pipelines import load_pipeline

    pipe = load_pipeline(a.model)
    out = {"faithfulness": faithfulness(pipe, a.n, a.seed)}
    f = out["faithfulness"]
    print(f"caption faithfulness on {f['captions']} fresh captions: colour {f['colour']:.3f}  shape {f['shape']:.3f}  "
          f"count {f['count']:.3f}  size word {f['size']:.3f}  ({f['seconds_per_image']:.3f} s/image)")
    if a.attention:
        from .localisation import localisation

        out["attention"] = localisation(pipe, a.attention)
        for layer, v in out["attention"]["layers"].items():
            print(f"attention  {layer:<28} noun mass on its object ÷ uniform share: {v:.2f}×")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if a.card:
        print(f"wrote {write_card(out, a)}")


def write_card(out: dict, args) -> str:
    """MODEL_CARD.md beside the weights: how they were trained and what this script measured."""
    from ..pipelines import SHAPES_DIR

    train = json.loads((SHAPES_DIR / "training.json").read_text())
    f = out["faithfulness"]
    lines = [
        "# shapes-world model card", "",
        "A tiny latent diffusion model of Stable Diffusion's classes (AutoencoderKL 64×64 → 16×16×4, "
        "UNet2DConditionModel with cross-attention at 16×16, 8×8 and 4×4, CLIPTextModel trained from scratch, "
        "a word-level CLIPTokenizer, DDIMScheduler with SD's scaled-linear betas), trained on CPU by reprolib.", "",
        "## Training", "",
        *(["- commands (the run was resumed; in order):", *[f"  - `{c}`" for c in train["commands"]]]
          if len(train.get("commands", [])) > 1 else [f"- command: `{train['command']}`"]),
        f"- VAE steps: {train['vae_steps']}, UNet + text-encoder steps done: {train['unet_steps_done']} "
        f"(batch {train['batch']}, seed {train['seed']}, {train['scenes']} scenes); EMA weights shipped",
        f"- final smoothed training loss: {train['final_loss']:.4f}" if train.get("final_loss") else "",
        f"- export: `python -m reprolib.shapes.train --out runs/shapes --export reprolib/shapes/weights`", "",
        "## Measured (`python -m " + "reprolib.shapes.evaluate " + " ".join(
            f"--{k} {v}" for k, v in (("n", args.n), ("attention", args.attention)) if v) + " --card`)", "",
        f"Caption faithfulness on {f['captions']} fresh random captions (25 DDIM steps, CFG 5), by the ruler:", "",
        "| colour present | shape right | object count right | small/big obeyed | s per image (CPU) |",
        "|---|---|---|---|---|",
        f"| {f['colour']:.3f} | {f['shape']:.3f} | {f['count']:.3f} | {f['size']:.3f} | {f['seconds_per_image']:.2f} |",
    ]
    if "attention" in out:
        lines += ["", f"Noun-token attention on its own object ÷ uniform share ({out['attention']['scenes']} "
                  "two- and three-object scenes, mean over steps):", "", "| layer | ratio |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in out["attention"]["layers"].items()]
    path = SHAPES_DIR / "MODEL_CARD.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n")
    return str(path)


if __name__ == "__main__":
    main()
