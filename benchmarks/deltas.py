"""The attribute-delta bars on the shapes world, measured by the ruler.

    python benchmarks/deltas.py                       # optimization-free size delta
    python benchmarks/deltas.py --learned runs/size   # ... and a learned one beside it (a Delta file or folder)

Prints Spearman ρ(α, area of the edited object) over α ∈ [−1, 2] (mean over seeds, and of the mean
curve), and the leak: the bystander's area change ÷ the edited object's, in "a red circle and a blue square".
"""
import argparse
import time
from pathlib import Path

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


def slider_timing(pipe, delta) -> None:
    """Seconds for the slider to show a new α (a fresh frame) and one seen before (the cache)."""
    slider = reprolib.attribute_slider(pipe, "a red circle and a blue square", [(delta, "circle", "size")], seed=0)
    slider.render((0.0,))  # warm-up
    fresh, cached = [], []
    for alpha in (0.5, 1.0, 1.5, 2.0):
        t = time.perf_counter()
        slider.render((alpha,))
        fresh.append(time.perf_counter() - t)
        t = time.perf_counter()
        slider.render((alpha,))
        cached.append(time.perf_counter() - t)
    print(f"slider: new frame {sum(fresh) / len(fresh):.2f} s, cached frame {1000 * sum(cached) / len(cached):.1f} ms "
          f"(bar: new frame ≤ 1 s on 2 CPU cores)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--learned", type=Path, default=None)
    a = p.parse_args()
    pipe = reprolib.load_pipeline(a.model)
    seeds = range(a.seeds)
    print(f"bars: ρ ≥ 0.9, leak ≤ 0.15   ({a.seeds} seeds, α ∈ [−1, 2])")
    report("optimization-free", pipe, reprolib.contrastive_delta(pipe, "shapes/size"), seeds)
    slider_timing(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
    if a.learned:
        path = a.learned / "delta.safetensors" if a.learned.is_dir() else a.learned
        report("learned", pipe, reprolib.Delta.load(path), seeds)


if __name__ == "__main__":
    main()
