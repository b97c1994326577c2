"""Local blending for edits of a real picture: outside the edited words' attention, keep the picture.

An attribute delta changes one subject's tokens, but every pixel attends to every token, so an edit of an
inverted picture also moves a little of everything else (the other object, the background). Hertz et al.'s
prompt-to-prompt "local blend" bounds that: after each step, the latents where the edited words do not
attend are replaced by the unedited path's. The inversion knows that path (``Inversion.path``), so it
costs no extra UNet call.

The mask is where the edited words attend, summed over the guidance layers and every edited step so far
(early steps hold the subject as it was, later ones as it is becoming), normalised to its maximum,
thresholded and dilated by one latent cell. Single steps' maps are too diffuse on a small model (the
noun attends to the background at 0.4–0.7 of its peak); the sum over steps is not. The mask uses the
edited steps alone, so a run resumed after the delayed steps (the slider's) blends as one that ran them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .attention import AttentionStore, default_layers

THRESHOLD = 0.3  # of the summed map's maximum, as prompt-to-prompt's; chosen by benchmarks/inversion.py --blend


class LocalBlend:
    """A :class:`~reprolib.protocols.StepHook` (plus :meth:`after_step`) that keeps ``path`` outside the edit.

    ``positions``: per prompt of the batch, the token positions the edits touch. ``path``: the unedited
    latents before each sampling step, and the final ones (``steps + 1`` tensors). ``first_edited``: the
    first step whose prompt is edited. ``aspect``: the picture's height ÷ width (the maps' shape).
    """

    def __init__(
        self,
        unet,
        positions: Sequence[Sequence[int]],
        path: Sequence[torch.Tensor],
        first_edited: int,
        *,
        threshold: float = THRESHOLD,
        layers=None,
        aspect: float = 1.0,
    ):
        self.positions = [list(p) for p in positions]
        self.path, self.first_edited, self.threshold = path, first_edited, threshold
        layers = default_layers(unet) if layers is None else layers
        # every position any prompt edits; each image's own are picked in mask()
        self.tokens = sorted({p for pos in self.positions for p in pos})
        batch = 2 * len(self.positions)  # the classifier-free-guidance pass only
        self.store = AttentionStore(
            unet, layers, rows="cond", heads="mean", tokens=self.tokens, batch=batch, aspect=aspect,
            steps=range(first_edited, len(path) - 1),
        )  # fmt: skip
        self.masks: list[torch.Tensor] = []  # what each blend used (for figures and tests)
        self._sum: torch.Tensor | int = 0

    def __enter__(self) -> LocalBlend:
        self.store.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.store.__exit__(*exc)

    def before_step(self, i, t, latents, embeddings):
        self.store.step = i
        return latents

    def _word_map(self, step: int, size: tuple[int, int]) -> torch.Tensor:
        """(batch, 1, h, w): the edited words' attention at ``step``, summed over the layers."""
        total = 0
        for name in self.store.layers:
            g = self.store.grid(name, step)[:, 0]  # (batch, h, w, kept tokens)
            per_image = torch.stack(
                [g[b, ..., [self.tokens.index(p) for p in pos]].sum(-1) for b, pos in enumerate(self.positions)]
            )
            total = total + F.interpolate(per_image[:, None].float(), size=size, mode="bilinear")
        return total

    def mask(self, step: int, size: tuple[int, int]) -> torch.Tensor:
        """(batch, 1, h, w) in {0, 1}: where the edit may change the latents after ``step``."""
        self._sum = self._word_map(step, size) + (self._sum if step > self.first_edited else 0)
        m = self._sum / self._sum.amax((2, 3), keepdim=True).clamp_min(1e-12) > self.threshold
        return F.max_pool2d(m.float(), 3, stride=1, padding=1)  # dilate one cell: edges belong to the object

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The latents after step ``i``, kept as the path's outside the mask once the edit has started."""
        if i < self.first_edited:
            return latents
        m = self.mask(i, tuple(latents.shape[-2:])).to(latents.device, latents.dtype)
        self.masks.append(m.cpu())
        keep = self.path[i + 1].to(latents.device, latents.dtype)
        return m * latents + (1 - m) * keep
