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

Two limits make the blend subject-specific (chosen by ``benchmarks/inversion.py --blend``):

* **others**: a cell where another word of the prompt attends more than the edited words belongs to that
  word's object, and is kept, even when the edited noun also attends there (a small model binds "circle"
  to both circles of "a blue circle and a green circle");
* **anchor**: the edit may only reach a little way (``ANCHOR_REACH`` of the picture's side) beyond where the
  subject *is* in the picture, read from the unedited words' attention on the inversion's own path
  (one extra conditional UNet pass per picture and subject, :func:`subject_anchor`). Without it a grown
  subject can be drawn again elsewhere while the old one stays, or a shrunk one jump onto its neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .attention import AttentionStore, default_layers

THRESHOLD = 0.3  # of the summed map's maximum, as prompt-to-prompt's; chosen by benchmarks/inversion.py --blend
# the anchor: read where the subject is at 80% of the path (late enough for the map to be sharp; at 20%
# a noun's map covers most of the picture), and let the edit reach 1/8 of the picture's side beyond it
ANCHOR_STEP = 0.8
ANCHOR_REACH = 0.125


def _per_word(store: AttentionStore, step: int, groups: Sequence[Sequence[int]], size) -> list[torch.Tensor | int]:
    """Per image ``b``: (len(groups[b]), h, w), the attention of each of its positions at ``step``, summed over
    the layers (0 for an image with no positions). Images may name different numbers of positions."""
    out: list[torch.Tensor | int] = [0] * len(groups)
    for name in store.layers:
        g = store.grid(name, step)[:, 0]  # (batch, h, w, kept tokens)
        for b, pos in enumerate(groups):
            if pos:
                maps = g[b, ..., [store.tokens.index(p) for p in pos]].movedim(-1, 0)[None].float()
                out[b] = out[b] + F.interpolate(maps, size=size, mode="bilinear")[0]
    return out


def _edited_map(store: AttentionStore, step: int, positions: Sequence[Sequence[int]], size) -> torch.Tensor:
    """(batch, 1, h, w): each image's edited words' attention at ``step``, summed over words and layers."""
    return torch.stack([w.sum(0, keepdim=True) for w in _per_word(store, step, positions, size)])


def subject_anchor(
    cond, plain, positions: Sequence[Sequence[int]], inversion, *, layers=None, aspect: float = 1.0,
    threshold: float = THRESHOLD, reach: float = ANCHOR_REACH,
) -> torch.Tensor:  # fmt: skip
    """(batch, 1, h, w) bool: where the edited words' objects are in the inverted picture, widened by ``reach``.

    One conditional UNet pass on the inversion's path at ``ANCHOR_STEP`` with the unedited prompt ``plain``,
    made once per prompt and words: the result is kept in the inversion's ``anchors`` when it has them.
    """
    unet = cond.pipe.unet
    layers = default_layers(unet) if layers is None else layers
    cache = getattr(inversion, "anchors", {})  # a starting point without a cache reads it every time
    key = (tuple(t.text for t in plain.tokens), tuple(map(tuple, positions)), tuple(layers), aspect, threshold, reach)
    if key not in cache:
        cache[key] = _read_anchor(cond, plain, positions, inversion, layers, aspect, threshold, reach)
    return cache[key]


def _read_anchor(cond, plain, positions, inversion, layers, aspect, threshold, reach) -> torch.Tensor:
    unet = cond.pipe.unet
    tokens = sorted({p for pos in positions for p in pos})
    sched = inversion.scheduler()
    j = min(int(ANCHOR_STEP * inversion.steps), inversion.steps - 1)
    x = inversion.path[j].to(cond.device, unet.dtype).expand(len(positions), -1, -1, -1)
    t = sched.timesteps[j]
    size = tuple(x.shape[-2:])
    with AttentionStore(unet, layers, heads="mean", tokens=tokens, aspect=aspect) as store, torch.no_grad():
        cond.unet(sched.scale_model_input(x, t), t, plain, inversion.height, inversion.width)
        where = _edited_map(store, 0, positions, size)
    found = where / where.amax((2, 3), keepdim=True).clamp_min(1e-12) > threshold
    r = max(1, round(reach * min(size)))
    return F.max_pool2d(found.float(), 2 * r + 1, stride=1, padding=r) > 0


class LocalBlend:
    """A :class:`~reprolib.protocols.StepHook` (plus :meth:`after_step`) that keeps ``path`` outside the edit.

    ``positions``: per prompt of the batch, the token positions the edits touch. ``path``: the unedited
    latents before each sampling step, and the final ones (``steps + 1`` tensors). ``first_edited``: the
    first step whose prompt is edited. ``aspect``: the picture's height ÷ width (the maps' shape).
    ``others``: per prompt, the positions of its other words (a cell they attend more is theirs).
    ``anchor``: (batch, 1, h, w) bool, where the edit may reach (:func:`subject_anchor`).
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
        others: Sequence[Sequence[int]] | None = None,
        anchor: torch.Tensor | None = None,
    ):
        self.positions = [list(p) for p in positions]
        self.others = [list(o) for o in others] if others is not None else [[] for _ in self.positions]
        self.path, self.first_edited, self.threshold, self.anchor = path, first_edited, threshold, anchor
        layers = default_layers(unet) if layers is None else layers
        # every position any prompt edits or names otherwise; each image's own are picked in mask()
        self.tokens = sorted({p for pos in self.positions + self.others for p in pos})
        batch = 2 * len(self.positions)  # the classifier-free-guidance pass only
        self.store = AttentionStore(
            unet, layers, rows="cond", heads="mean", tokens=self.tokens, batch=batch, aspect=aspect,
            steps=range(first_edited, len(path) - 1),
        )  # fmt: skip
        self.masks: list[torch.Tensor] = []  # what each blend used (for figures and tests)
        self._sum: torch.Tensor | int = 0  # the edited words' map, summed over the edited steps
        self._others: list[torch.Tensor | int] = [0] * len(self.positions)  # each other word's, per image

    def __enter__(self) -> LocalBlend:
        self.store.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.store.__exit__(*exc)

    def before_step(self, i, t, latents, embeddings):
        self.store.step = i
        return latents

    def mask(self, step: int, size: tuple[int, int]) -> torch.Tensor:
        """(batch, 1, h, w) in {0, 1}: where the edit may change the latents after ``step``."""
        restart = step <= self.first_edited
        self._sum = _edited_map(self.store, step, self.positions, size) + (0 if restart else self._sum)
        m = self._sum / self._sum.amax((2, 3), keepdim=True).clamp_min(1e-12) > self.threshold
        for b, mine in enumerate(_per_word(self.store, step, self.others, size)):
            if self.others[b]:
                self._others[b] = mine + (0 if restart else self._others[b])
                m[b] &= self._sum[b] > self._others[b].amax(0, keepdim=True)
        if self.anchor is not None:
            m &= self.anchor.to(m.device)
        return F.max_pool2d(m.float(), 3, stride=1, padding=1)  # dilate one cell: edges belong to the object

    def after_step(self, i: int, latents: torch.Tensor) -> torch.Tensor:
        """The latents after step ``i``, kept as the path's outside the mask once the edit has started."""
        if i < self.first_edited:
            return latents
        m = self.mask(i, tuple(latents.shape[-2:])).to(latents.device, latents.dtype)
        self.masks.append(m.cpu())
        keep = self.path[i + 1].to(latents.device, latents.dtype)
        return m * latents + (1 - m) * keep
