"""The energy layout guidance lowers, and the step size that moves the latents for each scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .boxes import Target, box_mask


def layout_energy(maps: Sequence[torch.Tensor], targets: Sequence[Target], per_image: bool = False) -> torch.Tensor:
    """The paper's energy: mean over maps and phrases of (1 − Σ_box A / Σ A)², then over the batch.

    ``maps``: tensors (batch, heads, h, w, tokens); A is the phrase's attention, averaged over
    heads and its tokens. (The official code instead averages the energy of each head and token, and
    rounds box edges down to cells; on the shapes world the two differ by 0.01-0.04 in E, see
    ``benchmarks/differences.py`` and :mod:`reprolib.evaluation.energy_variants`.)
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
        raise TypeError(
            f"{type(scheduler).__name__} has neither sigmas (init_noise_sigma > 1) nor "
            "alphas_cumprod; layout guidance does not know its noise level"
        )
    return float(1 - scheduler.alphas_cumprod[int(t)])
