"""Optimization-based direction learning: Baumann et al.'s ``learn_delta.py``, exactly, and far cheaper.

The trainable is one :class:`~reprolib.delta.Delta` (a vector per text encoder). One *micro-step* of the
original (CompVis ``attribute-control``, SDXL model class) is:

1. take the next (prefix, pair) combination (shuffled, epoch by epoch); draw τ ~ U(0, 1);
2. sample the *target* prompt (prefix + target) with DDIM and classifier-free guidance (50 steps, 7.5;
   the shapes world's 25 / 5 via :func:`reprolib.generate.defaults`) for ``k = round(N·τ)`` steps from
   fresh noise: ``x_t`` is the latent after ``k`` steps;
3. without grad or guidance, predict at timestep ``timesteps[round((N-1)·τ)]`` for prefix + positive,
   prefix + target and prefix + negative (the original indexes the *full* schedule with ``(N-1)·τ``
   although it sampled ``round(N·τ)`` steps: the timestep can be one step noisier than ``x_t``; kept.
   Its SD 1.5 class indexes the truncated schedule instead, which can fail; we follow the SDXL class,
   the paper's model);
4. draw ``scale_batch_size`` scales α = ±1 (fair sign) × U(0.1, 5);
5. with grad, predict for the target embedding with α·Δ added on the pattern's tokens (per encoder's
   tokenizer; looked up in the pair's words, not the prefix, as :func:`reprolib.contrastive.subject_span`:
   the same as the original's whole-prompt regex unless a prefix names the subject word too, as the
   shapes configs' "a red square and a ..." do; the pooled embedding stays as it is) and take
   ``loss = MSE(pred, pred_target + α·(pred_positive − pred_negative))``; ``loss.backward()``.

Gradients are *summed* over ``grad_accum_steps`` (10) micro-steps, then AdamW (lr 0.1, betas (0.5, 0.8),
weight decay 0.333) steps; 1000 steps, a checkpoint every 100.

**What is predicted.** The original's ``predict_eps`` returns ``(x_t − √(1−ᾱ)·ε̂)/√ᾱ`` (``√ᾱ·x_t −
√(1−ᾱ)·v̂`` for v-prediction): an *x0*-prediction, despite its name. Since x̂0 − x̂0' = −(ε̂ − ε̂')/√SNR,
the x0-loss is the ε-loss weighted by 1/SNR(t) = (1−ᾱ)/ᾱ: noisy timesteps, where layout and size are
decided, dominate, and nearly clean ones hardly count. ``target="x0"`` (default) is the original;
``target="eps"`` trains on ε-predictions (uniform weighting over t).

**Cost.** The original samples ``x_t`` from scratch every micro-step: 2k (guided) + 3 + S UNet rows
(latents evaluated), on average N + 3 + S = 57 for N = 50, S = 4. ``scheme="cached"`` (default) keeps a
pool of ``cache_size`` full DDIM trajectories (all x_t of one (prefix, pair) target prompt, plus the
target's conditional prediction at each step, which guidance computes anyway) and re-samples
``refresh`` of them per optimizer step. Nothing in the regression target depends on Δ, so a cached
(x_t, t, target) is as good as a fresh one; per-(trajectory, k, t) predictions for positive/negative are
memoised. τ, α and the data order come from the same seeded streams as in ``scheme="original"``; only the
x_t reuse differs. Every evaluation goes through a counter (:class:`UNetCounter`). With the defaults
(cache 8, refresh 0.05) a 1000-step run makes 4.9 UNet rows per micro-step against 32.0 for N = 25
(6.5×) and 5.6 against 56.9 for N = 50 (10×) (``benchmarks/learn_delta_cost.py``); the price is prompt
diversity: 8 + 0.05·steps trajectories in all, each reused about grad_accum/refresh = 200 times.

Randomness is a pure function of (seed, stream, index) (see :func:`_gen`), so a checkpoint (Δ, optimizer
state, step, history, counts, the pool's trajectory ids and seeds) resumes to exactly the uninterrupted
result; a cached pool is re-sampled from its seeds on resume.

    delta = learn_delta(pipe, "shapes/size", max_steps=300, out_dir="out/size")
    python -m reprolib.learn_delta --model sdxl --prompts people/age --device cuda:0 --gradient-checkpointing --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..conditioning import Embeddings, TextConditioning
from ..contrastive import subject_span
from ..delta import Delta
from ..generate import defaults
from ..prompts import PromptConfig, load_config

SCHEMES = ("cached", "original")
TARGETS = ("x0", "eps")
BETAS = (0.5, 0.8)  # the original's AdamW settings
WEIGHT_DECAY = 0.333
SCALE_RANGE = (0.1, 5.0)


class NonFiniteLoss(FloatingPointError):
    """The loss (or Δ) became NaN/inf; the message names the optimizer step."""


class RunConflict(RuntimeError):
    """``out_dir`` holds another run's checkpoints; pass ``overwrite=True`` or another folder."""


def _gen(seed: int, *keys) -> torch.Generator:
    """A CPU generator for one (seed, stream, index): no hidden RNG state, so resume is exact."""
    h = hashlib.sha256(repr((int(seed),) + keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


class UNetCounter:
    """Counts every UNet evaluation made through ``cond.unet``: calls, rows (latents) and rows with grad."""

    def __init__(self, cond: TextConditioning):
        self.cond, self.inner = cond, cond.unet
        self.calls = self.rows = self.grad_rows = 0
        cond.unet = self  # an instance attribute shadows the method: every caller goes through here

    def __call__(self, latents, t, emb, *args, **kwargs):
        self.calls += 1
        self.rows += latents.shape[0]
        if torch.is_grad_enabled():
            self.grad_rows += latents.shape[0]
        return self.inner(latents, t, emb, *args, **kwargs)

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "rows": self.rows, "grad_rows": self.grad_rows}

    def restore(self, counts: dict) -> None:
        self.calls, self.rows, self.grad_rows = counts["calls"], counts["rows"], counts["grad_rows"]


def _convert(out: torch.Tensor, x: torch.Tensor, t, sched, target: str) -> torch.Tensor:
    """A UNet output at (x, t) as an x0- or ε-prediction, in float32 (differentiable)."""
    kind = sched.config.prediction_type
    out = out.float()
    if kind == "epsilon" and target == "eps":
        return out
    a = sched.alphas_cumprod[int(t)].to(out.device, torch.float32)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    x = x.float()
    if kind == "epsilon":
        return (x - sb * out) / sa
    if kind == "v_prediction":
        return sa * x - sb * out if target == "x0" else sa * out + sb * x
    if kind == "sample":
        return out if target == "x0" else (x - sa * out) / sb
    raise ValueError(f"unsupported prediction_type {kind!r}: use an 'epsilon', 'v_prediction' or 'sample' model")


@dataclasses.dataclass
class _Combo:
    """One (prefix, pair): its three prompts encoded, and the target prompt's subject tokens per encoder."""

    text: str
    emb: Embeddings  # rows: target, positive, negative
    guided: Embeddings  # rows: unconditional, target (for sampling with guidance)
    masks: dict[str, torch.Tensor]  # encoder → (L,) 1.0 on the subject's tokens


@dataclasses.dataclass
class _Trajectory:
    uid: int
    combo: int
    xs: list[torch.Tensor]  # x after 0..N steps
    outs: list[torch.Tensor]  # the target's conditional UNet output at step 0..N-1
    cells: dict = dataclasses.field(default_factory=dict)  # (k, i) → (pred_target, pred_pos − pred_neg)


class _Problem:
    """Everything one run needs: prompts, schedule, sampling, targets and the loss (shared by both schemes)."""

    def __init__(self, pipe, config: PromptConfig, *, seed: int, target: str, num_steps: int,
                 guidance_scale: float, scale_batch_size: int, height: int | None = None,
                 width: int | None = None):
        from diffusers import DDIMScheduler

        self.pipe, self.config, self.seed, self.target = pipe, config, seed, target
        self.S, self.N, self.cfg = scale_batch_size, num_steps, guidance_scale
        self.cond = TextConditioning(pipe)
        self.counter = UNetCounter(self.cond)
        # read once: diffusers' ModelMixin.device/.dtype walk every module on each access
        self.device, self.dtype = self.cond.device, pipe.unet.dtype
        dh, dw = self.cond.default_size()  # the original samples at the pipeline's default size
        self.h, self.w = height or dh, width or dw
        # the original swaps in DDIM built from the pipeline's own config; a private copy leaves pipe alone
        self.sched = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sched.set_timesteps(num_steps, device=self.device)
        self.combos = config.combinations()
        if not self.combos:
            raise ValueError(f"prompt config {config.tag!r} has no (prefix, pair) combinations")
        self._masks = [self._subject_masks(i) for i in range(len(self.combos))]  # fails early on a bad pattern
        self._encoded: dict[int, _Combo] = {}
        self._orders: dict[int, torch.Tensor] = {}
        self.uncond = self.cond.encode_negative(None, 1)

    def _subject_masks(self, i: int) -> dict[str, torch.Tensor]:
        prefix, pair = self.combos[i]
        text = PromptConfig.join(prefix, pair.target)
        start = len(text) - len(PromptConfig.join("", pair.target))
        masks = {}
        for name, (tok, _) in self.cond.encoders.items():  # per encoder: their tokenizers may differ
            toks = self.cond.tokenize(text, tok)
            pos = subject_span(toks, pair.pattern, start)
            m = torch.zeros(len(toks), device=self.device)
            m[pos] = 1.0
            masks[name] = m
        return masks

    def combo(self, i: int) -> _Combo:
        if i not in self._encoded:
            prefix, pair = self.combos[i]
            texts = [PromptConfig.join(prefix, s) for s in (pair.target, pair.positive, pair.negative)]
            emb = self.cond.encode(texts)
            self._encoded[i] = _Combo(texts[0], emb, Embeddings.cat([self.uncond, emb[0]]), self._masks[i])
        return self._encoded[i]

    def order(self, n: int) -> int:
        """The n-th combination: a fresh shuffle of all of them per epoch (the original's DataLoader)."""
        c = len(self.combos)
        e = n // c
        if e not in self._orders:
            self._orders = {e: torch.randperm(c, generator=_gen(self.seed, "order", e))}
        return int(self._orders[e][n % c])

    def draw(self, n: int) -> tuple[int, int, torch.Tensor]:
        """(k, i, α) of micro-step n: k = round(N·τ) steps sampled, prediction at timesteps[round((N-1)·τ)]."""
        tau = torch.rand(1, generator=_gen(self.seed, "tau", n))
        k = int(round(float(tau.item()) * self.N))  # as the original: Python round on the float
        i = int(torch.round(tau * (self.N - 1)).item())  # and torch.round on the float32 tensor
        g = _gen(self.seed, "scale", n)
        sign = (torch.rand(self.S, generator=g) > 0.5).float() * 2 - 1
        alpha = sign * ((SCALE_RANGE[1] - SCALE_RANGE[0]) * torch.rand(self.S, generator=g) + SCALE_RANGE[0])
        return k, i, alpha

    def noise(self, key: tuple) -> torch.Tensor:
        """The seeded initial latent of one trajectory (``key``: its stream and index)."""
        f = self.pipe.vae_scale_factor
        x = torch.randn(1, self.pipe.unet.config.in_channels, self.h // f, self.w // f, generator=_gen(self.seed, *key))
        return x.to(self.device, self.dtype) * self.sched.init_noise_sigma

    @torch.no_grad()
    def sample(self, combo: int, noise_key: tuple, k: int, keep: bool = False):
        """DDIM with guidance for ``k`` steps from seeded noise; with ``keep`` every x and conditional output."""
        c = self.combo(combo)
        x = self.noise(noise_key)
        xs, outs = [x], []
        for t in self.sched.timesteps[:k]:
            if self.cfg > 1:  # as the pipeline: guidance only above 1
                u, cc = self.counter(self.sched.scale_model_input(torch.cat([x, x]), t), t, c.guided,
                                     self.h, self.w).chunk(2)
                eps = u + self.cfg * (cc - u)
            else:
                cc = eps = self.counter(self.sched.scale_model_input(x, t), t, c.guided[1], self.h, self.w)
            x = self.sched.step(eps, t, x, return_dict=False)[0]
            if keep:
                xs.append(x)
                outs.append(cc)
        return (xs, outs) if keep else x

    def predict(self, x: torch.Tensor, i: int, emb: Embeddings) -> torch.Tensor:
        """Guidance-free predictions (x0 or ε) at timesteps[i] for each row of ``emb``."""
        t = self.sched.timesteps[i]
        xb = x.expand(len(next(iter(emb.states.values()))), *x.shape[1:])
        return _convert(self.counter(self.sched.scale_model_input(xb, t), t, emb, self.h, self.w), xb, t,
                        self.sched, self.target)

    def edited(self, c: _Combo, vectors: dict[str, torch.Tensor], alpha: torch.Tensor) -> Embeddings:
        """The target embedding once per α, with α·Δ on the subject's tokens (differentiable in Δ)."""
        a = alpha.to(self.device).view(-1, 1, 1)
        states = {name: s[:1].float() + a * c.masks[name].view(1, -1, 1) * vectors[name].view(1, 1, -1)
                  for name, s in c.emb.states.items()}
        pooled = None if c.emb.pooled is None else c.emb.pooled[:1].expand(len(alpha), -1)
        return Embeddings(states, pooled)

    def loss(self, c: _Combo, vectors, x, i, alpha, pred_t, diff) -> torch.Tensor:
        pred = self.predict(x, i, self.edited(c, vectors, alpha))
        goal = pred_t + alpha.to(pred.device).view(-1, 1, 1, 1) * diff
        return F.mse_loss(pred, goal)


class _Pool:
    """``size`` cached trajectories; new ones replace the oldest, ``refresh`` per optimizer step."""

    def __init__(self, problem: _Problem, size: int, refresh: float):
        self.p, self.size, self.refresh = problem, size, refresh
        self.slots: list[_Trajectory | None] = [None] * size
        self.next_uid = 0

    def wanted(self, step: int) -> int:
        """How many trajectories exist once step ``step`` (1-based) starts: the pool, then ``refresh`` a step."""
        return self.size + math.floor((step - 1) * self.refresh + 1e-9)

    def advance(self, step: int) -> None:
        target = self.wanted(step)
        for uid in range(max(self.next_uid, target - self.size), target):
            self._add(uid)
        self.next_uid = target

    def _add(self, uid: int) -> None:
        combo = self.p.order(uid)
        xs, outs = self.p.sample(combo, ("noise", "trajectory", uid), self.p.N, keep=True)
        self.slots[uid % self.size] = _Trajectory(uid, combo, xs, outs)

    def describe(self) -> list[list[int]]:
        return [[t.uid, t.combo] for t in self.slots if t is not None]

    def pick(self, n: int) -> _Trajectory:
        return self.slots[int(torch.randint(self.size, (1,), generator=_gen(self.p.seed, "pick", n)))]

    @torch.no_grad()
    def cell(self, tr: _Trajectory, k: int, i: int):
        """(pred_target, pred_pos − pred_neg) at (x_k, timesteps[i]), memoised per trajectory."""
        if (k, i) not in tr.cells:
            c, x, p = self.p.combo(tr.combo), tr.xs[k], self.p
            if i == k < len(tr.outs):  # the target's prediction came free with the guided sampling step
                t = p.sched.timesteps[i]
                pt = _convert(tr.outs[k], x, t, p.sched, p.target)
                pos, neg = p.predict(x, i, c.emb[1:3]).chunk(2)
            else:
                pt, pos, neg = p.predict(x, i, c.emb).chunk(3)
            tr.cells[(k, i)] = (pt, pos - neg)
        return tr.cells[(k, i)]


def _settings_of(model: str, cond: TextConditioning, config: PromptConfig, **kw) -> dict:
    """What makes a run *this* run: a resumed or overwritten folder must agree on all of it."""
    cfg = {"tag": config.tag, "prefixes": list(config.prefixes),
           "pairs": [dataclasses.asdict(p) for p in config.pairs]}
    return {"model": model, "family": cond.family, "dims": cond.dims, "prompts": cfg, **kw}


def _model_name(pipe) -> str:
    from ..pipelines import KNOWN_MODELS, SHAPES_DIR

    name = str(getattr(pipe, "name_or_path", "") or "")
    if name and Path(name).exists() and Path(name).resolve() == SHAPES_DIR.resolve():
        return "shapes"
    return next((k for k, v in KNOWN_MODELS.items() if v == name), name or "unnamed pipeline")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary name, then rename: a kill mid-write never leaves a half checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1)))


def _checkpoints(out: Path) -> dict[int, Path]:
    d = out / "checkpoints"
    return {int(p.stem.split("_")[1]): p for p in d.glob("step_*.pt")} if d.is_dir() else {}


def _prepare_dir(out: Path, settings: dict, overwrite: bool, resume: bool) -> None:
    """Refuse a folder holding another run (unless ``overwrite``); clear it when starting over."""
    cfg_file = out / "config.json"
    old = json.loads(cfg_file.read_text()).get("settings") if cfg_file.exists() else None
    ours = json.loads(json.dumps(settings))  # compare as JSON sees it (tuples → lists)
    if old != ours and (old is not None or _checkpoints(out)) and not overwrite:
        if old is None:
            why = "checkpoints without a config.json (an unknown run)"
        else:
            why = "a run with other settings: " + ", ".join(
                f"{k}: {old.get(k)!r} there vs {ours.get(k)!r} here" for k in sorted(set(old) | set(ours))
                if old.get(k) != ours.get(k))
        raise RunConflict(f"{out} holds {why}. Its checkpoints are kept: pass overwrite=True (--overwrite) to "
                          "replace them, or choose another output folder.")
    if old != ours or not resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in ("delta.safetensors", "history.json"):
            (out / name).unlink(missing_ok=True)


def learn_delta(pipe, config, *, max_steps: int = 1000, init: Delta | str | Path | None = None,
                out_dir: str | Path | None = None, scheme: str = "cached", target: str = "x0",
                grad_accum_steps: int = 10, scale_batch_size: int = 4, lr: float = 0.1, cosine: bool = False,
                seed: int = 0, num_steps: int | None = None, guidance_scale: float | None = None,
                checkpoint_every: int = 100, resume: bool = True, overwrite: bool = False,
                gradient_checkpointing: bool = False, compile: bool = False, cache_size: int = 8,
                refresh: float = 0.05, height: int | None = None, width: int | None = None,
                progress: bool = True, callback: Callable | None = None, model_name: str | None = None) -> Delta:
    """Learn the attribute :class:`Delta` of ``config`` by Baumann et al.'s objective (see the module docstring).

    ``config``: a shipped name ("people/age"), path, dict or PromptConfig. ``init``: a Delta (or its file)
    to start from instead of zero. ``scheme``: "cached" (default, cheap) or "original" (x_t re-sampled
    every micro-step). ``target``: "x0" (the original) or "eps". ``num_steps``/``guidance_scale``: the DDIM
    sampling of x_t (default: :func:`reprolib.generate.defaults`). ``cosine``: cosine lr decay to 0.
    ``cache_size``/``refresh``: pool size and trajectories re-sampled per optimizer step ("cached").
    ``height``/``width``: image size of the sampled x_t (default: the pipeline's, as the original).
    ``out_dir``: config.json, checkpoints/step_*.pt every ``checkpoint_every`` steps, history.json and
    delta.safetensors; with ``resume`` a run continues from its last checkpoint (to the same result).
    ``callback(step, loss, delta)`` runs after every optimizer step.

    Returns the Delta (meta: method="learned", tag, steps, scheme, final_loss, model, unet_evals, ...);
    ``delta.history`` is the per-step record: mean loss, lr, per micro-step losses, k, i, combination and
    cached trajectory id, and the cumulative UNet counts (calls, rows, grad_rows).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    for name, v in (("max_steps", max_steps), ("grad_accum_steps", grad_accum_steps),
                    ("scale_batch_size", scale_batch_size), ("checkpoint_every", checkpoint_every),
                    ("cache_size", cache_size)):
        if int(v) < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    if refresh < 0:
        raise ValueError(f"refresh (trajectories re-sampled per step) must be >= 0, got {refresh}")
    cfg = load_config(config)
    d_steps, d_cfg = defaults(pipe)
    num_steps = int(num_steps or d_steps)
    guidance_scale = float(d_cfg if guidance_scale is None else guidance_scale)
    problem = _Problem(pipe, cfg, seed=seed, target=target, num_steps=num_steps, guidance_scale=guidance_scale,
                       scale_batch_size=scale_batch_size, height=height, width=width)
    cond, counter = problem.cond, problem.counter
    if init is not None:
        init = init if isinstance(init, Delta) else Delta.load(init)
        init.check(cond)
    model = model_name or _model_name(pipe)
    settings = _settings_of(
        model, cond, cfg, scheme=scheme, target=target, grad_accum_steps=grad_accum_steps,
        scale_batch_size=scale_batch_size, lr=lr, cosine=cosine, seed=seed, num_steps=num_steps,
        guidance_scale=guidance_scale, size=[problem.h, problem.w], max_steps=max_steps if cosine else None,
        cache=[cache_size, refresh] if scheme == "cached" else None,
        init=None if init is None else hashlib.sha256(b"".join(
            init.vectors[k].numpy().tobytes() for k in sorted(init.vectors))).hexdigest()[:16])

    dev = problem.device
    params = {k: torch.nn.Parameter(init.vectors[k].clone().to(dev) if init is not None else torch.zeros(d, device=dev))
              for k, d in cond.dims.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    history: list[dict] = []
    start = 0
    pool = _Pool(problem, cache_size, refresh) if scheme == "cached" else None

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _prepare_dir(out, settings, overwrite, resume)
        _write_json(out / "config.json", {"settings": settings, "max_steps": max_steps,
                                          "checkpoint_every": checkpoint_every,
                                          "gradient_checkpointing": gradient_checkpointing, "compile": compile,
                                          "device": str(dev), "dtype": str(problem.dtype)})
        done = [s for s in _checkpoints(out) if s <= max_steps]
        if resume and done:
            ck = torch.load(_checkpoints(out)[max(done)], map_location="cpu", weights_only=True)
            with torch.no_grad():
                for k, v in ck["delta"].items():
                    params[k].copy_(v)
            opt.load_state_dict(ck["optimizer"])
            start, history = ck["step"], ck["history"]
            counter.restore(ck["counts"])
            if pool is not None:  # the pool is re-sampled from its seeds (ids) rather than stored
                pool.next_uid = ck["next_uid"]
                for uid, _ in ck["pool"]:
                    pool._add(uid)

    def snapshot() -> Delta:
        last = history[-1]["loss"] if history else None
        meta = {"method": "learned", "tag": cfg.tag, "steps": len(history) and history[-1]["step"],
                "scheme": scheme, "target": target, "final_loss": last, "model": model, "family": cond.family,
                "grad_accum_steps": grad_accum_steps, "scale_batch_size": scale_batch_size, "lr": lr,
                "cosine": cosine, "seed": seed, "num_steps": num_steps, "guidance_scale": guidance_scale,
                "unet_evals": {**counter.counts(), "micro_steps": len(history) * grad_accum_steps},
                "loss_history": [h["loss"] for h in history], "fingerprint": cond.fingerprint()}
        d = Delta({k: v.detach() for k, v in params.items()}, meta)
        d.history = history
        return d

    def save_checkpoint(step: int) -> None:
        ck = {"format": 1, "step": step, "delta": {k: v.detach().cpu() for k, v in params.items()},
              "optimizer": opt.state_dict(), "history": history, "counts": counter.counts(),
              "pool": pool.describe() if pool else [], "next_uid": pool.next_uid if pool else 0,
              "rng": {"seed": seed, "derivation": "sha256(seed, stream, index) per draw; nothing else"}}
        (out / "checkpoints").mkdir(exist_ok=True)
        _atomic(out / "checkpoints" / f"step_{step:06d}.pt", lambda p: torch.save(ck, p))
        _write_json(out / "history.json", history)

    unet = pipe.unet
    grad_flags = [p.requires_grad for p in unet.parameters()]
    had_ckpt = getattr(unet, "is_gradient_checkpointing", False)
    unet.requires_grad_(False)  # only Δ learns: no grads for the UNet's weights
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if compile:
        if gradient_checkpointing:
            warnings.warn("torch.compile with gradient checkpointing often fails to compile (as the original "
                          "warns); drop one of them if it does")
        unet.forward = torch.compile(unet.forward)
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=start, desc=f"learn_delta {cfg.tag}",
               disable=not progress or bool(os.environ.get("CI")))
    try:
        for step in range(start + 1, max_steps + 1):
            if pool is not None:
                pool.advance(step)
            cur_lr = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / max_steps)) if cosine else lr
            for g in opt.param_groups:
                g["lr"] = cur_lr
            losses, ks, iis, combos, uids = [], [], [], [], []
            for m in range(grad_accum_steps):
                n = (step - 1) * grad_accum_steps + m
                k, i, alpha = problem.draw(n)
                if pool is None:  # the original: fresh x_t, then three separate guidance-free predictions
                    combo = problem.order(n)
                    c = problem.combo(combo)
                    x = problem.sample(combo, ("noise", "micro", n), k)
                    with torch.no_grad():
                        pp, pt, pn = (problem.predict(x, i, c.emb[j]) for j in (1, 0, 2))
                    diff = pp - pn
                else:
                    tr = pool.pick(n)
                    combo, c, x = tr.combo, problem.combo(tr.combo), tr.xs[k]
                    uids.append(tr.uid)
                    pt, diff = pool.cell(tr, k, i)
                loss = problem.loss(c, params, x, i, alpha, pt, diff)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"the loss is {float(loss.detach())} at optimizer step {step} (micro-step {m + 1} of "
                        f"{grad_accum_steps}, prompt {c.text!r}); nothing was saved for this step. In half "
                        "precision try bf16 or fp32 (dtype=...), or a lower lr.")
                loss.backward()  # gradients add up over the micro-steps, as in the original
                losses.append(float(loss.detach()))
                ks.append(k), iis.append(i), combos.append(combo)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in params.values()):
                raise NonFiniteLoss(f"Δ became non-finite at optimizer step {step} (a gradient overflowed); "
                                    "nothing was saved for this step. Try bf16/fp32 or a lower lr.")
            history.append({"step": step, "loss": sum(losses) / grad_accum_steps, "lr": cur_lr, "losses": losses,
                            "k": ks, "i": iis, "combos": combos, "trajectories": uids, **counter.counts()})
            if out is not None and (step % checkpoint_every == 0 or step == max_steps):
                save_checkpoint(step)
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
            if callback is not None:
                callback(step, history[-1]["loss"], snapshot())
    finally:
        bar.close()
        if compile:
            del unet.forward
        if gradient_checkpointing and not had_ckpt:
            unet.disable_gradient_checkpointing()
        for p, f in zip(unet.parameters(), grad_flags):
            p.requires_grad_(f)
        del cond.unet  # drop the counter

    delta = snapshot()
    if out is not None:
        _write_json(out / "history.json", history)
        _atomic(out / "delta.safetensors", lambda p: delta.save(p))
    return delta


@torch.no_grad()
def heldout_loss(pipe, config, delta: Delta, *, samples: int = 16, seed: int = 12345, target: str = "x0",
                 scale_batch_size: int = 4, num_steps: int | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None) -> float:
    """The objective's mean loss for a fixed ``delta`` on ``samples`` fresh draws (as the original makes them).

    The same ``seed`` gives the same (prompt, τ, α, x_t) draws for every delta: a fair comparison of
    deltas learned differently (e.g. by the two schemes).
    """
    d_steps, d_cfg = defaults(pipe)
    p = _Problem(pipe, load_config(config), seed=seed, target=target, num_steps=int(num_steps or d_steps),
                 guidance_scale=float(d_cfg if guidance_scale is None else guidance_scale),
                 scale_batch_size=scale_batch_size, height=height, width=width)
    delta.check(p.cond)
    vectors = {k: v.to(p.device) for k, v in delta.vectors.items()}
    total = 0.0
    try:
        for n in range(samples):
            k, i, alpha = p.draw(n)
            combo = p.order(n)
            c = p.combo(combo)
            x = p.sample(combo, ("noise", "heldout", n), k)
            pt, pp, pn = p.predict(x, i, c.emb).chunk(3)
            total += float(p.loss(c, vectors, x, i, alpha, pt, pp - pn))
    finally:
        del p.cond.unet
    return total / samples


@torch.no_grad()
def micro_step(pipe, config, delta: Delta | None = None, *, combo: int = 0, tau: float = 0.6,
               alpha: float = 3.0, seed: int = 0, target: str = "x0", num_steps: int | None = None,
               guidance_scale: float | None = None) -> dict:
    """One micro-step of the objective, laid out for inspection (chapter 03): every tensor it uses.

    Returns the prompt, k (steps sampled), the timestep, x_t, and the x0/ε predictions for the target,
    positive and negative prompts, the regression goal ``pred_target + α·(pred_pos − pred_neg)``, the
    prediction with ``α·delta`` on the subject (zero delta if None) and the loss between them.
    """
    d_steps, d_cfg = defaults(pipe)
    p = _Problem(pipe, load_config(config), seed=seed, target=target, num_steps=int(num_steps or d_steps),
                 guidance_scale=float(d_cfg if guidance_scale is None else guidance_scale), scale_batch_size=1)
    try:
        k, i = int(round(tau * p.N)), int(round(tau * (p.N - 1)))
        c = p.combo(combo)
        x = p.sample(combo, ("noise", "explain", 0), k)
        pt, pp, pn = p.predict(x, i, c.emb).chunk(3)
        vectors = {n: (delta.vectors[n] if delta is not None else torch.zeros(d)).to(p.device)
                   for n, d in p.cond.dims.items()}
        a = torch.tensor([float(alpha)])
        goal = pt + alpha * (pp - pn)
        pred = p.predict(x, i, p.edited(c, vectors, a))
        return {"prompt": c.text, "k": k, "timestep": int(p.sched.timesteps[i]), "x_t": x, "target": pt,
                "positive": pp, "negative": pn, "goal": goal, "edited": pred,
                "loss": float(F.mse_loss(pred, goal)), "prediction": target}
    finally:
        del p.cond.unet  # the counter's wrapper


def main(argv: list[str] | None = None) -> Delta:
    ap = argparse.ArgumentParser(prog="python -m reprolib.learn_delta",
                                 description="Learn an attribute delta by Baumann et al.'s optimization.")
    ap.add_argument("--model", default="shapes", help="shapes, sd15, sd21, sdxl, a hub id or folder; "
                    "tiny-sd15 / tiny-sd21 / tiny-sdxl for offline checks")
    ap.add_argument("--prompts", required=True, help="prompt config: shipped name (people/age) or YAML path")
    ap.add_argument("--out", required=True, help="output folder (config.json, checkpoints/, delta.safetensors)")
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
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the UNet (default: on for CUDA, off elsewhere)")
    a = ap.parse_args(argv)
    from ..pipelines import load_pipeline

    pipe = load_pipeline(a.model, device=a.device, dtype=a.dtype)
    compile_ = a.compile if a.compile is not None else pipe.unet.device.type == "cuda"
    t0 = time.perf_counter()
    delta = learn_delta(pipe, a.prompts, max_steps=a.max_steps, init=a.init, out_dir=a.out, scheme=a.scheme,
                        target=a.target, grad_accum_steps=a.grad_accum, scale_batch_size=a.scale_batch_size,
                        lr=a.lr, cosine=a.cosine, seed=a.seed, num_steps=a.steps, guidance_scale=a.guidance_scale,
                        checkpoint_every=a.checkpoint_every, resume=not a.no_resume, overwrite=a.overwrite,
                        gradient_checkpointing=a.gradient_checkpointing, compile=compile_,
                        cache_size=a.cache_size, refresh=a.refresh, height=a.height, width=a.width,
                        model_name=a.model)
    ev = delta.meta["unet_evals"]
    print(f"{delta!r}: final loss {delta.meta['final_loss']:.4g}, {ev['rows'] / max(ev['micro_steps'], 1):.1f} "
          f"UNet rows per micro-step, {time.perf_counter() - t0:.0f} s → {Path(a.out) / 'delta.safetensors'}")
    return delta


