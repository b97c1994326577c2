"""The attribute-delta bars on the shapes world, measured by the ruler.

    python benchmarks/deltas.py                       # optimization-free size delta
    python benchmarks/deltas.py --learned runs/size   # ... and a learned one beside it (a Delta file or folder)
    python benchmarks/deltas.py --slider-only         # only the slider's frame times

Prints Spearman ρ(α, area of the edited object) over α ∈ [−1, 2] (mean over seeds, and of the mean
curve), and the leak: the bystander's area change ÷ the edited object's, in "a red circle and a blue square".
"""
import argparse
import time
from pathlib import Path

import numpy as np

import reprolib
from reprolib.shapes import probes


def report(name: str, pipe, delta, seeds) -> dict:
    sweep = probes.size_sweep(pipe, delta, "a red circle and a blue square", "circle", target=("red", "circle"),
                              other=("blue", "square"), seeds=seeds)
    solo = probes.size_sweep(pipe, delta, "a red circle", "circle", target=("red", "circle"), seeds=seeds)
    row = {"rho_alone": solo.rho(), "rho_pair": sweep.rho(), "rho_of_mean": sweep.rho_of_mean(), "leak": sweep.leak()}
    print(f"{name:<22} ρ alone {row['rho_alone']:.2f} | ρ in pair {row['rho_pair']:.2f} "
          f"(of mean curve {row['rho_of_mean']:.2f}) | leak to the square {row['leak']:.2f}")
    return row


def slider_timing(pipe, delta, rounds: int = 3) -> None:
    """Seconds for the slider to show a new α (a fresh frame) and one seen before (the cache).

    Side by side, interleaved: frames that start after the shared unedited first steps (the default)
    and frames that recompute them (``share_prefix=False``); both give identical images.
    """
    prompt, spec = "a red circle and a blue square", [(delta, "circle", "size")]
    sliders = {"shared": reprolib.attribute_slider(pipe, prompt, spec, seed=0),
               "recomputed": reprolib.attribute_slider(pipe, prompt, spec, seed=0, share_prefix=False)}
    for s in sliders.values():
        s.render((0.0,))  # warm-up; the shared slider computes its first steps here, once
    fresh = {k: [] for k in sliders}
    cached = []
    alphas = [0.25 * k for k in range(1, 4 * rounds + 1)]
    for alpha in alphas:
        for name, s in sliders.items():
            t = time.perf_counter()
            frame = s.render((alpha,))
            fresh[name].append(time.perf_counter() - t)
        assert np.array_equal(np.asarray(frame), np.asarray(sliders["shared"].render((alpha,))))
        t = time.perf_counter()
        sliders["shared"].render((alpha,))
        cached.append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in fresh.items()}
    print(f"slider, new frame (median of {len(alphas)}): {med['shared']:.2f} s with the first steps shared, "
          f"{med['recomputed']:.2f} s recomputing them (ratio {med['recomputed'] / med['shared']:.2f}×); "
          f"cached frame {1000 * float(np.median(cached)):.1f} ms (bar: new frame ≤ 1 s on 2 CPU cores)")


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
