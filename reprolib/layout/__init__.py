"""Layout control by cross-attention guidance (Chen, Laina & Vedaldi, WACV 2024), as a ``generate`` hook.

Backward guidance: during the first steps, an energy on the cross-attention maps of each boxed
phrase — (1 − attention inside its box / all its attention)², averaged — is lowered by a few
gradient steps on the latents, with the UNet run on the conditional embeddings only.
Forward guidance (the paper's baseline): the phrase's attention is moved into its box directly in
the forward pass. Both are attention-processor listeners (:mod:`reprolib.attention`) on a plain loop.

    img = generate(pipe, "a red circle and a blue square", seed=445,
                   boxes={"red circle": (0.0, 0.0, 0.5, 0.5)}, layout=LayoutConfig(eta=30))

CLI: ``python -m reprolib.layout --model shapes --prompt "..." --box "red circle=0,0,.5,.5" --out DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from dataclasses import asdict, dataclass
from numbers import Real
from pathlib import Path
from typing import Sequence

import torch

from ..attention import AttentionStore, _Full, attach, detach, grid_shape, select_layers
from ..conditioning import TextConditioning, Tokens
from ..tokens import SpanError, token_span

Box = tuple[float, float, float, float]


@dataclass
class LayoutConfig:
    """Settings of layout guidance; defaults are the official code's (SD 1.4, LMS, 50 steps).

    ``eta``: loss scale η (the official ``loss_scale``). ``max_iters`` gradient steps per step while
    the energy is above ``loss_threshold``, during the first ``guidance_steps`` steps. ``layers``:
    as :func:`reprolib.attention.select_layers`; ``None`` is
    :func:`reprolib.attention.default_layers` (mid block + first cross-attention up block).
    ``reset_each_step``: measure the energy afresh every step. ``False`` copies the official code,
    whose loss variable is never reset, so once the energy falls under the threshold guidance stops
    for good. ``mode``: ``"backward"`` (the method) or ``"forward"`` (the baseline; strength
    ``forward_strength`` = λ). ``gradient_checkpointing`` trades compute for memory in the guidance pass.
    """

    eta: float = 30.0
    max_iters: int = 5
    loss_threshold: float = 0.2
    guidance_steps: int = 10
    layers: object = None
    reset_each_step: bool = True
    mode: str = "backward"
    forward_strength: float = 0.8
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.mode not in ("backward", "forward"):
            raise ValueError(f"mode must be 'backward' or 'forward', not {self.mode!r}")
        if self.max_iters < 0 or self.guidance_steps < 0:
            raise ValueError("max_iters and guidance_steps must be ≥ 0")
        if not 0 <= self.forward_strength <= 1:
            raise ValueError(f"forward_strength is a fraction in [0, 1], not {self.forward_strength}")


# ----------------------------------------------------------------------------- boxes

class BoxError(ValueError):
    """A box that is not a normalised (x0, y0, x1, y1) or a phrase that is not in the prompt."""


def normalise_boxes(boxes: dict) -> dict[str, list[Box]]:
    """``{phrase: box or [boxes]}`` → ``{phrase: [boxes]}``, each checked: in [0, 1], x0 < x1, y0 < y1."""
    if not isinstance(boxes, dict) or not boxes:
        raise BoxError(f"boxes must be a non-empty dict {{phrase: (x0, y0, x1, y1) or [boxes]}}, got {boxes!r}")
    out = {}
    for phrase, value in boxes.items():
        if not isinstance(phrase, str) or not phrase.strip():
            raise BoxError(f"box keys are phrases of the prompt, got {phrase!r}")
        if not isinstance(value, (list, tuple)):
            raise BoxError(f"the box for {phrase!r} must be (x0, y0, x1, y1) or a list of them, not {value!r}")
        items = [value] if value and all(isinstance(v, Real) for v in value) else list(value)  # one bare box
        if not items:
            raise BoxError(f"{phrase!r} has an empty list of boxes")
        checked = []
        for box in items:
            four = isinstance(box, (list, tuple)) and len(box) == 4
            if not four or not all(isinstance(v, Real) and math.isfinite(v) for v in box):
                raise BoxError(f"box {box!r} for {phrase!r} is not four finite numbers (x0, y0, x1, y1)")
            x0, y0, x1, y1 = map(float, box)
            if min(x0, y0, x1, y1) < 0 or max(x0, y0, x1, y1) > 1:
                raise BoxError(f"box {box!r} for {phrase!r} is not normalised: coordinates are fractions of "
                               "the image in [0, 1] from the top left (divide pixels by the width/height)")
            if not (x0 < x1 and y0 < y1):
                raise BoxError(f"box {box!r} for {phrase!r} is empty or flipped: need x0 < x1 and y0 < y1 "
                               "(order is x0, y0, x1, y1, origin top-left)")
            checked.append((x0, y0, x1, y1))
        out[phrase] = checked
    return out


@dataclass
class Target:
    """A boxed phrase: its boxes and its token positions in each prompt of the batch."""

    phrase: str
    boxes: list[Box]
    positions: list[list[int]]


def targets_for(tokens_list: Sequence[Tokens], boxes: dict) -> list[Target]:
    """One :class:`Target` per phrase; :class:`BoxError` if a phrase is not in every prompt."""
    out = []
    for phrase, bx in normalise_boxes(boxes).items():
        try:
            pos = [token_span(t, phrase) for t in tokens_list]
        except SpanError as e:
            raise BoxError(f"box phrase {phrase!r}: {e}") from None
        out.append(Target(phrase, bx, pos))
    return out


def _coverage(a: float, b: float, n: int) -> torch.Tensor:
    """For each of n equal cells of [0, 1], the fraction of it inside [a, b]."""
    edges = torch.arange(n + 1, dtype=torch.float32) / n
    return ((edges[1:].clamp(max=b) - edges[:-1].clamp(min=a)).clamp(min=0) * n)


def box_mask(boxes: Sequence[Box], h: int, w: int) -> torch.Tensor:
    """Tensor[h, w]: how much of each map cell the boxes cover (1 inside, 0 outside, fractions on edges).

    The official code rounds box edges down to cells (``int(x0 * W)``); area weights agree with it
    for boxes on cell edges and stay meaningful on 4×4 or 8×8 maps, where rounding moves edges a lot.
    """
    m = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes:
        m = torch.maximum(m, _coverage(y0, y1, h)[:, None] * _coverage(x0, x1, w)[None, :])
    return m


def layout_energy(maps: Sequence[torch.Tensor], targets: Sequence[Target], per_image: bool = False) -> torch.Tensor:
    """The paper's energy: mean over maps and phrases of (1 − Σ_box A / Σ A)², then over the batch.

    ``maps``: tensors (batch, heads, h, w, tokens); A is the phrase's attention, averaged over
    heads and its tokens. (The official code instead averages the energy of each head and token.)
    0 when all of a phrase's attention is inside its box, 1 when none is. ``per_image``: return
    one energy per image (batch,) instead of their mean, so each image is guided on its own.
    """
    if not maps or not targets:
        raise ValueError("layout_energy needs at least one map and one target")
    total = 0.0
    for a in maps:
        a = a.float()
        batch, _, h, w, _ = a.shape
        for tg in targets:
            mask = box_mask(tg.boxes, h, w).to(a.device)
            rows = tg.positions if len(tg.positions) == batch else tg.positions * batch
            per_row = []
            for b in range(batch):
                att = a[b][..., rows[b]].mean(dim=(0, -1))  # (h, w)
                inside = (att * mask).sum() / att.sum().clamp_min(torch.finfo(att.dtype).tiny)
                per_row.append((1 - inside) ** 2)
            total = total + torch.stack(per_row)
    energies = total / (len(maps) * len(targets))
    return energies if per_image else energies.mean()


# ----------------------------------------------------------------------------- the step size

def is_variance_exploding(scheduler) -> bool:
    """Euler/LMS-style schedulers keep latents x₀ + σε (``init_noise_sigma > 1``); DDIM/DDPM keep √ᾱx₀ + √(1−ᾱ)ε."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0


def step_scale(scheduler, t) -> float:
    """What multiplies η·∇E in the update of the scheduler's own latents at timestep ``t``.

    The paper (and the official code, with LMS) uses variance-exploding latents z_t = x₀ + σ_t ε,
    σ_t² = (1 − ᾱ_t)/ᾱ_t, and steps z_t ← z_t − η σ_t² ∇_z E.

    DDIM/DDPM keep variance-preserving latents x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε = √ᾱ_t z_t. The UNet sees
    the same input in both cases (Euler/LMS's ``scale_model_input`` divides z_t by √(σ_t²+1) =
    1/√ᾱ_t), so E is one function and by the chain rule ∇_z E = √ᾱ_t ∇_x E. The paper's step, moved
    to x: Δx = √ᾱ_t Δz = −η σ_t² ᾱ_t ∇_x E = −η (1 − ᾱ_t) ∇_x E. So the factor is σ_t² for VE
    latents and 1 − ᾱ_t for VP ones; σ_t² on x_t would be 1/ᾱ_t too large (≈ 200× at t = 981 for SD).
    """
    if is_variance_exploding(scheduler):
        index = getattr(scheduler, "step_index", None)
        if index is None:
            index = scheduler.index_for_timestep(t)
        return float(scheduler.sigmas[index]) ** 2
    if not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(f"{type(scheduler).__name__} has neither sigmas (init_noise_sigma > 1) nor "
                        "alphas_cumprod; layout guidance does not know its noise level")
    return float(1 - scheduler.alphas_cumprod[int(t)])


# ----------------------------------------------------------------------------- forward guidance

class ForwardBias:
    """Listener that moves a fraction λ of each boxed phrase's attention into its box (forward guidance).

    For each phrase token i: A[:, i] ← (1 − λ)·A[:, i] + λ·g·Σ_u A[u, i], with g the box mask
    normalised to sum 1, so the token's total attention is kept and only where it goes changes.
    Only the conditional rows are edited (the second half of a CFG batch, or all of a plain batch).
    """

    edits = True

    def __init__(self, targets: Sequence[Target], strength: float, aspect: float = 1.0):
        self.targets, self.strength, self.aspect = list(targets), strength, aspect
        self.active = False

    def __call__(self, name: str, probs: torch.Tensor) -> torch.Tensor | None:
        n = len(self.targets[0].positions)
        batch = probs.shape[0]
        if batch not in (n, 2 * n):
            return None
        first = batch - n  # conditional rows come last under CFG
        h, w = grid_shape(probs.shape[2], self.aspect)
        out = probs.clone()
        for tg in self.targets:
            g = box_mask(tg.boxes, h, w).flatten().to(probs)
            g = g / g.sum()
            for b, pos in enumerate(tg.positions):
                rows = out[first + b]  # (heads, queries, tokens), a view of out
                col = rows[:, :, pos]
                rows[:, :, pos] = (1 - self.strength) * col + self.strength * g[None, :, None] * col.sum(1, True)
        return out


# ----------------------------------------------------------------------------- the hook

class BackwardGuidance:
    """A ``generate`` hook: layout guidance (backward, or forward with ``config.mode="forward"``).

    ``tokens_list``: the batch's tokenized prompts; ``boxes``: ``{phrase: box or [boxes]}``,
    normalised (x0, y0, x1, y1) from the top left. Use it as a context manager around the loop
    (``generate`` does). ``history`` has one dict per energy evaluation: step, iter, energy, updated.
    """

    def __init__(self, cond: TextConditioning, tokens_list: Sequence[Tokens], boxes: dict,
                 config: LayoutConfig | None = None, *, height: int, width: int):
        self.cond, self.config = cond, config or LayoutConfig()
        self.targets = targets_for(tokens_list, boxes)
        self.height, self.width = height, width
        unet = cond.pipe.unet
        self.layers = select_layers(unet, "default" if self.config.layers is None else self.config.layers)
        self.history: list[dict] = []
        self._done = False
        self._checkpointing_was = None
        if self.config.mode == "forward":
            self.listener = ForwardBias(self.targets, self.config.forward_strength, aspect=height / width)
            self.store = None
        else:
            # stop the UNet once the last guidance layer ran (its up path is not needed), except under
            # checkpointing, whose recomputation must see the same forward as the first pass
            self.store = AttentionStore(unet, self.layers, keep_grad=True, aspect=height / width,
                                        stop_when_full=not self.config.gradient_checkpointing)
            self.store.active = False
            self.listener = self.store
        self._entered = False

    def __enter__(self) -> BackwardGuidance:
        unet = self.cond.pipe.unet
        self._replaced = attach(unet, self.layers, self.listener)
        if self.config.gradient_checkpointing:
            self._checkpointing_was = unet.is_gradient_checkpointing
            unet.enable_gradient_checkpointing()
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        unet = self.cond.pipe.unet
        detach(unet, self.listener, self._replaced)
        if self._checkpointing_was is False:
            unet.disable_gradient_checkpointing()
        self._entered = False

    def energy(self, latents: torch.Tensor, t, cond_embeddings, step: int = 0, per_image: bool = False) -> torch.Tensor:
        """E at these latents (conditional branch only), with the graph back to them when they require grad."""
        if not self._entered or self.store is None:
            raise RuntimeError("energy() needs backward mode and the hook entered (`with guidance:`)")
        store, sched = self.store, self.cond.pipe.scheduler
        store.clear()
        store.step = step
        store.active = True
        try:
            with torch.enable_grad():
                self.cond.unet(sched.scale_model_input(latents, t), t, cond_embeddings, self.height, self.width)
        except _Full:
            pass
        finally:
            store.active = False  # the sampler's own passes are not recorded
        return layout_energy([store.grid(n, step) for n in self.layers], self.targets, per_image=per_image)

    def _gradient(self, energy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # checkpoint recomputation must redo the same forward: the explicit path, not cut short
        ckpt = self.config.gradient_checkpointing
        self.store.active = ckpt
        try:
            return torch.autograd.grad(energy, x)[0]
        finally:
            self.store.active = False

    def before_step(self, i: int, t, latents: torch.Tensor, cond_embeddings) -> torch.Tensor:
        cfg = self.config
        if not self._entered:
            raise RuntimeError("BackwardGuidance is a context manager: use `with guidance:` around the loop "
                               "(generate does this for its hooks)")
        if cfg.mode == "forward":
            self.listener.active = i < cfg.guidance_steps
            return latents
        if i >= cfg.guidance_steps or (self._done and not cfg.reset_each_step):
            return latents
        sched = self.cond.pipe.scheduler
        for it in range(cfg.max_iters):
            x = latents.detach().requires_grad_(True)
            e = self.energy(x, t, cond_embeddings, step=i, per_image=True)
            values = e.detach().float()
            value = float(values.mean())
            record = {"step": i, "iter": it, "energy": value, "updated": False}
            self.history.append(record)
            if not math.isfinite(value):
                warnings.warn(f"layout guidance: energy is {value} at step {i}, iteration {it}; update skipped "
                              "(try float32 or a smaller eta)", RuntimeWarning, stacklevel=2)
                break
            # each image is guided until its own energy is under the threshold (images never interact in
            # the UNet, so masking its energy out of the sum leaves the others' gradients unchanged)
            active = values > cfg.loss_threshold
            if not active.any():
                self._done = True
                break
            grad = self._gradient(cfg.eta * (e * active.to(e.dtype)).sum(), x)
            if not torch.isfinite(grad).all():
                warnings.warn(f"layout guidance: non-finite gradient at step {i}, iteration {it}; update "
                              "skipped (try float32 or a smaller eta)", RuntimeWarning, stacklevel=2)
                break
            latents = (x - step_scale(sched, t) * grad).detach().to(latents.dtype)
            record["updated"] = True
        return latents


# ----------------------------------------------------------------------------- CLI

def parse_box(text: str) -> tuple[str, Box]:
    """``"red circle=0,0,0.5,0.5"`` → ``("red circle", (0.0, 0.0, 0.5, 0.5))``."""
    phrase, sep, coords = text.rpartition("=")
    nums = [c for c in re.split(r"[,\s]+", coords.strip()) if c]
    try:
        box = tuple(float(c) for c in nums)
    except ValueError:
        box = ()
    if not sep or not phrase.strip() or len(box) != 4:
        raise BoxError(f"--box {text!r}: write it as 'phrase=x0,y0,x1,y1' with normalised coordinates, "
                       "e.g. --box 'red circle=0,0,0.5,0.5'")
    return phrase.strip(), box


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "phrase"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reprolib.layout", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="shapes",
                    help="shapes | sd15 | sd21 | sdxl | tiny-sd15 | tiny-sd21 | tiny-sdxl | hub id | folder")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--box", action="append", required=True, metavar="PHRASE=X0,Y0,X1,Y1",
                    help="normalised box from the top left; repeat for more boxes or phrases")
    ap.add_argument("--seed", type=int, default=445)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    ap.add_argument("--eta", type=float, default=LayoutConfig.eta)
    ap.add_argument("--guidance-steps", type=int, default=LayoutConfig.guidance_steps)
    ap.add_argument("--max-iters", type=int, default=LayoutConfig.max_iters)
    ap.add_argument("--threshold", type=float, default=LayoutConfig.loss_threshold)
    ap.add_argument("--layers", default=None,
                    help="comma-separated patterns or map sides, e.g. 'mid,up.1' or '8,16' (default: mid + "
                         "first cross-attention up block)")
    ap.add_argument("--no-reset", action="store_true", help="stop for good once under the threshold (official)")
    ap.add_argument("--mode", choices=("backward", "forward"), default="backward")
    ap.add_argument("--strength", type=float, default=LayoutConfig.forward_strength, help="λ of forward mode")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the guidance pass")
    ap.add_argument("--no-guidance", action="store_true", help="plain generation (boxes only drawn and scored)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..attention import attention_maps, plot_grid, plot_overlay
    from ..pipelines import ModelNotAvailable, load_pipeline

    try:
        boxes: dict[str, list[Box]] = {}
        for text in args.box:
            phrase, box = parse_box(text)
            boxes.setdefault(phrase, []).append(box)
        layers = None if args.layers is None else [int(p) if p.strip().isdigit() else p.strip()
                                                   for p in args.layers.split(",") if p.strip()]
        config = LayoutConfig(eta=args.eta, max_iters=args.max_iters, loss_threshold=args.threshold,
                              guidance_steps=args.guidance_steps, layers=layers, reset_each_step=not args.no_reset,
                              mode=args.mode, forward_strength=args.strength,
                              gradient_checkpointing=args.checkpointing)
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
        cond = TextConditioning(pipe)
        height, width = cond.default_size()
        tokens = cond.tokenize(args.prompt)
        guidance = BackwardGuidance(cond, [tokens], boxes, config, height=height, width=width)  # validates
    except (BoxError, ValueError, ModelNotAvailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    maps = attention_maps(pipe, args.prompt, seed=args.seed, steps=args.steps, guidance_scale=args.cfg,
                          words=list(boxes), hooks=[] if args.no_guidance else [guidance])
    args.out.mkdir(parents=True, exist_ok=True)
    maps.image.save(args.out / "image.png")
    for phrase, bx in boxes.items():
        fig = plot_overlay(maps, phrase, layer=guidance.layers, boxes=bx)
        fig.savefig(args.out / f"attention_{_slug(phrase)}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    fig = plot_grid(maps, list(boxes), by="block", boxes=boxes)
    fig.savefig(args.out / "attention_grid.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    # the energy of the conditional maps the sampler actually used, per step (guided or not)
    energies = [float(layout_energy([maps.token_maps(n, s)[None, None] for n in guidance.layers], guidance.targets))
                for s in maps.steps]
    settings = {
        "model": args.model, "prompt": args.prompt, "seed": args.seed, "steps": len(maps.steps),
        "cfg": args.cfg, "boxes": boxes, "guidance": not args.no_guidance, "config": asdict(config),
        "layers": guidance.layers, "scheduler": type(pipe.scheduler).__name__,
        "energy_by_step": energies, "guidance_history": guidance.history,
    }
    (args.out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {args.out}/image.png, attention_*.png and settings.json; energy at the first/last step: "
          f"{energies[0]:.3f} / {energies[-1]:.3f}")
    return 0


