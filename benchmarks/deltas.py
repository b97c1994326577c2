"""The attribute-delta bars on the shapes world, measured by the ruler.

    python benchmarks/deltas.py                       # optimization-free size delta
    python benchmarks/deltas.py --learned runs/size   # ... and a learned one beside it (a Delta file or folder)
    python benchmarks/deltas.py --slider-only         # only the slider's frame times

Prints Spearman ρ(α, area of the edited object) over α ∈ [−1, 2] (mean over seeds, and of the mean
curve), and the leak: the bystander's area change ÷ the edited object's, in "a red circle and a blue square".
The sweeps are those of ``python -m reprolib.reproduce --sections deltas`` (one seed at a time, the same
functions), so the numbers are the report's; the report adds specificity, composition and the text space.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import reprolib
from reprolib.reproduce.deltas import join, seed_sweeps, sweep_numbers

ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


def report(name: str, pipe, delta, seeds) -> dict:
    per_seed = [seed_sweeps(pipe, {name: delta}, ALPHAS, s) for s in seeds]
    row = sweep_numbers({k: join([p[k] for p in per_seed]) for k in per_seed[0]}, [name])[name]
    subjects = ", ".join(f"{s} {v:.2f}" for s, v in row["rho_per_subject"].items())
    print(
        f"{name:<22} ρ alone {row['rho_alone']:.2f} | ρ in pair {row['rho_pair']:.2f} "
        f"(of mean curve {row['rho_of_mean_pair']:.2f}) | leak to the square {row['leak_pair']:.2f} | ρ per subject "
        f"{subjects}"
    )
    return row


def slider_timing(pipe, delta, rounds: int = 3) -> None:
    """Seconds for the slider to show a new α (a fresh frame) and one seen before (the cache).

    Side by side, interleaved: frames that start after the shared unedited first steps (the default) or
    recompute them (``share_prefix=False``; identical images), on one torch thread or torch's default
    (float sums in another order: images may differ by a grey level or so; the largest difference is printed).
    """
    prompt, spec = "a red circle and a blue square", [(delta, "circle", "size")]
    default = torch.get_num_threads()
    sliders = {
        (shared, threads): reprolib.attribute_slider(pipe, prompt, spec, seed=0, share_prefix=shared, threads=threads)
        for shared in (True, False)
        for threads in (1, default)
    }
    for s in sliders.values():
        s.render((0.0,))  # warm-up; a sharing slider computes its first steps here, once
    fresh = {k: [] for k in sliders}
    cached = []
    alphas = [0.25 * k for k in range(1, 4 * rounds + 1)]
    reference, worst = sliders[(True, 1)], 0
    for alpha in alphas:
        for (shared, threads), s in sliders.items():
            t = time.perf_counter()
            frame = np.asarray(s.render((alpha,))).astype(int)
            fresh[(shared, threads)].append(time.perf_counter() - t)
            same_threads = np.asarray(sliders[(True, threads)].render((alpha,))).astype(int)
            assert np.array_equal(frame, same_threads), "sharing the first steps must not change the image"
            worst = max(worst, int(np.abs(frame - np.asarray(reference.render((alpha,)))).max()))
        t = time.perf_counter()
        reference.render((alpha,))
        cached.append(time.perf_counter() - t)
    print(f"slider, new frame (median of {len(alphas)}; bar ≤ 1 s on 2 CPU cores):")
    for (shared, threads), v in fresh.items():
        print(
            f"  first steps {'shared    ' if shared else 'recomputed'}  {threads} thread{'s' * (threads > 1)}: "
            f"{float(np.median(v)):.2f} s"
        )
    print(
        f"  cached frame: {1000 * float(np.median(cached)):.1f} ms; largest pixel difference between thread "
        f"counts: {worst} of 255"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--learned", type=Path, default=None)
    p.add_argument("--slider-only", action="store_true", help="only time the slider")
    a = p.parse_args()
    pipe = reprolib.load_pipeline(a.model)
    if a.slider_only:
        return slider_timing(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
    seeds = range(a.seeds)
    print(f"bars: ρ ≥ 0.9, leak ≤ 0.15   ({a.seeds} seeds, α ∈ [−1, 2])")
    report("optimization-free", pipe, reprolib.contrastive_delta(pipe, "shapes/size"), seeds)
    slider_timing(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
    if a.learned:
        path = a.learned / "delta.safetensors" if a.learned.is_dir() else a.learned
        report("learned", pipe, reprolib.Delta.load(path), seeds)


if __name__ == "__main__":
    main()
