"""Chapter 05's bars: inversion of scenes the model never generated, then size edits on them.

    python benchmarks/inversion.py                          # 32 scenes, every method; 32 edited scenes
    python benchmarks/inversion.py --scenes 8 --edits 4     # a quick look
    python benchmarks/inversion.py --json figures/inversion.json
    python benchmarks/inversion.py --model runs/shapes_v3g_export --scenes 0   # a candidate model's edits
    python benchmarks/inversion.py --scenes 0 --edit-iterations 0 --delays 0.1 0.2   # the edit delay, chosen
    python benchmarks/inversion.py --scenes 0 --edit-iterations 0 --blend off 0.3 0.5 0.7   # local blend, chosen
    python benchmarks/inversion.py --scenes 0 --edit-iterations 0 --fade-in 0 0.16 --subjects shrinkable any

Reconstruction (each method side by side): the ruler finds the same objects (colour and shape), mean mask
IoU with the original, PSNR; the VAE alone (encode, decode) is the ceiling. Edits (exact inversion, with and
without fixed-point iterations, which chose its default): Spearman ρ(α, edited object's area) per curve,
the other object's area change ÷ the edited one's, mean |Δ pixel| away from the edited object. Times as
ratios to one plain generation of the same caption, timed beside each.
"""

import argparse
import itertools
import json

import numpy as np
import torch

import reprolib
from reprolib import checks
from reprolib.contrastive import contrastive_delta
from reprolib.evaluation import inversion as probe
from reprolib.inversion import ITERATIONS

METHODS = {"ddim": {"method": "ddim"}, "fixed-point": {"method": "fixed-point"}, "exact": {"method": "exact"}}


def reconstruction_table(pipe, scenes, methods) -> dict:
    print(f"reconstruction of {len(scenes)} rendered scenes (fixed-point iterations per step: {ITERATIONS})")
    print(f"{'method':<13}{'same objects':>14}{'mean IoU':>10}{'PSNR dB':>9}{'time ÷ generation':>19}")
    rows = {}
    v = probe.vae_ceiling(pipe, scenes).summary()
    rows["vae only"] = v
    print(f"{'vae only':<13}{v['same_objects']:>14.3f}{v['mean_iou']:>10.3f}{v['psnr_db']:>9.1f}{'—':>19}")
    for name in methods:
        r = rows[name] = probe.reconstruction(pipe, scenes, **METHODS[name]).summary()
        print(f"{name:<13}{r['same_objects']:>14.3f}{r['mean_iou']:>10.3f}{r['psnr_db']:>9.1f}{r['time_ratio']:>19.2f}")
    return rows


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _unbounded(leaks: np.ndarray) -> str:
    n = int(np.isinf(leaks).sum())
    return (
        f"; {n} edit(s) left the subject's area as it was and changed the other's (leak inf, not in the mean)"
        if n
        else ""
    )


def edit_table(
    pipe, scenes, iterations: int, delay: float = probe.EDIT_DELAY, blend=None, fade_in=None, reach=None
) -> dict:
    size = contrastive_delta(pipe, "shapes/size")
    curves = [
        probe.edit_curve(
            pipe, s, size, iterations=iterations, delay=delay, local_blend=blend, fade_in=fade_in, reach=reach
        )
        for s in scenes
    ]
    plain = sum(c.seconds["plain"] for c in curves)
    inversion = sum(c.seconds["inversion"] for c in curves) / plain
    frame = sum(c.seconds["frame"] for c in curves) / plain
    rhos = np.array([c.rho for c in curves])
    leaks = np.array([c.leak for c in curves])
    outside = np.array([max(c.outside) for c in curves])
    intact = np.array([c.intact_share for c in curves])
    print(
        f"size edits on {len(scenes)} inverted two-object scenes (exact inversion, {iterations} fixed-point "
        f"iterations; delay {delay}; fade-in {'default' if fade_in is None else fade_in}; local blend {blend}; "
        f"edit reaches {reach or 'default'}), "
        f"α ∈ {list(probe.ALPHAS)}"
    )
    share, undefined = np.mean(rhos >= 0.95), int(np.isnan(rhos).sum())
    print(
        f"  ρ(α, area) per curve: min {np.nanmin(rhos):.3f}  mean {_finite_mean(rhos):.3f}  (share ≥ 0.95: {share:.2f})"
        # a curve with no ρ (too few frames, or a flat area) fails the bar; it is not left out
        + (f"; {undefined} without ρ (subject in < 3 frames, or a flat area), counted as failing" if undefined else "")
    )
    if share < 1:
        print(f"    curves under 0.95: {[i for i, r in enumerate(rhos) if not r >= 0.95]}")
    print(
        f"  other object's change ÷ edited one's: max {leaks.max():.3f}  mean {_finite_mean(leaks):.3f}  "
        f"(share ≤ 0.15: {np.mean(leaks <= 0.15):.2f})" + _unbounded(leaks)
    )
    zero = list(probe.ALPHAS).index(0.0)
    grow = np.array([c.target[-1] / max(c.target[zero], 1.0) for c in curves])
    shrink = np.array([c.target[0] / max(c.target[zero], 1.0) for c in curves])
    print(
        f"  the edit's strength, subject's area ÷ its area at α = 0 (median over curves): "
        f"α = {probe.ALPHAS[0]:g}: {np.median(shrink):.2f}, α = {probe.ALPHAS[-1]:g}: {np.median(grow):.2f}"
    )
    print(f"  frames intact (subject one object, other present): {intact.mean():.2f}  (worst curve {intact.min():.2f})")
    print(f"  mean |Δ pixel| away from the edited object (worst α): mean {outside.mean():.2f}  max {outside.max():.2f}")
    print(f"  time ÷ one plain generation (each timed beside it): inversion {inversion:.2f}, edited frame {frame:.2f}")
    return {
        "scenes": len(scenes),
        "captions": [c.caption for c in curves],
        "rho": rhos.tolist(),
        "leak": leaks.tolist(),
        "outside_mad": outside.tolist(),
        "intact": intact.tolist(),
        "area_ratio_lowest_alpha": shrink.tolist(),
        "area_ratio_highest_alpha": grow.tolist(),
        "inversion_time_ratio": inversion,
        "frame_time_ratio": frame,
    }


def _blend(text: str):
    named = {"off": False, "on": True, "anchored": "anchored"}
    return named[text] if text in named else float(text)


def _reach(text: str):
    if text != "default" and text not in checks.REACHES:
        raise argparse.ArgumentTypeError(f"pick default or one of {list(checks.REACHES)}, not {text!r}")
    return None if text == "default" else text


def _fade(text: str):
    return None if text == "default" else float(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="shapes, or a shapes-world pipeline folder")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--edits", type=int, default=32, help="two-object scenes to edit (0: none)")
    p.add_argument(
        "--edit-seed",
        type=int,
        default=probe.EDIT_SEED,
        help=f"the edited scenes' seed: {probe.EDIT_SEED} is the bar's; choose settings on another (a validation set)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--edit-iterations", nargs="+", type=int, default=[0, 4], help="exact inversion's, side by side")
    p.add_argument("--delays", nargs="+", type=float, default=[probe.EDIT_DELAY], help="edit delays, side by side")
    p.add_argument(
        "--blend",
        nargs="+",
        type=_blend,
        default=[None],
        help="local blend settings, side by side: off, on (the default threshold), anchored, or a threshold",
    )
    p.add_argument(
        "--fade-in",
        nargs="+",
        type=_fade,
        default=[None],
        help="fractions of the steps over which α rises after the delay, side by side (default: the library's)",
    )
    p.add_argument(
        "--reach",
        nargs="+",
        default=[None],
        type=_reach,
        help="what cross-attention reads the edited tokens for (Edit.reach), side by side: default (the library's), "
        "keys+values (the paper) or values (keys from the unedited tokens)",
    )
    p.add_argument(
        "--subjects",
        nargs="+",
        default=["shrinkable"],
        choices=probe.SUBJECTS,
        help="edited subjects: shrinkable (above the small size bin, the bar's) or any size, side by side",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write every number to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    a = p.parse_args(argv)
    checks.integer(a.edit_seed, "--edit-seed", minimum=0)
    if a.json:  # before the half hour of work, not after it
        checks.output_path(a.json, "--json", overwrite=a.overwrite)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = reprolib.load_pipeline(a.model)
    scenes = probe.held_out_scenes(a.scenes)
    out = {"reconstruction": reconstruction_table(pipe, scenes, a.methods)} if a.scenes else {}
    if a.edits:
        out["edits"] = {}
        for subjects in a.subjects:
            other = "" if a.edit_seed == probe.EDIT_SEED else f" (validation seed {a.edit_seed})"
            print(f"subjects: {subjects}{other}")
            scenes = probe.edit_scenes(a.edits, seed=a.edit_seed, subjects=subjects)
            for k, d, b, f, r in itertools.product(a.edit_iterations, a.delays, a.blend, a.fade_in, a.reach):
                name = f"subjects={subjects} iterations={k} delay={d}" + ("" if b is None else f" blend={b}")
                name += ("" if f is None else f" fade_in={f}") + ("" if r is None else f" reach={r}")
                out["edits"][name] = edit_table(pipe, scenes, k, d, b, f, r)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    raise SystemExit(checks.run_cli(main, prog="python benchmarks/inversion.py"))
