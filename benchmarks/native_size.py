"""Peak memory and time of one step at true size, per family (random weights: reprolib.architectures).

    python benchmarks/native_size.py                      # every family at native size (cuda if present)
    OMP_NUM_THREADS=1 python benchmarks/native_size.py --device cpu --threads 1 --size sd15=256 sd21=256 sdxl=256

Steps measured, each in a fresh subprocess so its peak is its own (peak RSS on CPU, including the Python
process and the weights; ``torch.cuda.max_memory_allocated`` on CUDA):

* ``plain``: one denoising step with classifier-free guidance (a UNet batch of 2, then ``scheduler.step``);
* ``guidance`` / ``guidance-ckpt``: one backward layout-guidance iteration (``LayoutGuidance``: the UNet on the
  conditional branch up to its last guided layer, the energy, its gradient to the latents), without / with
  gradient checkpointing;
* ``delta`` / ``delta-ckpt``: one learned-delta micro-step (``learn_delta``'s objective: 3 rows predicted without
  grad, ``--scale-batch-size`` rows with α·Δ on the subject, MSE, backward to Δ), without / with gradient
  checkpointing. x_t is drawn as noise: sampling it (k plain steps, or none when the cached pool reuses a
  trajectory) is not part of the micro-step.

The text encoders are not built (:func:`stub_encoders` gives random states of their true shapes): a peak is the
UNet's weights plus the step (and, on CPU, the interpreter); the table lists the encoders' weight memory beside
it, to add for a run that keeps them loaded. A measurement whose RSS passes ``--max-rss-gb`` is stopped and
reported as over it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPTextModelWithProjection
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPTextModelOutput

from reprolib import checks
from reprolib.architectures import FAMILIES, NATIVE_SIZE, TEXT_ENCODERS, parameter_counts, random_pipeline
from reprolib.conditioning import Embeddings, TextConditioning
from reprolib.device import pick_device, pick_dtype
from reprolib.layout import LayoutConfig, LayoutGuidance
from reprolib.learn_delta import Problem

STEPS = ("plain", "guidance", "guidance-ckpt", "delta", "delta-ckpt")
PROMPT, BOX = "a photo of an old man next to a red car", {"man": (0.0, 0.0, 0.5, 1.0)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument(
        "--size",
        nargs="*",
        default=[],
        metavar="FAMILY=PIXELS",
        help="image side per family (default: native, 512 / 768 / 1024)",
    )
    ap.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    ap.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default: reprolib.device.pick_dtype)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in each measurement")
    ap.add_argument("--scale-batch-size", type=int, default=4, help="α rows of a micro-step (the original's 4)")
    ap.add_argument("--max-rss-gb", type=float, default=12.0, help="stop a CPU measurement past this RSS")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "STEP"), help=argparse.SUPPRESS)  # a child's job
    return ap


def stub_forward(cfg, projected: bool, device: torch.device, dtype: torch.dtype, seed: int):
    """A text encoder's forward that returns seeded random states of its true shapes (``[0]``: the pooled
    projection for SDXL's second encoder, the last states otherwise)."""
    g = torch.Generator().manual_seed(seed)

    def forward(input_ids, *args, **kwargs):
        b, n = input_ids.shape
        states = torch.randn(b, n, cfg.hidden_size, generator=g).to(device, dtype)
        if projected:
            pooled = torch.randn(b, cfg.projection_dim, generator=g).to(device, dtype)
            return CLIPTextModelOutput(text_embeds=pooled, last_hidden_state=states, hidden_states=(states,) * 3)
        return BaseModelOutputWithPooling(
            last_hidden_state=states, pooler_output=states[:, -1], hidden_states=(states,) * 3
        )

    return forward


def stub_encoders(pipe, device: torch.device, dtype: torch.dtype) -> None:
    """The text encoders (left on the meta device) answer with random states of their true shapes.

    No step measured here runs them, and their values do not change a step's cost; this keeps their weights
    out of the peak (the SDXL UNet alone is 10.3 GB in fp32). Patched at ``forward``, as learn_delta_cost's stub.
    """
    for k, name in enumerate(("text_encoder", "text_encoder_2")):
        enc = getattr(pipe, name, None)
        if enc is not None:
            projected = isinstance(enc, CLIPTextModelWithProjection)
            enc.forward = stub_forward(enc.config, projected, device, dtype, seed=k)


def plain_step(pipe, cond: TextConditioning, x: torch.Tensor, size: int):
    emb = Embeddings.cat([cond.encode_negative(None, 1), cond.encode(PROMPT)])
    sched = pipe.scheduler
    sched.set_timesteps(50, device=x.device)
    t = sched.timesteps[0]

    def run():
        with torch.inference_mode():
            out = cond.unet(sched.scale_model_input(torch.cat([x, x]), t), t, emb, size, size)
            u, c = out.chunk(2)
            return sched.step(u + 7.5 * (c - u), t, x, return_dict=False)[0]

    return run


def guidance_step(pipe, cond: TextConditioning, x: torch.Tensor, size: int, checkpointing: bool):
    emb = cond.encode(PROMPT)
    sched = pipe.scheduler
    sched.set_timesteps(50, device=x.device)
    t = sched.timesteps[0]
    config = LayoutConfig(max_iters=1, loss_threshold=0.0, gradient_checkpointing=checkpointing)
    guidance = LayoutGuidance(cond, emb.tokens, BOX, config, height=size, width=size)

    def run():
        with guidance:
            return guidance.before_step(0, t, x, emb)

    return run


def delta_step(pipe, size: int, scale_batch_size: int, checkpointing: bool):
    p = Problem.with_defaults(
        pipe, "people/age", seed=0, target="x0", scale_batch_size=scale_batch_size, height=size, width=size
    )
    c = p.combo(0)
    pipe.unet.requires_grad_(False)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    _, _, alpha = p.draw(0)
    x, i = p.noise(("noise", "benchmark", 0)), p.N // 2

    def run():
        with torch.no_grad():
            pt, pp, pn = p.predict(x, i, c.emb).chunk(3)
        vectors = {n: torch.zeros(d, device=p.device, requires_grad=True) for n, d in p.cond.dims.items()}
        loss = p.loss(c, vectors, x, i, alpha, pt, pp - pn)
        loss.backward()
        return [v.grad for v in vectors.values()]

    return run


def measure(family: str, step: str, args) -> dict:
    """One measurement in this process: build, prepare the step, run it, report time and peak memory."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    size = dict(s.split("=") for s in args.size).get(family, NATIVE_SIZE[family])
    size = int(size)
    t0 = time.perf_counter()
    encoders = [name for name, *_ in TEXT_ENCODERS[family]]
    pipe = random_pipeline(family, dtype=dtype, device=device, on_meta=["vae", *encoders])
    built = time.perf_counter() - t0
    stub_encoders(pipe, device, dtype)
    cond = TextConditioning(pipe)
    x = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    if step == "plain":
        run = plain_step(pipe, cond, x, size)
    elif step.startswith("guidance"):
        run = guidance_step(pipe, cond, x, size, step.endswith("ckpt"))
    else:
        run = delta_step(pipe, size, args.scale_batch_size, step.endswith("ckpt"))
    if device.type == "cuda":
        run()  # warm-up (kernel selection); the second run is measured
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    finite = all(bool(torch.isfinite(o).all()) for o in (out if isinstance(out, list) else [out]))
    return {
        "family": family,
        "step": step,
        "size": size,
        "device": device.type,
        "dtype": str(dtype).split(".")[-1],
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t1,
        "peak_gb": peak,
        "build_s": built,
        "finite": finite,
    }


def rss_gb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((ln for ln in text.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1e6


def in_subprocess(family: str, step: str, argv: list[str], cap_gb: float) -> dict:
    """Run ``--one family step`` in a fresh interpreter; stop it if its RSS passes ``cap_gb``."""
    cmd = [sys.executable, __file__, *argv, "--one", family, step]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    over = 0.0
    while proc.poll() is None:
        time.sleep(0.25)
        over = max(over, rss_gb(proc.pid))
        if over > cap_gb:
            proc.kill()
    out = proc.communicate()[0]
    if over > cap_gb:
        return {"family": family, "step": step, "stopped": f"RSS over {cap_gb:g} GB"}
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows[-1] if rows else {"family": family, "step": step, "stopped": f"exit code {proc.returncode}"}


def table(rows: list[dict], args) -> str:
    lines = [
        "| family | image | device, dtype | step | time (s) | peak (GB) | UNet weights (GB) | encoders (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        counts = parameter_counts(r["family"])
        width = 2 if (r.get("dtype") or args.dtype or "fp32") in ("float16", "bfloat16", "fp16", "bf16") else 4
        unet = counts["unet"] * width / 1e9
        enc = sum(v for k, v in counts.items() if k.startswith("text_encoder")) * width / 1e9
        if "stopped" in r:
            lines.append(f"| {r['family']} | | | {r['step']} | — | {r['stopped']} | {unet:.2f} | {enc:.2f} |")
            continue
        lines.append(
            f"| {r['family']} | {r['size']}² | {r['device']}, {r['dtype']} ({r['threads']} thr) | "
            f"{r['step']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} | {unet:.2f} | {enc:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, args)), flush=True)
        return
    if args.json:  # before the measurements, not after them
        checks.output_path(args.json, "--json", overwrite=args.overwrite)
    rows = []
    for family in args.families:
        for step in args.steps:
            rows.append(in_subprocess(family, step, argv, args.max_rss_gb))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    raise SystemExit(checks.run_cli(main, prog="python benchmarks/native_size.py"))
