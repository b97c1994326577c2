"""Layout guidance (Chen, Laina & Vedaldi, WACV 2024) as a ``generate`` step hook, backward or forward.

Backward guidance: during the first steps, an energy on the cross-attention maps of each boxed
phrase — (1 − attention inside its box / all its attention)², averaged — is lowered by a few
gradient steps on the latents, with the UNet run on the conditional embeddings only.
Forward guidance (the paper's baseline): the phrase's attention is moved into its box directly in
the forward pass. Both are attention listeners (:mod:`reprolib.attention`) on a plain loop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import checks
from ..attention import AttentionStore, attach, detach, grid_shape, run_until_recorded, select_layers
from ..conditioning import Embeddings, TextConditioning, Tokens
from .boxes import Target, box_mask, targets_for
from .energy import layout_energy, step_scale


@dataclass
class LayoutConfig:
    """Settings of layout guidance; defaults are the official code's (SD 1.4, LMS, 50 steps).

    ``eta``: loss scale η (the official ``loss_scale``). ``max_iters`` gradient steps per step while
    the energy is above ``loss_threshold``, during the first ``guidance_steps`` steps. ``layers``:
    as :func:`reprolib.attention.select_layers`; ``None`` is
    :func:`reprolib.attention.default_layers` (mid block + first cross-attention up block).
    ``reset_each_step``: measure the energy afresh every step and update only while it is above the
    threshold. ``False`` does exactly what the official loop does: its loss variable is never reset and
    the loop tests the loss of the *previous* evaluation, so every evaluation makes its update (also the
    one that first falls under the threshold), and after that the image is never guided again.
    ``mode``: ``"backward"`` (the method) or ``"forward"`` (the baseline; strength ``forward_strength`` = λ).
    ``gradient_checkpointing`` trades compute for memory in the guidance pass.
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
            raise checks.InputError(f"mode must be 'backward' or 'forward', not {self.mode!r}")
        checks.integer(self.max_iters, "max_iters", minimum=0)
        checks.integer(self.guidance_steps, "guidance_steps", minimum=0)
        checks.number(self.eta, "eta", optional=False)
        checks.number(self.loss_threshold, "loss_threshold", optional=False)
        checks.number(self.forward_strength, "forward_strength", optional=False, low=0.0, high=1.0)


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


class LayoutGuidance:
    """A :class:`~reprolib.protocols.StepHook`: layout guidance, backward (the method) or forward (the baseline).

    Backward: during the first ``guidance_steps`` steps, lower the energy of the boxed phrases'
    attention by gradient steps on the latents (:meth:`energy`, :func:`.energy.step_scale`). Forward:
    install :class:`ForwardBias`, which moves the attention into the boxes inside the UNet's own pass.

    ``tokens_list``: the batch's tokenized prompts; ``boxes``: ``{phrase: box or [boxes]}``,
    normalised (x0, y0, x1, y1) from the top left. Use it as a context manager around the loop
    (``generate`` does). ``history`` has one dict per energy evaluation: step, iter, energy, updated.
    """

    def __init__(
        self,
        cond: TextConditioning,
        tokens_list: Sequence[Tokens],
        boxes: dict,
        config: LayoutConfig | None = None,
        *,
        height: int,
        width: int,
    ):
        self.cond, self.config = cond, config or LayoutConfig()
        self.targets = targets_for(tokens_list, boxes)
        self.height, self.width = height, width
        unet = cond.pipe.unet
        self.layers = select_layers(unet, "default" if self.config.layers is None else self.config.layers)
        self.history: list[dict] = []
        self._last: torch.Tensor | None = None  # never-reset mode: each image's last energy
        self._checkpointing_was = None
        if self.config.mode == "forward":
            self.listener = ForwardBias(self.targets, self.config.forward_strength, aspect=height / width)
            self.store = None
        else:
            # stop the UNet once the last guidance layer ran (its up path is not needed), except under
            # checkpointing, whose recomputation must see the same forward as the first pass
            self.store = AttentionStore(
                unet,
                self.layers,
                keep_grad=True,
                aspect=height / width,
                stop_when_full=not self.config.gradient_checkpointing,
            )
            self.store.active = False
            self.listener = self.store
        self._entered = False
        self._warned = False  # one non-finite warning per run, not one per step

    def __enter__(self) -> LayoutGuidance:
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
                run_until_recorded(
                    self.cond.unet, sched.scale_model_input(latents, t), t, cond_embeddings, self.height, self.width
                )
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

    def before_step(self, i: int, t, latents: torch.Tensor, cond_embeddings: Embeddings) -> torch.Tensor:
        if not self._entered:
            raise RuntimeError(
                "LayoutGuidance is a context manager: use `with guidance:` around the loop "
                "(generate does this for its hooks)"
            )
        if self.config.mode == "forward":
            self.listener.active = i < self.config.guidance_steps
            return latents
        if i >= self.config.guidance_steps:
            return latents
        return self._backward_step(i, t, latents, cond_embeddings)

    def _active(self, values: torch.Tensor) -> torch.Tensor:
        """Which images this evaluation updates.

        Reset each step (default): those whose energy, just measured, is above the threshold. Never reset
        (the official loop): those whose *previous* evaluation was above it — the loop tests the loss it
        computed last, so the evaluation that first falls under the threshold still makes its update, and
        after that the image is never guided again (its last energy is kept across steps).
        """
        threshold = self.config.loss_threshold
        if self.config.reset_each_step:
            return values > threshold
        active = torch.ones_like(values, dtype=torch.bool) if self._last is None else self._last > threshold
        self._last = values if self._last is None else torch.where(active, values, self._last)
        return active

    def _finished(self) -> bool:
        """Never-reset mode: every image's last energy is under the threshold, so guidance is over."""
        return (
            not self.config.reset_each_step
            and self._last is not None
            and not bool((self._last > self.config.loss_threshold).any())
        )

    def _warn(self, what: str) -> None:
        """The method's answer to NaN/inf: skip the update (the latents stay as they were), said once per run."""
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"layout guidance: {what}; update skipped, and any later ones are skipped silently "
                "(try float32 or a smaller eta)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _backward_step(self, i: int, t, latents: torch.Tensor, cond_embeddings: Embeddings) -> torch.Tensor:
        """Up to ``max_iters`` gradient steps on the latents while an image's energy is above the threshold."""
        cfg, sched = self.config, self.cond.pipe.scheduler
        for it in range(cfg.max_iters):
            if self._finished():
                break
            x = latents.detach().requires_grad_(True)
            e = self.energy(x, t, cond_embeddings, step=i, per_image=True)
            values = e.detach().float()
            value = float(values.mean())
            record = {"step": i, "iter": it, "energy": value, "updated": False}
            self.history.append(record)
            if not math.isfinite(value):
                self._warn(f"energy is {value} at step {i}, iteration {it}")
                break
            # each image is guided on its own (images never interact in the UNet, so masking its energy
            # out of the sum leaves the others' gradients unchanged)
            active = self._active(values)
            if not active.any():
                break
            grad = self._gradient(cfg.eta * (e * active.to(e.dtype)).sum(), x)
            if not torch.isfinite(grad).all():
                self._warn(f"non-finite gradient at step {i}, iteration {it}")
                break
            latents = (x - step_scale(sched, t) * grad).detach().to(latents.dtype)
            record["updated"] = True
        return latents
