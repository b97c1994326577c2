"""``python -m reprolib.evaluation``: measure the shapes-world model (faithfulness, attention localisation).

    python -m reprolib.evaluation --n 200                     # faithfulness on 200 fresh captions
    python -m reprolib.evaluation --n 200 --attention 32      # + attention localisation on 32 scenes
    python -m reprolib.evaluation --n 200 --attention 32 --card   # + MODEL_CARD.md of the shipped weights
"""
from __future__ import annotations

import argparse
import json
import sys

from ..pipelines import load_pipeline
from .card import write_card
from .faithfulness import EVAL_SEED, faithfulness
from .localisation import localisation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reprolib.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--attention", type=int, default=0, help="also measure attention localisation on N scenes")
    p.add_argument("--json", default=None, help="write the figures here too")
    p.add_argument("--card", action="store_true", help="write MODEL_CARD.md beside the shipped weights")
    a = p.parse_args(argv)
    if a.card and a.model != "shapes":
        p.error(f"--card describes the shipped shapes-world weights; it cannot be written for --model {a.model}")
    pipe = load_pipeline(a.model)
    out = {"faithfulness": faithfulness(pipe, a.n, a.seed)}
    f = out["faithfulness"]
    print(f"caption faithfulness on {f['captions']} fresh captions: colour {f['colour']:.3f}  shape {f['shape']:.3f}  "
          f"count {f['count']:.3f}  size word {f['size']:.3f}  ({f['seconds_per_image']:.3f} s/image)")
    if a.attention:
        out["attention"] = localisation(pipe, a.attention)
        for layer, v in out["attention"]["layers"].items():
            print(f"attention  {layer:<28} noun mass on its object ÷ uniform share: {v:.2f}×")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if a.card:
        print(f"wrote {write_card(out, a)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
