"""The shapes world's VAE: trained first, its decoder optionally fine-tuned alone; every image encoded once."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import world
from ..model import build_vae
from .data import save_atomic


def _foreground(x: torch.Tensor) -> torch.Tensor:
    bg = torch.tensor(world.BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1) / 127.5 - 1
    return ((x - bg).abs().sum(1, keepdim=True) > 0.05).to(x.dtype)


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # objects are a small part of each image: weight their pixels up so edges stay sharp
    w = 1 + 4 * _foreground(x)
    return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()


def _resume(ckpt: Path, load_model, opt) -> int:
    """The step a stage's checkpoint stopped at (0: none yet), with its weights and optimizer state restored."""
    if not ckpt.exists():
        return 0
    c = torch.load(ckpt)
    load_model(c["model"]), opt.load_state_dict(c["opt"])
    return c["step"]


def train_vae(out: Path, images: torch.Tensor, steps: int, seed: int, batch: int = 32, lr: float = 1e-3):
    ckpt = out / "vae.pt"
    torch.manual_seed(seed)  # initial weights
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = _resume(ckpt, vae.load_state_dict, opt)
    if start >= steps:
        return vae
    vae.train()
    bar = tqdm(range(start, steps), desc="vae", initial=start, total=steps)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = images[idx].float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = _reconstruction_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


DECODER = ("decoder.", "post_quant_conv.")


def load_decoder(vae, decoder: dict) -> None:
    """Put a fine-tuned decoder's weights (``finetune_decoder``'s checkpoint) into ``vae``; the encoder stays."""
    vae.load_state_dict({**vae.state_dict(), **decoder})


def finetune_decoder(out: Path, vae, images: torch.Tensor, steps: int, seed: int, batch: int = 32, lr: float = 2e-4):
    """Train the VAE's decoder on, with the encoder frozen, as Stability did for SD's ft-MSE VAE.

    The encoder is untouched, so every latent (and the UNet that learned them, and any inversion) stays
    valid; only the pictures drawn from latents get sharper. Half the batches decode the posterior's
    mean (what inversion encodes), half a sample from it (what the UNet learned to generate).
    """
    ckpt = out / "decoder.pt"
    for name, param in vae.named_parameters():
        param.requires_grad_(name.startswith(DECODER))
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = _resume(ckpt, lambda decoder: load_decoder(vae, decoder), opt)
    if start >= steps:
        return vae
    vae.train()
    bar = tqdm(range(start, steps), desc="decoder", initial=start, total=steps)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 900_000 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = images[idx].float() / 127.5 - 1
        with torch.no_grad():
            post = vae.encode(x).latent_dist
        z = post.mean if step % 2 else post.sample(generator=g)
        loss = _reconstruction_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            decoder = {k: v for k, v in vae.state_dict().items() if k.startswith(DECODER)}
            save_atomic({"model": decoder, "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


@torch.no_grad()
def encode_all(out: Path, vae, images: torch.Tensor, scaling_factor: float | None = None) -> tuple[torch.Tensor, float]:
    """Latent means and std-devs of all images, and the scaling factor that gives latents unit variance
    (or the given ``scaling_factor``: a fine-tuned UNet keeps the one it was trained with)."""
    path = out / "latents.pt"
    if path.exists():
        d = torch.load(path)
        if len(d["mean"]) == len(images) and scaling_factor in (None, d["scaling_factor"]):
            return d, d["scaling_factor"]
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(images), 500), desc="encode"):
        dist = vae.encode(images[i : i + 500].float() / 127.5 - 1).latent_dist
        means.append(dist.mean.half()), stds.append(dist.std.half())
    d = {"mean": torch.cat(means), "std": torch.cat(stds)}
    d["scaling_factor"] = float(1 / d["mean"].float().std()) if scaling_factor is None else float(scaling_factor)
    save_atomic(d, path)
    return d, d["scaling_factor"]
