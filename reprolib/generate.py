"""One plain denoising loop for every control: attribute edits, delayed application, step hooks.

It is the loop ``pipe(...)`` runs (classifier-free guidance, ``scheduler.step``), written out so
that embeddings can change between steps and guidance can move the latents; with no edits
and no hooks it reproduces ``pipe(...)`` exactly for the same initial latents.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from . import checks
from .blend import THRESHOLD, LocalBlend, subject_anchor
from .checks import NonFiniteError
from .conditioning import Embeddings, TextConditioning
from .edits import Edit, apply_edits
from .layout import LayoutConfig, LayoutGuidance
from .protocols import StartingPoint, StepHook
from .tokens import token_span

DELAY = 0.2  # fraction of the steps before edits apply (Baumann et al.'s notebook)
# edits of an inverted picture: α rises linearly over this share of the steps after the delay instead of
# switching on at once (chosen by benchmarks/inversion.py --fade-in: the abrupt switch breaks a shrunk
# subject into pieces); generation from noise keeps the paper's switch (0)
FADE_IN = 0.16
# an inverted picture's edits reach cross-attention's values alone (Edit.reach): on the bar's 32 scenes and a
# second draw, ρ and leak bars held on 32 and 30 curves of 32, against 31 and 29/28 for the paper's keys+values
INVERSION_REACH = "values"
SD_DEFAULTS = {"steps": 50, "guidance_scale": 7.5}  # Stable Diffusion's pipelines


def first_edited_step(steps: int, delay: float, own: float | None = None) -> int:
    """Index of the first step that uses the edited prompt; the steps before it are the same for every α.
    ``own``: an edit's own delay (``Edit.delay``), which overrides ``delay`` unless None."""
    return round((delay if own is None else own) * steps)


def fade_steps(fade_in: float | None, steps: int, inverted: bool) -> int:
    """How many edited steps the edits take to reach their full α (``FADE_IN`` for an inversion's edits)."""
    if fade_in is None:
        fade_in = FADE_IN if inverted else 0.0
    return round(checks.number(fade_in, "fade_in (a fraction of the steps)", optional=False, low=0, high=1) * steps)


def edit_stages(
    cond: TextConditioning, plain: Embeddings, edits: list[Edit], steps: int, delay: float, default_reach: str
) -> list[tuple[int, Embeddings]]:
    """(first step, text states) for each step at which edits begin (``Edit.delay``, else ``delay``), in order;
    each stage's states hold every edit begun by then."""
    first = [first_edited_step(steps, delay, e.delay) for e in edits]
    return [
        (f, apply_edits(cond, plain, [e for e, g in zip(edits, first) if g <= f], default_reach))
        for f in sorted(set(first))
    ]


def prompt_at(i: int, plain: Embeddings, stages: list[tuple[int, Embeddings]], fade: int) -> Embeddings:
    """The text states of step ``i``: unedited before the first stage, then each stage's edits rising over
    ``fade`` steps from the states before it."""
    before, now, start = plain, plain, 0
    for first, edited in stages:
        if i < first:
            break
        before, now, start = now, edited, first
    if now is plain or i >= start + fade:
        return now
    return before.towards(now, (i - start + 1) / (fade + 1))


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
    """(steps, guidance scale) for ``pipe``: what its model folder declares, else SD's 50 and 7.5.

    :func:`reprolib.pipelines.load_pipeline` reads a folder's ``reprolib.json`` into
    ``pipe.reprolib_defaults``; the shapes world declares 25 steps and guidance 5.
    """
    d = {**SD_DEFAULTS, **(getattr(pipe, "reprolib_defaults", None) or {})}
    return int(d["steps"]), float(d["guidance_scale"])


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Gaussian latents, one CPU generator per seed: the same image for a seed on any device or batch."""
    c = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    lat = torch.cat(
        [torch.randn(1, c, height // f, width // f, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )
    return lat.to(pipe.unet.device, pipe.unet.dtype) * pipe.scheduler.init_noise_sigma


@contextmanager
def vae_precision(vae):
    """The VAE in fp32 for the block when it is fp16 and asks to be upcast (SDXL's overflows in fp16)."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents → images (``output_type`` as diffusers': "pil", "np" or "pt")."""
    with vae_precision(pipe.vae) as vae:
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(image.float(), output_type=output_type)


def _batch(prompt: str | Sequence[str], seed: int | Sequence[int]) -> tuple[list[str], list[int]]:
    """Prompts and seeds of equal length: one of either is repeated to match the other."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    seeds = [seed] if isinstance(seed, numbers.Integral) else list(seed)
    if len(prompts) == 1 and len(seeds) > 1:
        prompts = prompts * len(seeds)
    if len(seeds) == 1 and len(prompts) > 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one of each or equal numbers")
    return prompts, seeds


def _start(
    pipe,
    cond: TextConditioning,
    seeds: list[int],
    steps: int,
    height: int,
    width: int,
    latents: torch.Tensor | None,
    resume: Partial | None,
    start: StartingPoint | None = None,
):
    """(scheduler, latents, first step): fresh noise, given latents, an inversion's, or where a Partial stopped."""
    if latents is not None and start is not None:
        raise ValueError("give latents or inversion, not both: an inversion carries its own latents")
    if resume is None and start is not None:
        return start.scheduler(), start.latents.to(cond.device, pipe.unet.dtype).repeat(len(seeds), 1, 1, 1), 0
    if resume is None:
        sched = pipe.scheduler
        sched.set_timesteps(steps, device=cond.device)
        x = initial_latents(pipe, seeds, height, width) if latents is None else latents.to(cond.device, pipe.unet.dtype)
        return sched, x, 0
    if resume.steps != steps or len(resume.latents) != len(seeds):
        raise ValueError(
            f"this Partial was made for {resume.steps} steps and {len(resume.latents)} images; "
            f"this call has {steps} steps and {len(seeds)} images: resume with the same ones"
        )
    if latents is not None:
        raise ValueError("give latents or resume, not both: a Partial carries its own latents")
    return resume.continued(), resume.latents.clone(), resume.step


def _hooks(
    hooks: Sequence[StepHook],
    cond: TextConditioning,
    plain: Embeddings,
    boxes: dict | None,
    layout: LayoutConfig | None,
    height: int,
    width: int,
) -> list[StepHook]:
    """The caller's hooks, checked, plus layout guidance when there are boxes."""
    hooks = list(hooks)
    for h in hooks:
        if not isinstance(h, StepHook):
            raise TypeError(
                f"hooks take reprolib.protocols.StepHook objects (before_step, __enter__, __exit__); "
                f"{type(h).__name__} lacks some of them"
            )
    if boxes:
        hooks.append(LayoutGuidance(cond, plain.tokens, boxes, layout, height=height, width=width))
    return hooks


def _guided_step(
    cond: TextConditioning,
    sched,
    x: torch.Tensor,
    t,
    uncond: Embeddings,
    c: Embeddings,
    guidance_scale: float,
    height: int,
    width: int,
) -> torch.Tensor:
    """One scheduler step with classifier-free guidance (both branches in one UNet batch, as diffusers)."""
    both = Embeddings.cat([uncond, c])
    inp = sched.scale_model_input(torch.cat([x, x]), t)
    eps_u, eps_c = cond.unet(inp, t, both, height, width).chunk(2)
    eps = eps_u + guidance_scale * (eps_c - eps_u)
    x = sched.step(eps, t, x, return_dict=False)[0]
    if not torch.isfinite(x).all():  # never decode NaN into a black image
        raise NonFiniteError(
            f"sampling produced NaN/inf latents at timestep {int(t)} (guidance_scale={guidance_scale}); "
            "in half precision try dtype='fp32' or 'bf16', and check the edits' α and the layout's eta"
        )
    return x


def _local_blend(
    local_blend: bool | float | str | None, cond, plain: Embeddings, edits, inversion, first_edited: int, height, width
) -> LocalBlend | None:
    """The blend hook for edits of an inverted picture: anchored by default there (chosen by measurement:
    ``benchmarks/inversion.py --blend``), never without an inversion's path to keep. ``True`` is the blend
    alone; a number is its threshold (a fraction of the summed map's maximum); ``"anchored"`` also keeps
    the edit near where its subject is (:func:`reprolib.blend.subject_anchor`)."""
    path = getattr(inversion, "path", None)
    if local_blend is None:
        local_blend = "anchored" if path is not None else False
    if local_blend is False:
        return None
    anchored = local_blend == "anchored"
    threshold = (
        THRESHOLD
        if local_blend is True or anchored
        else checks.number(local_blend, "local_blend (True, False, 'anchored' or a threshold)", low=0.01, high=0.99)
    )
    if path is None:
        raise checks.InputError(
            f"local_blend={local_blend!r} keeps an inverted picture outside the edit, and there is none: pass "
            "inversion=reprolib.invert(...), or leave local_blend out"
        )
    if not edits:
        return None  # nothing is edited: the picture comes back as it was
    positions = [sorted({p for e in edits for p in token_span(toks, e[1])}) for toks in plain.tokens]
    others = [[i for i, s in enumerate(t.special) if not s and i not in p] for t, p in zip(plain.tokens, positions)]
    anchor = subject_anchor(cond, plain, positions, inversion, aspect=height / width) if anchored else None
    return LocalBlend(
        cond.pipe.unet, positions, path, first_edited, threshold=threshold, aspect=height / width, others=others,
        anchor=anchor,
    )  # fmt: skip


def _inversion_defaults(cond: TextConditioning, inversion: StartingPoint, steps, negative_prompt, height, width):
    """(steps, guidance scale, negative prompt, height, width) defaults from an inversion, checked against the model."""
    inversion.check(cond, steps)
    negative_prompt = inversion.negative_prompt if negative_prompt is None else negative_prompt
    height, width = height or inversion.height, width or inversion.width
    return inversion.steps, inversion.guidance_scale, negative_prompt, height, width


def generate(
    pipe,
    prompt: str | Sequence[str],
    *,
    seed: int | Sequence[int] = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    edits: Iterable[Edit] = (),
    delay: float = DELAY,
    boxes: dict | None = None,
    layout: LayoutConfig | None = None,
    hooks: Sequence[StepHook] = (),
    height: int | None = None,
    width: int | None = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    until: int | None = None,
    resume: Partial | None = None,
    inversion: StartingPoint | None = None,
    local_blend: bool | float | str | None = None,
    fade_in: float | None = None,
):
    r"""Sample images, optionally with attribute edits (``(delta, pattern, alpha)``) and layout boxes.

    ``delay``: fraction of the first steps that use the unedited prompt (0.2 as in Baumann et al.); an
    edit's own ``Edit.delay`` overrides it for that edit.
    ``fade_in``: fraction of the steps after it over which α rises linearly to its value (default:
    ``FADE_IN`` for edits of an inversion, 0, the paper's switch, otherwise). An edit whose ``reach`` is None
    reaches the values alone on an inversion (``INVERSION_REACH``), keys and values (the paper) otherwise.
    ``boxes``: ``{phrase: box or [boxes]}``, boxes normalised ``(x0, y0, x1, y1)`` from the top left;
    ``layout`` is a :class:`reprolib.layout.LayoutConfig` for them. ``hooks``: more
    :class:`~reprolib.protocols.StepHook`\ s. Returns one image for one prompt and seed, else a list
    (``output_type`` as diffusers').

    ``until=k`` stops before step ``k`` and returns a :class:`Partial`; ``resume=partial`` runs the
    remaining steps from it (same prompts, seeds and steps as the call that made it): the result is
    identical to one uninterrupted call.

    ``inversion``: a :class:`reprolib.inversion.Inversion` (any :class:`~reprolib.protocols.StartingPoint`)
    to start from instead of noise; its steps, guidance scale, negative prompt and size are the defaults,
    and with no edits or boxes the picture it was made from comes back. ``local_blend`` keeps the
    picture's own latents outside the edited words' attention, and where another word attends more
    (:class:`reprolib.blend.LocalBlend`); ``"anchored"`` (the default for edits of an inversion) also keeps
    the edit near where its subject is; ``True``: without the anchor; a number: the mask's threshold.
    """
    d_steps, d_cfg = defaults(pipe)
    cond = TextConditioning(pipe)
    if inversion is not None:
        d_steps, d_cfg, negative_prompt, height, width = _inversion_defaults(
            cond, inversion, steps, negative_prompt, height, width
        )
    edits = checks.sampling(
        pipe,
        prompt,
        seed,
        steps=steps,
        default_steps=d_steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        edits=edits,
        delay=delay,
        height=height,
        width=width,
    )
    single = isinstance(prompt, str) and isinstance(seed, numbers.Integral)
    prompts, seeds = _batch(prompt, seed)
    steps = d_steps if steps is None else steps
    guidance_scale = d_cfg if guidance_scale is None else guidance_scale
    if not 0 <= delay <= 1:
        raise ValueError(f"delay is a fraction of the steps, between 0 and 1; got {delay}")
    if until is not None and not 0 <= until <= steps:
        raise ValueError(f"until is a step index between 0 and steps={steps}; got {until}")
    dh, dw = cond.default_size()
    height, width = dh if height is None else height, dw if width is None else width

    plain = cond.encode(prompts)
    edits = [Edit(*e) for e in edits]  # checked above
    reach = INVERSION_REACH if inversion is not None else "keys+values"
    stages = edit_stages(cond, plain, edits, steps, delay, reach)
    uncond = cond.encode_negative(negative_prompt, len(prompts))
    hooks = _hooks(hooks, cond, plain, boxes, layout, height, width)
    sched, x, start = _start(pipe, cond, seeds, steps, height, width, latents, resume, inversion)
    stop = steps if until is None else until
    first_edited = stages[0][0] if stages else first_edited_step(steps, delay)
    fade = fade_steps(fade_in, steps, inversion is not None)
    blend = _local_blend(local_blend, cond, plain, edits, inversion, first_edited, height, width)
    if blend is not None:
        hooks.append(blend)
    # inference mode skips autograd's bookkeeping (~10% faster on the shapes world); hooks such as
    # layout guidance take gradients through the latents, so with hooks plain no_grad is used
    no_grad = torch.no_grad if hooks else torch.inference_mode
    with ExitStack() as stack:
        for h in hooks:
            stack.enter_context(h)
        for i, t in enumerate(sched.timesteps):
            if i < start:
                continue
            if i >= stop:
                return Partial(step=i, steps=steps, latents=x.clone(), scheduler=copy.deepcopy(sched))
            c = prompt_at(i, plain, stages, fade)
            for h in hooks:
                x = h.before_step(i, t, x, c)
            with no_grad():
                x = _guided_step(cond, sched, x, t, uncond, c, guidance_scale, height, width)
            if inversion is not None and inversion.residuals:
                x = x + inversion.residuals[i]  # what this step missed of the inverted picture's path
            if blend is not None:
                x = blend.after_step(i, x)
    x = x.clone()  # outside inference mode: a normal tensor, usable with autograd
    if until is not None:
        return Partial(step=steps, steps=steps, latents=x, scheduler=copy.deepcopy(sched))
    if output_type == "latent":
        return x
    images = decode(pipe, x, output_type)
    return images[0] if single else images
