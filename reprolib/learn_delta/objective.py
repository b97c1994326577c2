"""The objective of Baumann et al.'s ``learn_delta.py``: what one micro-step samples, predicts and regresses.

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

**What is predicted.** The original's ``predict_eps`` returns ``(x_t − √(1−ᾱ)·ε̂)/√ᾱ`` (``√ᾱ·x_t −
√(1−ᾱ)·v̂`` for v-prediction): an *x0*-prediction, despite its name. Since x̂0 − x̂0' = −(ε̂ − ε̂')/√SNR,
the x0-loss is the ε-loss weighted by 1/SNR(t) = (1−ᾱ)/ᾱ: noisy timesteps, where layout and size are
decided, dominate, and nearly clean ones hardly count. ``target="x0"`` (default) is the original;
``target="eps"`` trains on ε-predictions (uniform weighting over t).

Randomness is a pure function of (seed, stream, index) (see :func:`seeded`): no hidden RNG state, so a
run resumed from a checkpoint draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from .. import checks
from ..conditioning import Embeddings, TextConditioning
from ..contrastive import subject_span
from ..generate import defaults
from ..prompts import PromptConfig, load_config

TARGETS = ("x0", "eps")
SCALE_RANGE = (0.1, 5.0)


def seeded(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator for one (seed, stream, index): no hidden RNG state, so resume is exact."""
    h = hashlib.sha256(repr((int(seed),) + keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def to_prediction(out: torch.Tensor, x: torch.Tensor, t, sched, target: str) -> torch.Tensor:
    """A UNet output at (x, t) as an x0- or ε-prediction (``target``), in float32 (differentiable)."""
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
class Combination:
    """One (prefix, pair): its three prompts encoded, and the target prompt's subject tokens per encoder."""

    text: str
    emb: Embeddings  # rows: target, positive, negative
    guided: Embeddings  # rows: unconditional, target (for sampling with guidance)
    masks: dict[str, torch.Tensor]  # encoder → (L,) 1.0 on the subject's tokens


class Problem:
    """Everything one run needs: prompts, schedule, seeded draws, sampling, predictions and the loss."""

    def __init__(
        self,
        pipe,
        config: PromptConfig,
        *,
        seed: int,
        target: str,
        num_steps: int,
        guidance_scale: float,
        scale_batch_size: int,
        height: int | None = None,
        width: int | None = None,
    ):
        self.pipe, self.config, self.seed, self.target = pipe, config, seed, target
        # NaN guidance would sample x_t unguided-and-NaN and train on nothing: refused here, for every caller
        checks.number(guidance_scale, "guidance_scale", optional=False)
        checks.integer(num_steps, "num_steps", minimum=1)
        self.S, self.N, self.cfg = scale_batch_size, num_steps, guidance_scale
        self.cond = TextConditioning(pipe)
        # read once: diffusers' ModelMixin.device/.dtype walk every module on each access
        self.device, self.dtype = self.cond.device, pipe.unet.dtype
        dh, dw = self.cond.default_size()  # the original samples at the pipeline's default size
        self.h, self.w = dh if height is None else height, dw if width is None else width
        # the original swaps in DDIM built from the pipeline's own config; a private copy leaves pipe alone
        self.sched = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sched.set_timesteps(num_steps, device=self.device)
        self.combos = config.combinations()
        if not self.combos:
            raise ValueError(f"prompt config {config.tag!r} has no (prefix, pair) combinations")
        self._masks = [self._subject_masks(i) for i in range(len(self.combos))]  # fails early on a bad pattern
        self._encoded: dict[int, Combination] = {}
        self._orders: dict[int, torch.Tensor] = {}
        self.uncond = self.cond.encode_negative(None, 1)

    @classmethod
    def with_defaults(
        cls, pipe, config, *, num_steps: int | None = None, guidance_scale: float | None = None, **kwargs
    ) -> Problem:
        """A Problem for ``config`` (anything :func:`load_config` takes), with the model's default DDIM steps
        and guidance scale where not given (:func:`reprolib.generate.defaults`)."""
        config = load_config(config)
        d_steps, d_cfg = defaults(pipe)
        return cls(
            pipe,
            config,
            num_steps=int(d_steps if num_steps is None else num_steps),
            guidance_scale=float(d_cfg if guidance_scale is None else guidance_scale),
            **kwargs,
        )

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

    def combo(self, i: int) -> Combination:
        """Combination ``i``, encoded on first use."""
        if i not in self._encoded:
            prefix, pair = self.combos[i]
            texts = [PromptConfig.join(prefix, s) for s in (pair.target, pair.positive, pair.negative)]
            emb = self.cond.encode(texts)
            self._encoded[i] = Combination(texts[0], emb, Embeddings.cat([self.uncond, emb[0]]), self._masks[i])
        return self._encoded[i]

    def order(self, n: int) -> int:
        """The n-th combination: a fresh shuffle of all of them per epoch (the original's DataLoader)."""
        c = len(self.combos)
        e = n // c
        if e not in self._orders:
            self._orders = {e: torch.randperm(c, generator=seeded(self.seed, "order", e))}
        return int(self._orders[e][n % c])

    def draw(self, n: int) -> tuple[int, int, torch.Tensor]:
        """(k, i, α) of micro-step n: k = round(N·τ) steps sampled, prediction at timesteps[round((N-1)·τ)]."""
        tau = torch.rand(1, generator=seeded(self.seed, "tau", n))
        k = int(round(float(tau.item()) * self.N))  # as the original: Python round on the float
        i = int(torch.round(tau * (self.N - 1)).item())  # and torch.round on the float32 tensor
        g = seeded(self.seed, "scale", n)
        sign = (torch.rand(self.S, generator=g) > 0.5).float() * 2 - 1
        alpha = sign * ((SCALE_RANGE[1] - SCALE_RANGE[0]) * torch.rand(self.S, generator=g) + SCALE_RANGE[0])
        return k, i, alpha

    def noise(self, key: tuple) -> torch.Tensor:
        """The seeded initial latent of one trajectory (``key``: its stream and index)."""
        f = self.pipe.vae_scale_factor
        x = torch.randn(
            1, self.pipe.unet.config.in_channels, self.h // f, self.w // f, generator=seeded(self.seed, *key)
        )
        return x.to(self.device, self.dtype) * self.sched.init_noise_sigma

    @torch.no_grad()
    def sample(self, combo: int, noise_key: tuple, k: int, keep: bool = False):
        """DDIM with guidance for ``k`` steps from seeded noise; with ``keep`` every x and conditional output."""
        c = self.combo(combo)
        x = self.noise(noise_key)
        xs, outs = [x], []
        for t in self.sched.timesteps[:k]:
            if self.cfg > 1:  # as the pipeline: guidance only above 1
                u, cc = self.cond.unet(
                    self.sched.scale_model_input(torch.cat([x, x]), t), t, c.guided, self.h, self.w
                ).chunk(2)
                eps = u + self.cfg * (cc - u)
            else:
                cc = eps = self.cond.unet(self.sched.scale_model_input(x, t), t, c.guided[1], self.h, self.w)
            x = self.sched.step(eps, t, x, return_dict=False)[0]
            if keep:
                xs.append(x)
                outs.append(cc)
        return (xs, outs) if keep else x

    def predict(self, x: torch.Tensor, i: int, emb: Embeddings) -> torch.Tensor:
        """Guidance-free predictions (x0 or ε) at timesteps[i] for each row of ``emb``."""
        t = self.sched.timesteps[i]
        xb = x.expand(len(next(iter(emb.states.values()))), *x.shape[1:])
        out = self.cond.unet(self.sched.scale_model_input(xb, t), t, emb, self.h, self.w)
        return to_prediction(out, xb, t, self.sched, self.target)

    def edited(self, c: Combination, vectors: dict[str, torch.Tensor], alpha: torch.Tensor) -> Embeddings:
        """The target embedding once per α, with α·Δ on the subject's tokens (differentiable in Δ)."""
        a = alpha.to(self.device).view(-1, 1, 1)
        states = {
            name: s[:1].float() + a * c.masks[name].view(1, -1, 1) * vectors[name].view(1, 1, -1)
            for name, s in c.emb.states.items()
        }
        pooled = None if c.emb.pooled is None else c.emb.pooled[:1].expand(len(alpha), -1)
        # a model trained with its padding masked reads the edited prompt through the same mask
        mask = None if c.emb.mask is None else c.emb.mask[:1].expand(len(alpha), -1)
        return Embeddings(states, pooled, mask=mask)

    def loss(
        self,
        c: Combination,
        vectors: dict[str, torch.Tensor],
        x: torch.Tensor,
        i: int,
        alpha: torch.Tensor,
        pred_t: torch.Tensor,
        diff: torch.Tensor,
    ) -> torch.Tensor:
        """MSE between the edited prediction and the goal ``pred_t + α·diff`` (diff = pred_pos − pred_neg)."""
        pred = self.predict(x, i, self.edited(c, vectors, alpha))
        goal = pred_t + alpha.to(pred.device).view(-1, 1, 1, 1) * diff
        return F.mse_loss(pred, goal)
