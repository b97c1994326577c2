"""Issue #13's bars on one shapes-world model, measured in one run and printed as one table.

    python benchmarks/shapes_bars.py --model runs/shapes_b2o_export                 # every bar, full size
    python benchmarks/shapes_bars.py --model DIR --learned runs/learned/delta.safetensors   # + the learned delta
    python benchmarks/shapes_bars.py --model DIR --json bars.json --overwrite      # the numbers too

Each row is a bar of the issue with what this model measured and whether it is met:
- caption faithfulness on ``--captions`` fresh captions plus ``--more`` from another seed (count's margin needs
  both: one standard error on 2,400 captions is about 0.004);
- the size delta's leak on every subject/bystander shape pair at α = 1.5, beside a blue bystander (the colour
  furthest from the red subject) and a yellow one (the nearest; the worse is the bar), and the bystander kept
  under size +2 and colour +1 on the subject (``--seeds`` each), with the bystander in each colour the edit does
  not involve (green and yellow; the worst is the bar), and beside it the unedited model asked for the green
  bystander's edited picture ("a green square and a blue square", the composition's ceiling). The edits are
  composed as the shapes world composes them (``--reach``, ``--colour-delay``): size on cross-attention's values
  alone at the paper's delay, colour on keys and values from the first step (this world settles colour within
  the paper's delay);
- a noun's attention on its object ÷ uniform in every 16×16 and 8×8 cross-attention layer (≥ 3 in the layers
  layout guidance uses);
- backward layout guidance: in box, and its time ÷ unguided (``--layout-seeds``, three cases);
- what must not fall back: the size delta's ρ(α, area) alone and beside a square, and its leak there (the bars of
  benchmarks/deltas.py), for the contrastive delta and, with ``--learned``, a learned one.
Not bars, printed beside them: how far the size delta grows its subject at α = 1.5 (a delta can be monotone and
specific yet too weak to see) and the seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from reprolib import checks
from reprolib.attention import default_layers
from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.delta import Delta
from reprolib.evaluation import faithfulness as faith
from reprolib.evaluation.binding import near_pairs
from reprolib.evaluation.layout import DEFAULT_CASES, layout_probe, methods
from reprolib.evaluation.localisation import localisation
from reprolib.evaluation.specificity import COMPOSED_COLOUR_DELAY, COMPOSED_REACH, edit_arguments, specificity
from reprolib.layout import LayoutConfig
from reprolib.pipelines import load_pipeline
from reprolib.reproduce.deltas import join, seed_sweeps, sweep_numbers
from reprolib.reproduce.readme import short

LAYOUT_CASES = ("circle top-left", "circle bottom-right", "pair: both boxed")
ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
MORE_SEED = 20_011  # the 1,800 captions of the checkpoints' READMEs


def faithfulness(pipe, groups: list[tuple[int, int]]) -> dict:
    """Fractions over every caption of ``groups`` ((n, seed) pairs), summed before dividing."""
    summed, n = dict.fromkeys(faith.KEYS, 0), 0
    t0 = time.perf_counter()
    for count, seed in groups:
        if count:
            for caps, seeds in faith.batches(count, seed):
                for k, v in faith.totals(pipe, caps, seeds).items():
                    summed[k] += v
            n += count
    return {**faith.fractions(summed, n), "seconds_per_image": (time.perf_counter() - t0) / n}


def _seeds_behind(*measured: dict) -> str:
    """The worst leak pair's seeds that made it (``Sweep.seeds_behind_leak``), e.g. "2; 0 of 12 (square → triangle,
    yellow)": a few seeds is a rare swap or merge, most of them a drift of every picture."""
    colour, spec = max(zip(("blue", "yellow"), measured), key=lambda cs: cs[1]["worst_leak"])
    pair, p = max(spec["pairs"].items(), key=lambda kv: kv[1]["leak"])
    moved, lost = p["seeds_moved_lost"]
    return f"{moved}; {lost} of {spec['seeds']} ({pair.replace(' -> ', ' → ')}, {colour})"


def rows(m: dict) -> list[tuple[str, str, bool | None]]:
    """(bar, measured, met) for every bar in ``m`` (the script's numbers); met is None for a printed figure."""
    f, spec, loc, lay = m["faithfulness"], m["specificity"], m["localisation"], m["layout"]
    yellow = m["leak_yellow"]
    leak = float(np.max([spec["worst_leak"], yellow["worst_leak"]]))  # NaN (a bystander never found) stays NaN
    out = [
        (f"colour ≥ 0.97 ({f['captions']} captions)", f"{f['colour']:.3f}", f["colour"] >= 0.97),
        ("shape ≥ 0.95", f"{f['shape']:.3f}", f["shape"] >= 0.95),
        ("count ≥ 0.95", f"{f['count']:.3f}", f["count"] >= 0.95),
        ("small/big ≥ 0.95", f"{f['size']:.3f}", f["size"] >= 0.95),
        (
            f"size-delta leak ≤ 0.10, worst of 9 pairs × 2 bystander colours ({spec['seeds']} seeds)",
            f"{leak:.3f}",
            leak <= 0.10,
        ),
        ("(figure) size-delta leak, blue bystander: worst of 9", f"{spec['worst_leak']:.3f}", None),
        ("(figure) size-delta leak, yellow bystander: worst of 9", f"{yellow['worst_leak']:.3f}", None),
        ("(figure) the worst pair's seeds: bystander moved; subject lost", _seeds_behind(spec, yellow), None),
        (
            f"size +2 & colour +1: bystander kept ≥ 0.90, worst of 9 × {len(spec['kept_by_colour'])} colours",
            f"{spec['worst_kept']:.2f}",
            spec["worst_kept"] >= 0.90,
        ),
    ]
    r, cd = spec["reach"], spec["colour_delay"]
    when = "the library's delay" if cd is None else f"{cd:g} of the steps"
    out.append(("(figure) edits: size reaches / colour reaches, from", f"{r['size']} / {r['colour']}, {when}", None))
    for colour, by in spec["kept_by_colour"].items():
        out.append((f"(figure) bystander kept, {colour} bystander: worst of 9", f"{min(by.values()):.2f}", None))
    near = m["near_pairs"]  # the green bystander's ceiling: the model asked for the edited picture itself
    out.append(("(figure) unedited 'a green X and a blue X': both drawn, least of 6", f"{near['least']:.2f}", None))
    # a bystander kept by an edit that did nothing is not composition: in the same pictures the subject turns blue
    edited, colours = spec["worst_edited"], len(spec["edited_by_colour"])
    out.append((f"size +2 & colour +1: subject turned blue ≥ 0.90 (the edit took), least of 9 × {colours}",
                f"{edited:.2f}", edited >= 0.90))  # fmt: skip
    for layer, v in loc["layers"].items():
        if "(16x16)" in layer or "(8x8)" in layer:
            need = 3.0 if layer.split(" (")[0] in loc["guided"] else 2.0
            out.append((f"attention ÷ uniform ≥ {need:g}: {short(layer)}", f"{v:.2f}", v >= need))
    b = lay["backward"]
    out.append(("layout: backward in box ≥ 0.95", f"{b['in_box']:.2f}", b["in_box"] >= 0.95))
    out.append(("layout: backward time ÷ unguided ≤ 1.5", f"{b['ratio']:.2f}", b["ratio"] <= 1.5))
    for name, d in m["deltas"].items():
        out.append((f"{name} size delta: ρ alone ≥ 0.9", f"{d['rho_alone']:.2f}", d["rho_alone"] >= 0.9))
        out.append((f"{name} size delta: ρ beside a square ≥ 0.9", f"{d['rho_pair']:.2f}", d["rho_pair"] >= 0.9))
        out.append((f"{name} size delta: leak to the square ≤ 0.15", f"{d['leak_pair']:.2f}", d["leak_pair"] <= 0.15))
    growth = [p["growth_px"] for p in spec["pairs"].values()]
    out.append(("(figure) subject's growth at α = 1.5, px, min–max of 9", f"{min(growth):.0f}–{max(growth):.0f}", None))
    out.append(("(figure) seconds per image", f"{f['seconds_per_image']:.3f}", None))
    return out


def table(r: list[tuple[str, str, bool | None]]) -> str:
    width = max(len(bar) for bar, _, _ in r)
    lines = [f"{'bar':<{width}}  {'measured':>10}  met"]
    lines += [f"{bar:<{width}}  {v:>10}  {'' if ok is None else ('yes' if ok else 'NO')}" for bar, v, ok in r]
    missed = [bar for bar, _, ok in r if ok is False]
    lines.append("every bar met" if not missed else f"{len(missed)} bar(s) missed: " + "; ".join(missed))
    return "\n".join(lines)


def measure(pipe, a, learned: Delta | None) -> dict:
    """Every number of the table."""
    say = print if a.verbose else (lambda *_: None)
    size, colour = contrastive_delta(pipe, "shapes/size"), contrastive_delta(pipe, "shapes/colour")
    m = {"model": a.model}
    say("faithfulness ...")
    m["faithfulness"] = faithfulness(pipe, [(a.captions, faith.EVAL_SEED), (a.more, MORE_SEED)])
    say("specificity ...")
    m["specificity"] = specificity(
        pipe, size, colour, seeds=range(a.seeds), bystander_colours=("green", "yellow"), reach=tuple(a.reach),
        colour_delay=a.colour_delay,
    ).numbers()  # fmt: skip
    m["leak_yellow"] = specificity(
        pipe, size, None, seeds=range(a.seeds), colours=("red", "yellow"), reach=tuple(a.reach)
    ).numbers()
    m["near_pairs"] = near_pairs(pipe, range(a.seeds))
    say("localisation ...")
    m["localisation"] = {**localisation(pipe, a.scenes), "guided": default_layers(pipe.unet)}
    say("layout ...")
    cases = [c for c in DEFAULT_CASES if c.name in LAYOUT_CASES]
    configs = methods(loss_threshold=a.threshold)
    configs = {k: configs[k] for k in ("unguided", "backward")}
    m["layout"] = layout_probe(pipe, cases, range(a.layout_seeds), configs=configs).summary()
    say("size deltas ...")
    deltas = {"contrastive": size, **({"learned": learned} if learned is not None else {})}
    per_seed = [seed_sweeps(pipe, deltas, ALPHAS, s) for s in range(a.delta_seeds)]
    sweeps = {k: join([p[k] for p in per_seed]) for k in per_seed[0]}
    m["deltas"] = sweep_numbers(sweeps, list(deltas))
    return m


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="shapes (the shipped weights) or an exported pipeline folder")
    p.add_argument("--captions", type=int, default=600, help="fresh captions from the card's seed")
    p.add_argument("--more", type=int, default=1800, help=f"more captions, from seed {MORE_SEED} (0: none)")
    p.add_argument("--seeds", type=int, default=12, help="seeds per shape pair (leak, composition)")
    p.add_argument("--scenes", type=int, default=32, help="scenes for attention localisation")
    p.add_argument("--layout-seeds", type=int, default=8)
    p.add_argument("--threshold", type=float, default=LayoutConfig.loss_threshold, help="layout's energy threshold")
    p.add_argument("--delta-seeds", type=int, default=8, help="seeds per α sweep of the size deltas")
    edit_arguments(p, reach=COMPOSED_REACH, colour_delay=COMPOSED_COLOUR_DELAY, scope="the leak and composition rows")
    p.add_argument("--learned", type=Path, default=None, help="a learned size delta to hold to the same bars")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write every number here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--verbose", action="store_true", help="say which measurement is running")
    a = p.parse_args(argv)
    for flag, least in (("captions", 1), ("more", 0), ("seeds", 1), ("scenes", 1), ("layout_seeds", 1)):
        checks.integer(getattr(a, flag), "--" + flag.replace("_", "-"), minimum=least)
    checks.integer(a.delta_seeds, "--delta-seeds", minimum=1)
    checks.number(a.colour_delay, "--colour-delay", optional=False, low=0.0, high=1.0)
    if a.json:  # before the work, not after it
        checks.output_path(a.json, "--json", overwrite=a.overwrite)
    learned = Delta.load(a.learned) if a.learned else None
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model)
    pipe.set_progress_bar_config(disable=True)
    if learned is not None:
        learned.check(TextConditioning(pipe))  # made with this model's text encoder, or a clear error
    m = measure(pipe, a, learned)
    r = rows(m)
    m["met"] = {bar: ok for bar, _, ok in r if ok is not None}
    print(table(r))
    if a.json:
        a.json.write_text(json.dumps(m, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return m


def cli(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(checks.run_cli(cli, prog="python benchmarks/shapes_bars.py"))
