"""One plain denoising loop for every control: attribute edits, delayed application, layout hooks.

It is the loop ``pipe(...)`` runs (classifier-free guidance, ``scheduler.step``), written out so
that embeddings can change between steps and guidance can move the latents; with no edits
and no hooks it reproduces ``pipe(...)`` exactly for the same initial latents.
"""
from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .conditioning import Embeddings, TextConditioning
from .tokens import token_span

Edit = tuple  # (Delta, pattern, alpha)
DELAY = 0.2  # fraction of the steps before edits apply (Baumann et al.'s notebook)


def first_edited_step(steps: int, delay: float) -> int:
    """Index of the first step that uses the edited prompt; the steps before it are the same for every α."""
    return round(delay * steps)


@dataclass(frozen=True)
class Partial:
    """A sampling loop stopped before step ``step``: its latents and its scheduler (a private copy).

    Made by ``generate(..., until=k)`` and continued by ``generate(..., resume=partial)``. Every α of
    an edit with ``delay`` shares the unedited first steps, so a slider computes them once.
    """

    step: int
    steps: int
    latents: torch.Tensor
    scheduler: object  # multistep schedulers carry history between steps: keep it with the latents

    def continued(self):
        """A fresh copy of the scheduler, so one Partial can be resumed many times."""
        return copy.deepcopy(self.scheduler)


def defaults(pipe) -> tuple[int, float]:
    """(steps, guidance scale): 25 and 5 for the shapes world, 50 and 7.5 for real models."""
    from .pipelines import SHAPES_DIR

    name = str(getattr(pipe, "name_or_path", "") or "")
    return (25, 5.0) if name and Path(name).resolve() == SHAPES_DIR.resolve() else (50, 7.5)


def apply_edits(cond: TextConditioning, emb: Embeddings, edits: Iterable[Edit]) -> Embeddings:
    """``emb`` with α·Δ added to each edit's tokens, per encoder, in every prompt of the batch.

    The pooled embedding is left as it is (as in Baumann et al.): deltas are token-wise.
    """
    edits = list(edits)
    if not edits:
        return emb
    out = emb.clone()
    for delta, pattern, alpha in edits:
        delta.check(cond)
        for b, toks in enumerate(out.tokens):
            pos = token_span(toks, pattern)
            for name, vec in delta.vectors.items():
                s = out.states[name]
                s[b, pos] += alpha * vec.to(s.device, s.dtype)
    return out


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Gaussian latents, one CPU generator per seed: the same image for a seed on any device or batch."""
    c = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    lat = torch.cat([torch.randn(1, c, height // f, width // f, generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds])
    return lat.to(pipe.unet.device, pipe.unet.dtype) * pipe.scheduler.init_noise_sigma


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents → images (``output_type`` as diffusers': "pil", "np" or "pt")."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    if upcast:
        vae.to(torch.float16)
    return pipe.image_processor.postprocess(image.float(), output_type=output_type)


def generate(pipe, prompt: str | Sequence[str], *, seed: int | Sequence[int] = 0, steps: int | None = None,
             guidance_scale: float | None = None, negative_prompt: str | None = None,
             edits: Iterable[Edit] = (), delay: float = DELAY, boxes: dict | None = None, layout=None,
             hooks: Sequence = (), height: int | None = None, width: int | None = None,
             latents: torch.Tensor | None = None, output_type: str = "pil", until: int | None = None,
             resume: Partial | None = None):
    """Sample images, optionally with attribute edits (``(delta, pattern, alpha)``) and layout boxes.

    ``delay``: fraction of the first steps that use the unedited prompt (0.2 as in Baumann et al.).
    ``boxes``: ``{phrase: box or [boxes]}``, boxes normalised ``(x0, y0, x1, y1)`` from the top left;
    ``layout`` is a :class:`reprolib.layout.LayoutConfig` for them. ``hooks`` are objects with
    ``before_step(i, t, latents, cond) -> latents`` (and optionally context-manager methods).
    Returns one image for one prompt and seed, else a list (``output_type`` as diffusers').

    ``until=k`` stops before step ``k`` and returns a :class:`Partial`; ``resume=partial`` runs the
    remaining steps from it (same prompts, seeds and steps as the call that made it): the result is
    identical to one uninterrupted call.
    """
    single = isinstance(prompt, str) and isinstance(seed, int)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if len(prompts) == 1 and len(seeds) > 1:
        prompts = prompts * len(seeds)
    if len(seeds) == 1 and len(prompts) > 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one of each or equal numbers")
    d_steps, d_cfg = defaults(pipe)
    steps = steps or d_steps
    guidance_scale = d_cfg if guidance_scale is None else guidance_scale
    if not 0 <= delay <= 1:
        raise ValueError(f"delay is a fraction of the steps, between 0 and 1; got {delay}")
    cond = TextConditioning(pipe)
    dh, dw = cond.default_size()
    height, width = height or dh, width or dw

    plain = cond.encode(prompts)
    edited = apply_edits(cond, plain, edits)
    uncond = cond.encode_negative(negative_prompt, len(prompts))
    hooks = list(hooks)
    if boxes:
        from .layout import BackwardGuidance

        hooks.append(BackwardGuidance(cond, plain.tokens, boxes, layout, height=height, width=width))

    if until is not None and not 0 <= until <= steps:
        raise ValueError(f"until is a step index between 0 and steps={steps}; got {until}")
    if resume is not None:
        if resume.steps != steps or len(resume.latents) != len(prompts):
            raise ValueError(f"this Partial was made for {resume.steps} steps and {len(resume.latents)} images; "
                             f"this call has {steps} steps and {len(prompts)} images: resume with the same ones")
        if latents is not None:
            raise ValueError("give latents or resume, not both: a Partial carries its own latents")
        sched, x, start = resume.continued(), resume.latents.clone(), resume.step
    else:
        sched, start = pipe.scheduler, 0
        sched.set_timesteps(steps, device=cond.device)
        x = (initial_latents(pipe, seeds, height, width) if latents is None
             else latents.to(cond.device, pipe.unet.dtype))
    stop = steps if until is None else until
    first_edited = first_edited_step(steps, delay)
    # inference mode skips autograd's bookkeeping (~10% faster on the shapes world); hooks such as
    # layout guidance take gradients through the latents, so with hooks plain no_grad is used
    no_grad = torch.no_grad if hooks else torch.inference_mode
    with ExitStack() as stack:
        for h in hooks:
            if hasattr(h, "__enter__"):
                stack.enter_context(h)
        for i, t in enumerate(sched.timesteps):
            if i < start:
                continue
            if i >= stop:
                return Partial(step=i, steps=steps, latents=x.clone(), scheduler=copy.deepcopy(sched))
            c = edited if i >= first_edited else plain
            for h in hooks:
                x = h.before_step(i, t, x, c)
            with no_grad():
                both = Embeddings.cat([uncond, c])
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps_u, eps_c = cond.unet(inp, t, both, height, width).chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
                x = sched.step(eps, t, x, return_dict=False)[0]
    x = x.clone()  # outside inference mode: a normal tensor, usable with autograd
    if until is not None:
        return Partial(step=steps, steps=steps, latents=x, scheduler=copy.deepcopy(sched))
    if output_type == "latent":
        return x
    images = decode(pipe, x, output_type)
    return images[0] if single else images
