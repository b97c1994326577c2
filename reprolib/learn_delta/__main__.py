"""Command line: ``python -m reprolib.learn_delta --help``.

Several ``--prompts`` learn one delta each, into ``--out``/<tag>; under ``accelerate launch`` the configs are shared
between the processes (:class:`reprolib.reproduce.Workers`), each process learning its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import checks
from ..delta import Delta
from ..pipelines import load_pipeline
from ..prompts import load_config
from ..reproduce.distribute import Workers
from .loop import SCHEMES, learn_delta
from .objective import TARGETS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m reprolib.learn_delta", description="Learn an attribute delta by Baumann et al.'s optimization."
    )
    ap.add_argument(
        "--model",
        default="shapes",
        help="shapes, sd15, sd21, sdxl, a hub id or folder; tiny-sd15 / tiny-sd21 / tiny-sdxl for offline checks",
    )
    ap.add_argument(
        "--prompts",
        required=True,
        nargs="+",
        help="prompt config(s): shipped name (people/age) or YAML path; several learn one delta each",
    )
    ap.add_argument(
        "--out",
        required=True,
        help="output folder (config.json, checkpoints/, delta.safetensors); with several --prompts, one subfolder "
        "per config, named by its tag (people/age → people_age)",
    )
    ap.add_argument("--device"), ap.add_argument("--dtype", help="fp32, fp16 or bf16 (default: by device)")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--scheme", choices=SCHEMES, default="cached")
    ap.add_argument("--target", choices=TARGETS, default="x0")
    ap.add_argument("--grad-accum", type=int, default=10)
    ap.add_argument("--scale-batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to zero")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="DDIM steps for sampling x_t (default: the model's)")
    ap.add_argument("--guidance-scale", type=float)
    ap.add_argument("--height", type=int, help="image height for x_t (default: the model's)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--init", help="start from this delta (.safetensors or original .pt)")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--cache-size", type=int, default=8)
    ap.add_argument("--refresh", type=float, default=0.05)
    ap.add_argument("--no-resume", action="store_true", help="start over instead of continuing")
    ap.add_argument("--overwrite", action="store_true", help="replace another run's checkpoints in --out")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the UNet (default: on for CUDA, off elsewhere)",
    )
    return ap


def _check(a: argparse.Namespace) -> None:
    """Every argument that can be checked without the model, checked before it is loaded."""
    for flag in ("max_steps", "grad_accum", "scale_batch_size", "checkpoint_every", "cache_size"):
        checks.integer(getattr(a, flag), "--" + flag.replace("_", "-"), minimum=1)
    checks.count(a.steps, "--steps")
    for flag in ("height", "width"):
        checks.count(getattr(a, flag), f"--{flag}")
    checks.number(a.guidance_scale, "--guidance-scale")
    if checks.number(a.lr, "--lr", optional=False) <= 0:
        raise checks.InputError(f"--lr must be positive, got {a.lr}")
    if checks.number(a.refresh, "--refresh", optional=False) < 0:
        raise checks.InputError(f"--refresh must be >= 0, got {a.refresh}")
    for p in a.prompts:
        load_config(p)
    if a.init is not None and not Path(a.init).is_file():
        raise checks.InputError(f"--init {a.init}: no such delta file")
    # the run folder may hold this run's checkpoints (it resumes); RunFolder refuses another run's
    for out in out_dirs(a.prompts, a.out).values():
        checks.output_path(out, "--out", folder=True)


def out_dirs(prompts: list[str], out: str) -> dict[str, Path]:
    """``{config: its output folder}``: ``out`` itself for one config, ``out/<tag>`` for several."""
    if len(prompts) == 1:
        return {prompts[0]: Path(out)}
    dirs = {p: Path(out) / load_config(p).tag.replace("/", "_") for p in prompts}
    if len(set(dirs.values())) < len(dirs):
        raise checks.InputError(f"--prompts {' '.join(prompts)}: two configs share a tag, so they would share a folder")
    return dirs


def learn_one(pipe, a: argparse.Namespace, prompts: str, out: Path) -> Delta:
    """One config's delta, as the arguments say; prints a one-line summary."""
    compile_ = a.compile if a.compile is not None else pipe.unet.device.type == "cuda"
    t0 = time.perf_counter()
    delta = learn_delta(
        pipe,
        prompts,
        max_steps=a.max_steps,
        init=a.init,
        out_dir=out,
        scheme=a.scheme,
        target=a.target,
        grad_accum_steps=a.grad_accum,
        scale_batch_size=a.scale_batch_size,
        lr=a.lr,
        cosine=a.cosine,
        seed=a.seed,
        num_steps=a.steps,
        guidance_scale=a.guidance_scale,
        checkpoint_every=a.checkpoint_every,
        resume=not a.no_resume,
        overwrite=a.overwrite,
        gradient_checkpointing=a.gradient_checkpointing,
        compile=compile_,
        cache_size=a.cache_size,
        refresh=a.refresh,
        height=a.height,
        width=a.width,
        model_name=a.model,
    )
    ev = delta.meta["unet_evals"]
    print(
        f"{delta!r}: final loss {delta.meta['final_loss']:.4g}, {ev['rows'] / max(ev['micro_steps'], 1):.1f} "
        f"UNet rows per micro-step, {time.perf_counter() - t0:.0f} s → {out / 'delta.safetensors'}",
        flush=True,
    )
    return delta


def main(argv: list[str] | None = None) -> Delta | list[Delta]:
    """Learn a delta per config as the arguments say; returns the Delta (a list of them for several configs)."""
    a = _parser().parse_args(argv)
    _check(a)
    dirs = out_dirs(a.prompts, a.out)
    workers = Workers()
    device = a.device or (workers.device if workers.count > 1 else None)
    pipe = load_pipeline(a.model, device=device, dtype=a.dtype)
    deltas = workers.map(lambda p: learn_one(pipe, a, p, dirs[p]), a.prompts, desc="configs")
    return deltas[0] if len(deltas) == 1 else deltas


if __name__ == "__main__":
    sys.exit(checks.run_cli(main, prog="python -m reprolib.learn_delta"))
