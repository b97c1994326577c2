"""The designed differences from the original code, measured on the shapes world (issue #17).

    python benchmarks/differences.py --seeds 8

1. Layout energy: reprolib averages attention over heads and tokens before the in-box share and weights
   edge cells by area; the official code takes the share per head and token and rounds box edges down.
   Printed: reprolib's mean energy and the mean |difference| of each official choice, for a box on cell
   edges (top-left quadrant) and one that is not (centre-left).
2. Which token the optimization-free delta reads: the subject's tokens (reprolib) or the prompt's last
   token (the original), on a config whose phrases end in "... and a blue square": circle area growth
   at α = 1.5 on "a red circle".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from reprolib.contrastive import contrastive_delta
from reprolib.evaluation.deltas import size_sweep
from reprolib.evaluation.energy_variants import energy_variants
from reprolib.pipelines import load_pipeline
from reprolib.prompts import load_config

BOXES = {"top-left (on cell edges)": (0.0, 0.0, 0.5, 0.5), "centre-left (off cell edges)": (0.05, 0.25, 0.55, 0.75)}
PAIR_CONFIG = {
    "tag": "shapes/size-pair",
    "prefixes": ["a"],
    "prompts": [
        {
            "prompt_target": "red circle and a blue square",
            "prompt_positive": "big red circle and a blue square",
            "prompt_negative": "small red circle and a blue square",
            "pattern_target": "circle",
        }
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_pipeline("shapes")
    print("layout energy on the guided layers, steps 0-9 of 25, unguided 'a red circle':")
    print(f"{'box':<30}{'reprolib E':>12}{'|Δ| per head':>14}{'|Δ| int() edges':>17}{'|Δ| official':>14}")
    for name, box in BOXES.items():
        v = energy_variants(pipe, "a red circle", {"red circle": box}, seeds=range(a.seeds))
        assert v["check"] < 1e-6, "the written-out energy must equal reprolib.layout.layout_energy"
        print(f"{name:<30}{v['reprolib']:12.4f}{v['per head']:14.4f}{v['int() edges']:17.4f}{v['official']:14.4f}")
    cfg = load_config(PAIR_CONFIG)
    print(
        "\noptimization-free size delta from 'big/small red circle and a blue square', applied to 'circle' "
        f"of 'a red circle' ({a.seeds} seeds):"
    )
    for token in ("subject", "last"):
        d = contrastive_delta(pipe, cfg, token=token)
        sw = size_sweep(pipe, d, "a red circle", "circle", ("red", "circle"), alphas=(0.0, 1.5), seeds=range(a.seeds))
        grow = float(np.nanmean(sw.target[1]) - np.nanmean(sw.target[0]))
        print(
            f"token={token!r:<10} |Δ| = {d.norm():.3f}   circle area {np.nanmean(sw.target[0]):.0f} → "
            f"{np.nanmean(sw.target[1]):.0f} px ({grow:+.0f})"
        )


if __name__ == "__main__":
    main()
