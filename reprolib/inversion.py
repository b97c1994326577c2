"""Real pictures into the sampler: DDIM inversion, plain and by fixed-point iterations.

A deterministic DDIM step maps x_t to x_{t-1} with the noise ε predicted *at x_t*. Run backwards,
x_t = √ᾱ_t·x̂0 + √(1−ᾱ_t)·ε needs that same ε, but x_t is what we are solving for. Plain DDIM inversion
uses ε at x_{t-1} instead; the small mismatch per step is amplified by classifier-free guidance, and the
picture drifts. The fixed-point variant (as in ReNoise and exact-inversion work) iterates
x_t ← step_up(x_{t-1}, ε(x_t)) a few times per step, so the noise it finds maps back onto the picture
under the very sampler and guidance scale that ``generate`` then runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageOps, UnidentifiedImageError

from . import checks
from .conditioning import Embeddings, TextConditioning
from .generate import defaults, generate, vae_precision

METHODS = ("exact", "fixed-point", "ddim")
LARGE_ERROR = 0.25  # relative latent error above which a reconstruction is visibly off
# fixed-point iterations per step, by method: "exact" needs none to give the picture back, and its edits
# follow α more faithfully from the plain-DDIM path (benchmarks/inversion.py measures both)
ITERATIONS = {"exact": 0, "fixed-point": 4, "ddim": 0}


class InversionError(checks.InputError):
    """An image that cannot be inverted, or an inversion used where it does not fit."""


@dataclass(frozen=True)
class Inversion:
    """Noise that the DDIM sampler turns back into ``image`` for ``prompt``; pass it to ``generate``.

    ``latents`` is x_T in DDIM's variance-preserving space; ``residuals`` (method "exact") are added back
    after each sampling step; ``path`` holds the latents before each step and the picture's own last (local
    blend keeps it outside an edit, :mod:`reprolib.blend`); ``error`` is the relative RMS error of the latents
    that unedited sampling from it reproduces (``None`` when not checked).
    """

    latents: torch.Tensor
    image: Image.Image
    prompt: str
    negative_prompt: str | None
    steps: int
    guidance_scale: float
    height: int
    width: int
    method: str
    scheduler_config: dict = field(repr=False)
    model: dict = field(repr=False)  # TextConditioning.fingerprint() of the pipeline that made it
    residuals: list[torch.Tensor] | None = field(default=None, repr=False)  # per sampling step ("exact")
    path: list[torch.Tensor] | None = field(default=None, repr=False)  # before each step, then the picture's
    error: float | None = None
    # subject anchors already read on this path (reprolib.blend.subject_anchor), per prompt and edited words:
    # a slider's frames share the anchor, so its extra UNet pass is made once
    anchors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler with this inversion's timesteps (the sampler it was solved for)."""
        sched = DDIMScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(self.steps, device=self.latents.device)
        return sched

    def check(self, cond: TextConditioning, steps: int | None) -> None:
        """Refuse a pipeline or step count other than the ones this inversion was made with."""
        if cond.fingerprint() != self.model:
            raise InversionError(
                "this inversion was made with another pipeline (its text encoder's weights differ): "
                "invert the picture again with this pipeline"
            )
        if steps is not None and steps != self.steps:
            raise InversionError(
                f"steps={steps}, but the inversion was made with {self.steps} steps: leave steps out, "
                f"or invert again with steps={steps}"
            )


def ddim_scheduler(pipe, steps: int) -> DDIMScheduler:
    """DDIM with the pipeline's noise schedule and prediction type (ε or v), η = 0: deterministic."""
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


def load_image(image, height: int, width: int) -> Image.Image:
    """A path, PIL image or array (greyscale, RGB or RGBA) as an RGB picture of ``height``×``width``.

    A picture of another size is centre-cropped to the aspect ratio and resized, with a warning that
    says so. Transparency is composited on black.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            image = Image.open(image)
            image.load()
        except FileNotFoundError:
            raise InversionError(f"image: no such file {os.fspath(image)!r}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InversionError(f"image: {os.fspath(image)!r} is not a picture PIL can read ({e})") from None
    if isinstance(image, (np.ndarray, torch.Tensor)):
        image = _array_to_pil(np.asarray(image))
    if not isinstance(image, Image.Image):
        raise InversionError(f"image: give a path, a PIL image or an array; got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise InversionError(f"image: the picture is empty ({image.width}×{image.height} pixels)")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    if image.size != (width, height):
        was = image.size
        image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
        warnings.warn(
            f"the picture is {was[0]}×{was[1]}; it was centre-cropped to the aspect {width}:{height} and resized "
            f"to the model's {width}×{height} (pass height/width to invert at another size)",
            stacklevel=3,
        )
    return image


def _array_to_pil(a: np.ndarray) -> Image.Image:
    """uint8 or float ([0, 1]) arrays, HW, HW1, HW3 or HW4."""
    if a.size == 0:
        raise InversionError(f"image: the array is empty (shape {a.shape})")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InversionError(f"image: an array must be H×W, H×W×3 or H×W×4; got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise InversionError("image: the array holds NaN or infinite values")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a)


@torch.no_grad()
def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """The VAE's latent mean of an RGB picture, scaled as the UNet expects."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with vae_precision(pipe.vae) as vae:
        lat = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return lat.to(pipe.unet.dtype)


class _Guided:
    """The UNet's output with classifier-free guidance at (z, t), as ``generate`` computes it for a step."""

    def __init__(self, cond: TextConditioning, sched, c: Embeddings, u: Embeddings, scale: float, hw):
        self.cond, self.sched, self.scale, self.hw = cond, sched, scale, hw
        self.both = Embeddings.cat([u, c])

    def __call__(self, z: torch.Tensor, t) -> torch.Tensor:
        out_u, out_c = self.cond.unet(torch.cat([z, z]), t, self.both, *self.hw).chunk(2)
        return out_u + self.scale * (out_c - out_u)

    def eps(self, z: torch.Tensor, t) -> torch.Tensor:
        """The noise ε it predicts, whether the model predicts ε or v."""
        out = self(z, t).float()
        if self.sched.config.prediction_type == "v_prediction":
            a = self.sched.alphas_cumprod[int(t)].to(z.device)
            return a.sqrt() * out + (1 - a).sqrt() * z.float()
        return out


def _alphas(sched, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ_t, ᾱ of the step after it), exactly as DDIMScheduler.step reads them."""
    prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    return sched.alphas_cumprod[int(t)], a_prev


def step_up(x_prev: torch.Tensor, eps: torch.Tensor, a_t, a_prev) -> torch.Tensor:
    """The x_t from which a DDIM step with noise ``eps`` lands on ``x_prev`` (the step, solved for x_t)."""
    x0 = (x_prev - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def fixed_point(model: _Guided, x_prev: torch.Tensor, t, a_t, a_prev, iterations: int) -> torch.Tensor:
    """Solve x_t = step_up(x_{t-1}, ε(x_t)) by iteration, keeping the iterate that moved least.

    Under strong guidance the iteration need not contract; stopping when it starts to move more
    keeps the best point found instead of wandering off.
    """
    z = step_up(x_prev, model.eps(x_prev, t), a_t, a_prev)  # plain DDIM inversion: ε read at x_{t-1}
    best, moved = z, float("inf")
    for _ in range(iterations):
        z_new = step_up(x_prev, model.eps(z, t), a_t, a_prev)  # ε read where the sampler will read it
        m = float((z_new - z).pow(2).mean())
        if not m < moved:
            break
        best, moved, z = z_new, m, z_new
    return best


def run_inversion(model: _Guided, sched, x0: torch.Tensor, method: str, iterations: int):
    """Walk the timesteps backwards from ``x0`` to x_T: (x_T, the residual of each step in sampling order,
    the path: the latents before each sampling step and ``x0`` last).

    A residual is what one sampling step from the found x_t misses of x_{t-1}; ``generate`` adds it back
    after that step when the method keeps residuals, so the unedited picture returns exactly.
    """
    x, dtype = x0.float(), x0.dtype
    residuals, path = [], [x0]
    for t in reversed(sched.timesteps):
        a_t, a_prev = (a.to(x.device) for a in _alphas(sched, t))
        z = fixed_point(model, x, t, a_t, a_prev, iterations if method != "ddim" else 0).to(dtype)
        if method == "exact":  # the step exactly as generate will take it (scheduler, dtype and all)
            residuals.append(x.to(dtype) - sched.step(model(z, t), t, z, return_dict=False)[0])
        x = z.float()
        path.append(z)
    return x.to(dtype), residuals[::-1] or None, path[::-1]


def invert(
    pipe,
    image,
    prompt: str,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    method: str = "exact",
    iterations: int | None = None,
    height: int | None = None,
    width: int | None = None,
    verify: bool = True,
) -> Inversion:
    """The noise from which ``generate(pipe, prompt, inversion=...)`` redraws ``image``.

    ``method``: "ddim" (plain), "fixed-point" (``iterations`` refinements of each step, default 4) or
    "exact" (the default: each step's residual is kept and added back while sampling, so nothing drifts;
    ``iterations`` default 0).
    ``verify`` samples once more from the noise found and stores the relative latent error in
    ``Inversion.error`` (a warning when it is large: the prompt may not describe the picture).
    """
    if method not in METHODS:
        raise InversionError(f"method={method!r}: choose one of {METHODS}")
    iterations = ITERATIONS[method] if iterations is None else iterations
    if not isinstance(iterations, int) or iterations < 0:
        raise InversionError(f"iterations={iterations!r}: give a whole number ≥ 0 of refinements per step")
    checks.prompts(prompt)
    checks.count(steps, "steps")
    checks.number(guidance_scale, "guidance_scale")
    checks.size(pipe, height, width)
    cond = TextConditioning(pipe)
    d_steps, d_cfg = defaults(pipe)
    steps, guidance_scale = steps or d_steps, d_cfg if guidance_scale is None else float(guidance_scale)
    dh, dw = cond.default_size()
    height, width = height or dh, width or dw
    picture = load_image(image, height, width)
    x0 = encode_image(pipe, picture)
    sched = ddim_scheduler(pipe, steps)
    c, u = cond.encode([prompt]), cond.encode_negative(negative_prompt, 1)
    model = _Guided(cond, sched, c, u, guidance_scale, (height, width))
    with torch.no_grad():
        x_T, residuals, path = run_inversion(model, sched, x0, method, iterations)
    inv = Inversion(
        x_T, picture, prompt, negative_prompt, steps, guidance_scale, height, width, method,
        dict(sched.config), cond.fingerprint(), residuals=residuals, path=path,
    )  # fmt: skip
    if verify:
        inv = replace(inv, error=reconstruction_error(pipe, inv, x0))
    return inv


def reconstruction_error(pipe, inv: Inversion, x0: torch.Tensor) -> float:
    """Relative RMS difference between the picture's latents and those sampled back from ``inv``."""
    back = generate(pipe, inv.prompt, inversion=inv, output_type="latent").float()
    err = float((back - x0.float()).pow(2).mean().sqrt() / x0.float().pow(2).mean().sqrt())
    if not err < LARGE_ERROR:
        warnings.warn(
            f"the picture comes back with a relative latent error of {err:.2f}: the prompt may not describe it "
            f"({inv.prompt!r}), or try more iterations",
            stacklevel=3,
        )
    return err
