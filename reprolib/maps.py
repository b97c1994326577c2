"""The cross-attention maps of one generation: which image regions each word of the prompt feeds.

maps = attention_maps(pipe, "a red circle and a blue square", seed=0)
maps.word("circle", layer="up.1")   # Tensor[H, W]; reprolib.plots draws it over maps.image
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import checks
from .attention import AttentionStore, match_layers
from .conditioning import TextConditioning, Tokens
from .generate import defaults, generate
from .tokens import token_span


class StepClock:
    """A :class:`~reprolib.protocols.StepHook` that tells a store which step it is and installs it for the run."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __enter__(self):
        return self.store.__enter__()

    def __exit__(self, *exc):
        return self.store.__exit__(*exc)

    def before_step(self, i, t, latents, cond_embeddings):
        self.store.step = i
        return latents


def prompt_words(tokens: Tokens) -> list[str]:
    """The prompt's distinct words (letters, digits, ``'`` and ``-``) that cover whole tokens."""
    out = []
    for w in re.findall(r"[\w'-]+", tokens.text):
        if w.lower() in (x.lower() for x in out):
            continue
        try:
            token_span(tokens, w)
        except ValueError:
            continue
        out.append(w)
    return out


@dataclass
class AttentionMaps:
    """One generation's cross-attention maps (conditional branch, mean over heads) and its image.

    ``maps[layer][step]`` is (h, w, tokens) on the CPU, tokens up to the end-of-text token.
    """

    prompt: str
    tokens: Tokens
    maps: dict[str, dict[int, torch.Tensor]]
    resolutions: dict[str, int]
    image: object
    size: tuple[int, int]
    words: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(self.maps)

    @property
    def steps(self) -> list[int]:
        return sorted({s for m in self.maps.values() for s in m})

    def select(self, layer=None) -> list[str]:
        """Layer names for ``layer``: ``None`` (all), a pattern (``"mid"``, ``"up.1"``, a name) or a map side."""
        return match_layers([(n, self.resolutions[n]) for n in self.maps], layer)

    def token_maps(self, layer: str, step: int) -> torch.Tensor:
        """(h, w, tokens) of one layer at one step."""
        if step not in self.maps[layer]:
            raise KeyError(f"step {step} was not recorded; recorded steps: {self.steps}")
        return self.maps[layer][step]

    def word(
        self, word: str, layer=None, step: int | Sequence[int] | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Tensor[H, W]: the word's attention (mean over its tokens, the layers and the steps chosen),
        each map upsampled bilinearly to ``size`` (default: the image size)."""
        pos = token_span(self.tokens, word)
        names = self.select(layer)
        steps = self.steps if step is None else [step] if isinstance(step, int) else list(step)
        size = size or self.size
        acc = torch.zeros(size)
        for n in names:
            for s in steps:
                m = self.token_maps(n, s)[..., pos].mean(-1)
                acc += F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return acc / (len(names) * len(steps))


def attention_maps(
    pipe,
    prompt: str,
    *,
    seed: int = 0,
    words: Sequence[str] | None = None,
    layers=None,
    steps: int | None = None,
    record_steps: Iterable[int] | None = None,
    **generate_kwargs,
) -> AttentionMaps:
    """Generate one image with :func:`reprolib.generate` and record its cross-attention maps.

    ``words``: which words the maps are for (default: every word of the prompt; checked up front).
    ``layers``: as :func:`select_layers` (default: all cross-attention layers). ``steps``: sampling
    steps, as ``generate``'s. ``record_steps``: which step indices to keep (default: all; each kept
    step costs layers × h·w × tokens floats). Other keyword arguments go to ``generate``
    (``boxes=``, ``layout=``, ``edits=``, ``guidance_scale=``, ``hooks=`` ...).
    """
    if "output_type" in generate_kwargs:
        raise ValueError("attention_maps always returns a PIL image; do not pass output_type")
    if not isinstance(prompt, str):
        raise checks.InputTypeError(f"attention_maps takes one prompt (a str), got {type(prompt).__name__}")
    checks.integer(seed, "seed", fix="attention_maps takes one seed, e.g. seed=0.")
    n = defaults(pipe)[0] if checks.count(steps, "steps") is None else steps
    record_steps = checks.step_indices(record_steps, n)
    checks.size(pipe, generate_kwargs.get("height"), generate_kwargs.get("width"))
    cond = TextConditioning(pipe)
    toks = cond.tokenize(prompt)
    words = [words] if isinstance(words, str) else list(words) if words is not None else prompt_words(toks)
    for w in words:
        token_span(toks, w)  # a clear SpanError before spending a generation
    last = max((i for i, s in enumerate(toks.special) if not s), default=0) + 1  # keep the end-of-text token
    dh, dw = cond.default_size()
    height, width = generate_kwargs.get("height") or dh, generate_kwargs.get("width") or dw
    store = AttentionStore(
        pipe.unet,
        layers,
        rows="cond",
        batch=2,
        heads="mean",
        tokens=range(last + 1),
        to_cpu=True,
        steps=record_steps,
        aspect=height / width,
    )
    hooks = [StepClock(store), *generate_kwargs.pop("hooks", ())]
    image = generate(pipe, prompt, seed=seed, steps=steps, hooks=hooks, **generate_kwargs)
    maps = {n: {s: store.grid(n, s)[0, 0] for s in sorted(store.maps[n])} for n in store.layers if n in store.maps}
    res = {n: next(iter(m.values())).shape[1] for n, m in maps.items()}  # actual map width at this size
    return AttentionMaps(prompt, toks, maps, res, image, (height, width), words)
