"""learn_delta's two schemes side by side: UNet evaluations and wall time per micro-step, and the loss reached.

A thin caller of reprolib.learn_delta.cost, which ``python -m reprolib.reproduce --sections learning`` also runs.

    python benchmarks/learn_delta_cost.py                        # the shapes world (needs its weights)
    python benchmarks/learn_delta_cost.py --model tiny-sd15 --height 32 --width 32   # random tiny SD, offline

Both runs use the same seed, so they draw the same τ (noise level) and α (scale) sequences; only how x_t
is obtained differs. "rows" are latents through the UNet (a guided step is 2, the scale batch S), the
measure of compute; "calls" are UNet invocations. The loss is the mean training loss of the last
``--last`` steps, plus the objective on ``--heldout`` fresh draws shared by both deltas (a fair check).

The training losses are not like for like: the cached scheme's comes from the few trajectories it keeps
reusing (in-sample, fewer prompts at a time) and reads lower; the original's from fresh draws. The
held-out loss (the same fresh draws for both deltas) is the comparison to read.

A short run cannot amortise the cached pool's set-up, so ``--project`` (default 1000 steps, the
original's run length) repeats the cached schedule with a stub UNet that returns zeros (counts do not
depend on the UNet's outputs) and takes the original's exact counts from its τ draws: full-run
evaluation counts in a minute or two. With the defaults the whole script takes about 5-8 CPU minutes.
"""

from __future__ import annotations

import argparse
import os

import torch

from reprolib.generate import defaults
from reprolib.learn_delta.cost import projected_counts, scheme_cost
from reprolib.pipelines import load_pipeline


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes", help="shapes, tiny-sd15, tiny-sdxl, sd15, ...")
    ap.add_argument("--prompts", default="shapes/size")
    ap.add_argument("--device"), ap.add_argument("--dtype")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per scheme")
    ap.add_argument("--grad-accum", type=int, default=10)
    ap.add_argument("--scale-batch-size", type=int, default=4)
    ap.add_argument("--num-steps", type=int, help="DDIM steps (default: the model's)")
    ap.add_argument("--guidance-scale", type=float)
    ap.add_argument("--cache-size", type=int, default=8)
    ap.add_argument("--refresh", type=float, default=0.05)
    ap.add_argument("--target", default="x0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last", type=int, default=5, help="final loss = mean of the last k steps")
    ap.add_argument("--heldout", type=int, default=32, help="fresh draws for the shared held-out loss (0: skip)")
    ap.add_argument("--project", type=int, default=1000, help="steps for the counts-only projection (0: skip)")
    ap.add_argument("--height", type=int), ap.add_argument("--width", type=int)
    a = ap.parse_args(argv)

    pipe = load_pipeline(a.model, device=a.device, dtype=a.dtype)
    n_steps, cfg = defaults(pipe)
    n_steps, cfg = a.num_steps or n_steps, cfg if a.guidance_scale is None else a.guidance_scale
    common = dict(
        grad_accum_steps=a.grad_accum,
        scale_batch_size=a.scale_batch_size,
        num_steps=n_steps,
        guidance_scale=cfg,
        cache_size=a.cache_size,
        refresh=a.refresh,
        target=a.target,
        seed=a.seed,
        height=a.height,
        width=a.width,
        progress=not os.environ.get("CI"),
    )
    print(
        f"{a.model} ({a.prompts}): {a.steps} steps × {a.grad_accum} micro-steps, DDIM {n_steps} steps, "
        f"CFG {cfg}, scale batch {a.scale_batch_size}, cache {a.cache_size} refreshing {a.refresh}/step, "
        f"seed {a.seed}; torch threads {torch.get_num_threads()}"
    )
    res = {
        scheme: scheme_cost(pipe, a.prompts, scheme, steps=a.steps, last=a.last, heldout=a.heldout, **common)
        for scheme in ("original", "cached")
    }
    print(
        f"\n{'scheme':<9} {'rows/micro':>10} {'calls/micro':>11} {'grad rows':>9} {'wall s':>8} "
        f"{'s/micro':>8} {'train(last ' + str(a.last) + ')':>14} {'held-out':>9} {'|Δ|':>7}"
    )
    for s, r in res.items():
        print(
            f"{s:<9} {r['rows']:>10.2f} {r['calls']:>11.2f} {r['grad_rows']:>9.2f} {r['wall']:>8.1f} "
            f"{r['wall_micro']:>8.3f} {r['loss']:>14.4g} {r['heldout']:>9.4g} {r['norm']:>7.3g}"
        )
    o, c = res["original"], res["cached"]
    print(
        f"original / cached: {o['rows'] / c['rows']:.2f}× UNet rows, {o['calls'] / c['calls']:.2f}× calls, "
        f"{o['wall'] / c['wall']:.2f}× wall time; held-out loss cached/original "
        f"{c['heldout'] / o['heldout']:.3f} (training loss {c['loss'] / o['loss']:.3f}, in-sample for cached)"
    )
    print(
        f"expected for the original: N + 3 + S = {n_steps + 3 + a.scale_batch_size} rows per micro-step "
        f"on average (2·round(N·τ) + 3 + S each)"
    )

    if a.project:
        proj = projected_counts(pipe, a.prompts, steps=a.project, **common)
        po, pc = proj["original"], proj["cached"]
        print(
            f"\nprojected for a {a.project}-step run (exact counts: cached with a stub UNet, original from "
            f"its τ draws): original {po['rows']:.2f} rows "
            f"/ {po['calls']:.2f} calls per micro-step, cached {pc['rows']:.2f} / {pc['calls']:.2f} → "
            f"{po['rows'] / pc['rows']:.2f}× fewer rows, {po['calls'] / pc['calls']:.2f}× fewer calls"
        )
        res["projected"] = proj
    return res


if __name__ == "__main__":
    main()
