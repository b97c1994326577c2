"""The attribute-delta bars on the shapes world, measured by the ruler.

    python benchmarks/deltas.py                       # optimization-free size delta
    python benchmarks/deltas.py --learned runs/size   # ... and a learned one beside it (a Delta file or folder)
    python benchmarks/deltas.py --slider-only         # only the slider: frame times and the ideas to cut them

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
from reprolib.device import cpu_threads
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


def _moves(s, values, idle: float, gap: float = 0.0) -> list[float]:
    """Move the slider through ``values`` as a reader would; seconds from each move to its frame on screen.

    A tuple in ``values``: moves that quickly (``gap`` s) one after another, timed from the first move to
    the last one's frame. ``idle``: seconds the reader looks at a frame before the next move.
    """
    out = []
    for v in values:
        moves = v if isinstance(v, tuple) else (v,)
        t = time.perf_counter()
        for m in moves:
            s.sliders[0].value = m  # without background, this renders the frame before it returns
            time.sleep(gap)
        while s.shown != (round(moves[-1], 6),):
            time.sleep(0.005)
        out.append(time.perf_counter() - t)
        time.sleep(idle)
    s.wait()
    return out


def slider_ideas(pipe, delta, idle: float = 2.0) -> None:
    """The ideas for a faster slider, side by side on the same frames (one thread each, as in a notebook).

    - the stop hook that lets a frame be abandoned (it runs the loop under no_grad, not inference_mode);
    - batching: seconds per frame when 2 or 4 frames share one UNet batch (same α here: the bound for
      frames of different α, which would need per-image edits);
    - newest first + neighbours rendered ahead, against one frame per move in the kernel's thread: the time
      from a move to its frame on screen for a reader stepping the slider and looking ``idle`` s at each
      frame, and for three moves in a row (keys pressed 50 ms apart).
    """
    prompt, spec = "a red circle and a blue square", [(delta, "circle", "size")]
    with cpu_threads(1):
        plain = reprolib.attribute_slider(pipe, prompt, spec, seed=0, threads=1)
        plain.render(0.0)
        hooked = {True: [], False: []}
        for k in range(1, 7):
            for stop in (False, True):
                alpha = 0.25 * k + (0.01 if stop else 0.0)  # a fresh frame for each
                t = time.perf_counter()
                plain.render(alpha, stale=(lambda: False) if stop else None)
                hooked[stop].append(time.perf_counter() - t)
        per_frame = {}
        for n in (1, 2, 4):
            t = time.perf_counter()
            for _ in range(2):
                reprolib.generate(pipe, [prompt] * n, seed=[0] * n, edits=[(delta, "circle", 1.0)])
            per_frame[n] = (time.perf_counter() - t) / (2 * n)
    print("slider ideas (one thread):")
    print(
        f"  stop hook: {float(np.median(hooked[True])):.2f} s per frame with it, "
        f"{float(np.median(hooked[False])):.2f} s without"
    )
    print(
        "  batching, seconds per frame (whole loop, no shared prefix): "
        + ", ".join(f"{n}: {v:.2f}" for n, v in per_frame.items())
    )
    steps = [0.25 * k for k in range(1, 7)]
    rows = {}
    for name, kw in {
        "one frame per move (kernel thread)": {"background": False},
        "newest first, no look-ahead": {"prefetch": 0},
        "newest first + 2 steps ahead": {"prefetch": 2},
    }.items():
        s = reprolib.attribute_slider(pipe, prompt, spec, seed=0, threads=1, values=(-1.0, 2.0, 0.25), **kw)
        assert s.widget is not None  # built, with its first frame
        stepping = _moves(s, steps, idle)
        s.cache_clear()
        quick = _moves(s, [(-0.25, -0.5, -0.75)], idle=0.0, gap=0.05)
        rows[name] = (float(np.median(stepping)), quick[0])
    print(
        f"  from a move to its frame on screen (reader looks {idle:g} s at each frame; median of {len(steps)} steps):"
    )
    for name, (step, quick) in rows.items():
        print(f"    {name:<36} one step: {step:.2f} s | three quick moves → last shown: {quick:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--learned", type=Path, default=None)
    p.add_argument("--slider-only", action="store_true", help="only time the slider")
    a = p.parse_args()
    pipe = reprolib.load_pipeline(a.model)
    if a.slider_only:
        slider_timing(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
        return slider_ideas(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
    seeds = range(a.seeds)
    print(f"bars: ρ ≥ 0.9, leak ≤ 0.15   ({a.seeds} seeds, α ∈ [−1, 2])")
    report("optimization-free", pipe, reprolib.contrastive_delta(pipe, "shapes/size"), seeds)
    slider_timing(pipe, reprolib.contrastive_delta(pipe, "shapes/size"))
    if a.learned:
        path = a.learned / "delta.safetensors" if a.learned.is_dir() else a.learned
        report("learned", pipe, reprolib.Delta.load(path), seeds)


if __name__ == "__main__":
    main()
