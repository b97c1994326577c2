"""The learning loop: optimizer steps over summed micro-steps, checkpoints and resume; the held-out loss, and one
micro-step laid out for inspection.

Gradients are *summed* over ``grad_accum_steps`` (10) micro-steps (:mod:`.objective`), then AdamW (lr 0.1,
betas (0.5, 0.8), weight decay 0.333) steps; 1000 steps, a checkpoint every 100.

A checkpoint (Δ, optimizer state, step, history, counts, the pool's trajectory ids and seeds) resumes to
exactly the uninterrupted result; a cached pool is re-sampled from its seeds on resume.

    delta = learn_delta(pipe, "shapes/size", max_steps=300, out_dir="out/size")
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import checks
from ..checks import NonFiniteError
from ..conditioning import TextConditioning
from ..delta import Delta
from .counter import UNetCounter
from .objective import TARGETS, Combination, Problem
from .pool import TrajectoryPool
from .rundir import Checkpoint, RunFolder, run_settings
from .rundir import model_name as name_of_model

SCHEMES = ("cached", "original")
BETAS = (0.5, 0.8)  # the original's AdamW settings
WEIGHT_DECAY = 0.333
# the settings a learned Delta's meta repeats
_META_SETTINGS = ("grad_accum_steps", "scale_batch_size", "lr", "cosine", "seed", "num_steps", "guidance_scale")


class NonFiniteLoss(NonFiniteError):
    """The loss (or Δ) became NaN/inf; the message names the optimizer step."""


def learn_delta(
    pipe,
    config,
    *,
    max_steps: int = 1000,
    init: Delta | str | Path | None = None,
    out_dir: str | Path | None = None,
    scheme: str = "cached",
    target: str = "x0",
    grad_accum_steps: int = 10,
    scale_batch_size: int = 4,
    lr: float = 0.1,
    cosine: bool = False,
    seed: int = 0,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    overwrite: bool = False,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    cache_size: int = 8,
    refresh: float = 0.05,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    callback: Callable | None = None,
    model_name: str | None = None,
) -> Delta:
    """Learn the attribute :class:`Delta` of ``config`` by Baumann et al.'s objective (:mod:`.objective`).

    ``config``: a shipped name ("people/age"), path, dict or PromptConfig. ``init``: a Delta (or its file)
    to start from instead of zero. ``scheme``: "cached" (default, cheap; :mod:`.pool`) or "original" (x_t
    re-sampled every micro-step). ``target``: "x0" (the original) or "eps". ``num_steps``/``guidance_scale``:
    the DDIM sampling of x_t (default: :func:`reprolib.generate.defaults`). ``cosine``: cosine lr decay to 0.
    ``cache_size``/``refresh``: pool size and trajectories re-sampled per optimizer step ("cached").
    ``height``/``width``: image size of the sampled x_t (default: the pipeline's, as the original).
    ``out_dir``: config.json, checkpoints/step_*.pt every ``checkpoint_every`` steps, history.json and
    delta.safetensors; with ``resume`` a run continues from its last checkpoint (to the same result).
    ``callback(step, loss, delta)`` runs after every optimizer step.

    Returns the Delta (meta: method="learned", tag, steps, scheme, final_loss, model, unet_evals, ...);
    ``delta.history`` is the per-step record: mean loss, lr, per micro-step losses, k, i, combination and
    cached trajectory id, and the cumulative UNet counts (calls, rows, grad_rows).
    """
    _check_numbers(pipe, seed=seed, lr=lr, num_steps=num_steps, guidance_scale=guidance_scale, size=(height, width))
    _check_arguments(
        scheme,
        target,
        refresh,
        max_steps=max_steps,
        grad_accum_steps=grad_accum_steps,
        scale_batch_size=scale_batch_size,
        checkpoint_every=checkpoint_every,
        cache_size=cache_size,
    )
    problem = Problem.with_defaults(
        pipe,
        config,
        seed=seed,
        target=target,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        scale_batch_size=scale_batch_size,
        height=height,
        width=width,
    )
    init = _initial_delta(init, problem.cond)
    settings = run_settings(
        model_name or name_of_model(pipe),
        problem.cond,
        problem.config,
        scheme=scheme,
        target=target,
        grad_accum_steps=grad_accum_steps,
        scale_batch_size=scale_batch_size,
        lr=lr,
        cosine=cosine,
        seed=seed,
        num_steps=problem.N,
        guidance_scale=problem.cfg,
        size=[problem.h, problem.w],
        max_steps=max_steps if cosine else None,
        cache=[cache_size, refresh] if scheme == "cached" else None,
        init=init,
    )
    pool = TrajectoryPool(problem, cache_size, refresh) if scheme == "cached" else None
    run = _Run(problem, settings, init, UNetCounter(pipe.unet), pool, lr=lr, cosine=cosine, max_steps=max_steps)
    folder = None if out_dir is None else RunFolder(out_dir)
    with run.counter:
        if folder is not None:
            _open_folder(
                folder,
                run,
                resume=resume,
                overwrite=overwrite,
                config={
                    "max_steps": max_steps,
                    "checkpoint_every": checkpoint_every,
                    "gradient_checkpointing": gradient_checkpointing,
                    "compile": compile,
                    "device": str(problem.device),
                    "dtype": str(problem.dtype),
                },
            )
        with (
            _unet_for_learning(pipe.unet, gradient_checkpointing, compile),
            tqdm(
                total=max_steps,
                initial=run.done,
                desc=f"learn_delta {problem.config.tag}",
                disable=not progress or bool(os.environ.get("CI")),
            ) as bar,
        ):
            for step in range(run.done + 1, max_steps + 1):
                loss = run.optimizer_step(step)["loss"]
                if folder is not None and (step % checkpoint_every == 0 or step == max_steps):
                    folder.save_checkpoint(run.checkpoint())
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                if callback is not None:
                    with run.counter.paused():  # what the callback runs is not the learning's compute
                        callback(step, loss, run.snapshot())
    delta = run.snapshot()
    if folder is not None:
        folder.write_history(run.history)
        folder.write_delta(delta)
    return delta


def _check_arguments(scheme: str, target: str, refresh: float, **counts: int) -> None:
    """Fail early, naming the argument: ``counts`` must each be at least 1."""
    if scheme not in SCHEMES:
        raise checks.InputError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    if target not in TARGETS:
        raise checks.InputError(f"target must be one of {TARGETS}, not {target!r}")
    for name, v in counts.items():
        checks.integer(v, name, minimum=1)
    if checks.number(refresh, "refresh", optional=False) < 0:
        raise checks.InputError(f"refresh (trajectories re-sampled per step) must be >= 0, got {refresh}")


def _check_numbers(pipe, *, seed, lr, num_steps, guidance_scale, size) -> None:
    """Seed, learning rate, sampling steps, guidance (NaN would train unguided) and image size, checked."""
    checks.integer(seed, "seed")
    if checks.number(lr, "lr", optional=False) <= 0:
        raise checks.InputError(f"lr must be positive, got {lr}")
    checks.count(num_steps, "num_steps")
    checks.number(guidance_scale, "guidance_scale")
    checks.size(pipe, *size)


def _initial_delta(init: Delta | str | Path | None, cond: TextConditioning) -> Delta | None:
    """The starting delta (loaded from its file if need be), checked against the pipeline's encoders."""
    if init is None:
        return None
    init = init if isinstance(init, Delta) else Delta.load(init)
    init.check(cond)
    return init


@contextmanager
def _unet_for_learning(unet: torch.nn.Module, gradient_checkpointing: bool, compile: bool) -> Iterator[None]:
    """Only Δ learns: the UNet's weights without grads (optionally checkpointed, compiled); restored after."""
    grad_flags = [p.requires_grad for p in unet.parameters()]
    had_ckpt = getattr(unet, "is_gradient_checkpointing", False)
    unet.requires_grad_(False)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if compile:
        if gradient_checkpointing:
            warnings.warn(
                "torch.compile with gradient checkpointing often fails to compile (as the original "
                "warns); drop one of them if it does",
                stacklevel=1,
            )
        unet.forward = torch.compile(unet.forward)
    try:
        yield
    finally:
        if compile:
            del unet.forward
        if gradient_checkpointing and not had_ckpt:
            unet.disable_gradient_checkpointing()
        for p, f in zip(unet.parameters(), grad_flags):
            p.requires_grad_(f)


def _open_folder(folder: RunFolder, run: _Run, *, resume: bool, overwrite: bool, config: dict) -> None:
    """Claim the output folder for ``run`` (refusing another run's), record ``config``, resume if asked."""
    folder.prepare(run.settings, overwrite=overwrite, resume=resume)
    folder.write_config(run.settings, **config)
    ck = folder.latest(config["max_steps"]) if resume else None
    if ck is not None:
        run.resume(ck)


class _Run:
    """One learning run's state: Δ, its optimizer, the trajectory pool ("cached"), the history and counts."""

    def __init__(
        self,
        problem: Problem,
        settings: dict,
        init: Delta | None,
        counter: UNetCounter,
        pool: TrajectoryPool | None,
        *,
        lr: float,
        cosine: bool,
        max_steps: int,
    ):
        self.problem, self.settings, self.counter, self.pool = problem, settings, counter, pool
        self.lr, self.cosine, self.max_steps = lr, cosine, max_steps
        self.accum: int = settings["grad_accum_steps"]
        dev = problem.device
        self.params = {
            k: torch.nn.Parameter(init.vectors[k].clone().to(dev) if init is not None else torch.zeros(d, device=dev))
            for k, d in problem.cond.dims.items()
        }
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
        self.history: list[dict] = []
        self.done = 0  # optimizer steps taken

    def lr_at(self, step: int) -> float:
        if not self.cosine:
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / self.max_steps))

    def optimizer_step(self, step: int) -> dict:
        """Step ``step`` (1-based): gradients summed over ``grad_accum_steps`` micro-steps, one AdamW step.

        Returns the step's history record.
        """
        if self.pool is not None:
            self.pool.advance(step)
        lr = self.lr_at(step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        record: dict[str, list] = {"losses": [], "k": [], "i": [], "combos": [], "trajectories": []}
        for m in range(self.accum):
            loss, c = self._micro_loss((step - 1) * self.accum + m, record)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"the loss is {float(loss.detach())} at optimizer step {step} (micro-step {m + 1} of "
                    f"{self.accum}, prompt {c.text!r}); nothing was saved for this step. In half "
                    "precision try bf16 or fp32 (dtype=...), or a lower lr."
                )
            loss.backward()  # gradients add up over the micro-steps, as in the original
            record["losses"].append(float(loss.detach()))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() for p in self.params.values()):
            raise NonFiniteLoss(
                f"Δ became non-finite at optimizer step {step} (a gradient overflowed); "
                "nothing was saved for this step. Try bf16/fp32 or a lower lr."
            )
        self.done = step
        self.history.append(
            {"step": step, "loss": sum(record["losses"]) / self.accum, "lr": lr, **record, **self.counter.counts()}
        )
        return self.history[-1]

    def _micro_loss(self, n: int, record: dict[str, list]) -> tuple[torch.Tensor, Combination]:
        """Micro-step ``n``'s loss (differentiable in Δ) and combination; its draws go into ``record``."""
        p = self.problem
        k, i, alpha = p.draw(n)
        if self.pool is None:  # the original: fresh x_t, then three separate guidance-free predictions
            combo = p.order(n)
            c = p.combo(combo)
            x = p.sample(combo, ("noise", "micro", n), k)
            with torch.no_grad():
                pp, pt, pn = (p.predict(x, i, c.emb[j]) for j in (1, 0, 2))
            diff = pp - pn
        else:
            tr = self.pool.pick(n)
            combo, c, x = tr.combo, p.combo(tr.combo), tr.xs[k]
            record["trajectories"].append(tr.uid)
            pt, diff = self.pool.cell(tr, k, i)
        record["k"].append(k)
        record["i"].append(i)
        record["combos"].append(combo)
        return p.loss(c, self.params, x, i, alpha, pt, diff), c

    def checkpoint(self) -> Checkpoint:
        """The state after the last step taken."""
        pool = self.pool
        return Checkpoint(
            step=self.done,
            delta={k: v.detach().cpu() for k, v in self.params.items()},
            optimizer=self.opt.state_dict(),
            history=self.history,
            counts=self.counter.counts(),
            pool=pool.describe() if pool is not None else [],
            next_uid=pool.next_uid if pool is not None else 0,
            seed=self.settings["seed"],
        )

    def resume(self, ck: Checkpoint) -> None:
        """Continue from ``ck``: Δ, optimizer, history and counts; a pool re-sampled from its seeds."""
        with torch.no_grad():
            for k, v in ck.delta.items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(ck.optimizer)
        self.done, self.history = ck.step, ck.history
        self.counter.restore(ck.counts)
        if self.pool is not None:
            self.pool.restore(ck.pool, ck.next_uid)

    def snapshot(self) -> Delta:
        """Δ as learned so far, its meta (what it was learned with) and ``history``."""
        s, h = self.settings, self.history
        meta = {
            "method": "learned",
            "tag": s["prompts"]["tag"],
            "steps": len(h) and h[-1]["step"],
            "scheme": s["scheme"],
            "target": s["target"],
            "final_loss": h[-1]["loss"] if h else None,
            "model": s["model"],
            "family": s["family"],
            **{k: s[k] for k in _META_SETTINGS},
            "unet_evals": {**self.counter.counts(), "micro_steps": len(h) * self.accum},
            "loss_history": [r["loss"] for r in h],
            "fingerprint": self.problem.cond.fingerprint(),
        }
        d = Delta({k: v.detach() for k, v in self.params.items()}, meta)
        d.history = h
        return d


@torch.no_grad()
def heldout_loss(
    pipe,
    config,
    delta: Delta,
    *,
    samples: int = 16,
    seed: int = 12345,
    target: str = "x0",
    scale_batch_size: int = 4,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> float:
    """The objective's mean loss for a fixed ``delta`` on ``samples`` fresh draws (as the original makes them).

    The same ``seed`` gives the same (prompt, τ, α, x_t) draws for every delta: a fair comparison of
    deltas learned differently (e.g. by the two schemes).
    """
    checks.integer(samples, "samples", minimum=1)
    p = Problem.with_defaults(
        pipe,
        config,
        seed=seed,
        target=target,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        scale_batch_size=scale_batch_size,
        height=height,
        width=width,
    )
    delta.check(p.cond)
    vectors = {k: v.to(p.device) for k, v in delta.vectors.items()}
    total = 0.0
    for n in range(samples):
        k, i, alpha = p.draw(n)
        combo = p.order(n)
        c = p.combo(combo)
        x = p.sample(combo, ("noise", "heldout", n), k)
        pt, pp, pn = p.predict(x, i, c.emb).chunk(3)
        total += float(p.loss(c, vectors, x, i, alpha, pt, pp - pn))
    return total / samples


@torch.no_grad()
def micro_step(
    pipe,
    config,
    delta: Delta | None = None,
    *,
    combo: int = 0,
    tau: float = 0.6,
    alpha: float = 3.0,
    seed: int = 0,
    target: str = "x0",
    num_steps: int | None = None,
    guidance_scale: float | None = None,
) -> dict:
    """One micro-step of the objective, laid out for inspection (chapter 03): every tensor it uses.

    Returns the prompt, k (steps sampled), the timestep, x_t, and the x0/ε predictions for the target,
    positive and negative prompts, the regression goal ``pred_target + α·(pred_pos − pred_neg)``, the
    prediction with ``α·delta`` on the subject (zero delta if None) and the loss between them.
    """
    p = Problem.with_defaults(
        pipe, config, seed=seed, target=target, num_steps=num_steps, guidance_scale=guidance_scale, scale_batch_size=1
    )
    k, i = int(round(tau * p.N)), int(round(tau * (p.N - 1)))
    c = p.combo(combo)
    x = p.sample(combo, ("noise", "explain", 0), k)
    pt, pp, pn = p.predict(x, i, c.emb).chunk(3)
    vectors = {
        n: (delta.vectors[n] if delta is not None else torch.zeros(d)).to(p.device) for n, d in p.cond.dims.items()
    }
    a = torch.tensor([float(alpha)])
    goal = pt + alpha * (pp - pn)
    pred = p.predict(x, i, p.edited(c, vectors, a))
    return {
        "prompt": c.text,
        "k": k,
        "timestep": int(p.sched.timesteps[i]),
        "x_t": x,
        "target": pt,
        "positive": pp,
        "negative": pn,
        "goal": goal,
        "edited": pred,
        "loss": float(F.mse_loss(pred, goal)),
        "prediction": target,
    }
