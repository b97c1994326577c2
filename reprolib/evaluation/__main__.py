"""``python -m reprolib.evaluation``: measure the shapes-world model (faithfulness, attention localisation).

python -m reprolib.evaluation --n 200                     # faithfulness on 200 fresh captions
python -m reprolib.evaluation --n 200 --attention 32      # + attention localisation on 32 scenes
python -m reprolib.evaluation --n 200 --attention 32 --card   # + MODEL_CARD.md of the shipped weights
python -m reprolib.evaluation --n 0 --specificity 12      # size-delta leak for every shape pair, 12 seeds
python -m reprolib.evaluation --n 0 --specificity 12 --bystander-colours green yellow   # both bystander colours
python -m reprolib.evaluation --n 0 --specificity 12 --leak-bystander yellow   # leak beside the colour nearest red
python -m reprolib.evaluation --n 0 --specificity 12 --size-delta runs/learned_size/delta.safetensors   # a learned one
python -m reprolib.evaluation --n 0 --order-bias 3000 --order-mix v2   # does word order say size? (no images)
python -m reprolib.evaluation --n 0 --near-pairs 48       # "a green square and a blue square": both drawn?
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import checks
from ..conditioning import TextConditioning
from ..contrastive import contrastive_delta
from ..delta import Delta
from ..pipelines import load_pipeline
from ..shapes import world
from .binding import format_near_pairs, near_pairs
from .card import write_card
from .faithfulness import EVAL_SEED, faithfulness
from .localisation import localisation
from .order import format_order_bias, order_bias
from .specificity import PAPER_REACH, edit_arguments, specificity


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reprolib.evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--attention", type=int, default=0, help="also measure attention localisation on N scenes")
    p.add_argument(
        "--specificity",
        type=int,
        default=0,
        metavar="SEEDS",
        help="also measure subject specificity of the size delta (and size+colour composition)",
    )
    p.add_argument(
        "--size-delta",
        default=None,
        metavar="FILE",
        help="with --specificity: measure this size delta (e.g. a learned one) instead of the contrastive one",
    )
    p.add_argument(
        "--bystander-colours",
        nargs="+",
        default=["green"],
        choices=["green", "yellow"],
        help="with --specificity: the composition prompt's bystander in each of these colours (the worst is the "
        "pair's figure); green is nearest the edit's blue",
    )
    p.add_argument(
        "--leak-bystander",
        default="blue",
        choices=["blue", "green", "yellow"],
        help="with --specificity: the leak prompts' bystander colour (the subject is red; blue is the furthest "
        "from it, yellow the nearest)",
    )
    edit_arguments(p, reach=PAPER_REACH, colour_delay=None, scope="with --specificity")
    p.add_argument(
        "--order-bias",
        type=int,
        default=0,
        metavar="CAPTIONS",
        help="also measure how the objects' order in captions goes with their size, and the size delta's "
        "cosine with 'a later object' in the encoder (text only, no images)",
    )
    p.add_argument(
        "--order-mix",
        default=None,
        choices=sorted(world.MIXES),
        help="with --order-bias: the captions' scene mix (default v1, the shipped model's)",
    )
    p.add_argument(
        "--near-pairs",
        type=int,
        default=0,
        metavar="SEEDS",
        help="also measure how often the unedited model draws both objects of 'a green X and a blue X' (every "
        "shape, both orders): the ceiling of the composed edit, which turns its subject blue beside green",
    )
    p.add_argument("--json", default=None, help="write the figures here too")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--card", action="store_true", help="write MODEL_CARD.md beside the shipped weights")
    return p


def main(argv=None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    for flag in ("n", "attention", "specificity", "order_bias", "near_pairs"):
        checks.integer(getattr(a, flag), f"--{flag.replace('_', '-')}", minimum=0)
    if not (a.n or a.attention or a.specificity or a.order_bias or a.near_pairs):
        p.error(
            "nothing to measure: give --n, --attention, --specificity, --order-bias or --near-pairs a positive number"
        )
    if a.size_delta and not a.specificity:
        p.error("--size-delta is measured by --specificity: give --specificity SEEDS too")
    if tuple(a.reach) != PAPER_REACH and not a.specificity:
        p.error("--reach is measured by --specificity: give --specificity SEEDS too")
    if a.colour_delay is not None and not a.specificity:
        p.error("--colour-delay is measured by --specificity: give --specificity SEEDS too")
    checks.number(a.colour_delay, "--colour-delay", low=0.0, high=1.0)
    if a.order_mix and not a.order_bias:
        p.error("--order-mix picks the captions of --order-bias: give --order-bias CAPTIONS too")
    size = Delta.load(a.size_delta) if a.size_delta else None  # a missing or unreadable file fails before loading
    if a.json:
        checks.output_path(a.json, "--json", overwrite=a.overwrite)
    if a.card and a.model != "shapes":
        p.error(f"--card describes the shipped shapes-world weights; it cannot be written for --model {a.model}")
    if a.card and not (a.n and a.attention):
        p.error("--card needs --n and --attention: the card reports both")
    pipe = load_pipeline(a.model)
    out = {}
    if a.n:
        out["faithfulness"] = f = faithfulness(pipe, a.n, a.seed)
        print(
            f"caption faithfulness on {f['captions']} fresh captions: colour {f['colour']:.3f}  "
            f"shape {f['shape']:.3f}  count {f['count']:.3f}  size word {f['size']:.3f}  "
            f"({f['seconds_per_image']:.3f} s/image)"
        )
        by = "  ".join(f"{k} object(s): {right}/{asked}" for k, (asked, right) in f["count_by_objects"].items())
        wrong = f["captions"] - sum(right for _, right in f["count_by_objects"].values())
        more = f["miscounts_with_more"]
        print(f"  count right by objects asked: {by}; miscounts that find more than asked: {more}/{wrong}")
    if a.attention:
        out["attention"] = localisation(pipe, a.attention)
        for layer, v in out["attention"]["layers"].items():
            print(f"attention  {layer:<28} noun mass on its object ÷ uniform share: {v:.2f}×")
        print("what an object's pixels attend to, from the edits' delay on (a values-only edit moves a pixel by it):")
        for layer, r in out["attention"]["reading"].items():
            print(f"reading    {layer:<28} own noun {r['own']:.3f}  another object's noun {r['other']:.3f}")
    if a.specificity:
        if size is not None:
            size.check(TextConditioning(pipe))  # made with this model's text encoder, or a clear error
        spec = specificity(
            pipe,
            size if size is not None else contrastive_delta(pipe, "shapes/size"),
            contrastive_delta(pipe, "shapes/colour"),
            seeds=range(a.specificity),
            bystander_colours=tuple(a.bystander_colours),
            colours=("red", a.leak_bystander),
            reach=tuple(a.reach),
            colour_delay=a.colour_delay,
        )
        print(spec)
        out["specificity"] = spec.numbers()
    if a.order_bias:
        mix = a.order_mix or "v1"
        out["order_bias"] = order_bias(pipe, contrastive_delta(pipe, "shapes/size"), a.order_bias, mix=mix)
        print(format_order_bias(out["order_bias"]))
    if a.near_pairs:
        out["near_pairs"] = near_pairs(pipe, range(a.near_pairs))
        print(format_near_pairs(out["near_pairs"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if a.card:
        print(f"wrote {write_card(out, a)}")
    return 0


if __name__ == "__main__":
    sys.exit(checks.run_cli(main, prog="python -m reprolib.evaluation"))
