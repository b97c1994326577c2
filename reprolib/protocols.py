"""The extension seams of reprolib: a step hook, an attention listener, a starting point, a report section.

Anything with these methods plugs in; nothing needs to inherit from a reprolib class.

* :class:`StepHook` — :func:`reprolib.generate.generate` enters every hook around its loop and calls
  ``before_step`` before each denoising step, which may move the latents (layout guidance does) or
  just watch (the step clock of :func:`reprolib.maps.attention_maps` does).
* :class:`AttentionListener` — :class:`reprolib.attention.ProbsProcessor` hands it each selected
  layer's attention probabilities; a recorder keeps them, an editor (``edits = True``) returns new ones.
* :class:`StartingPoint` — where :func:`reprolib.generate.generate` starts instead of fresh noise:
  :class:`reprolib.inversion.Inversion` is one (noise found for a real picture).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .conditioning import Embeddings


@runtime_checkable
class StepHook(Protocol):
    """Called by the sampling loop before every step; a context manager around the whole loop."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc) -> object: ...

    def before_step(self, i: int, t: torch.Tensor, latents: torch.Tensor, embeddings: Embeddings) -> torch.Tensor:
        """Step ``i`` (timestep ``t``) is next: return the latents to use (the same or moved)."""
        ...


@runtime_checkable
class AttentionListener(Protocol):
    """Receives ``(layer name, probs)``, probs (batch, heads, queries, keys), while ``active``.

    ``edits``: True for a listener that may return replaced probabilities (run before the others, so
    that recorders see what the layer used); an observer returns None.
    """

    active: bool
    edits: bool

    def __call__(self, name: str, probs: torch.Tensor) -> torch.Tensor | None: ...


@runtime_checkable
class StartingPoint(Protocol):
    """Latents and the sampler they belong to, with the settings that reproduce what they were made from."""

    latents: torch.Tensor
    steps: int
    guidance_scale: float
    negative_prompt: str | None
    height: int
    width: int
    residuals: list[torch.Tensor] | None  # added to the latents after each step, when given
    path: list[torch.Tensor] | None  # the unedited latents before each step, then the final ones (local blend)

    def scheduler(self) -> object:
        """A fresh scheduler, its timesteps set for ``steps``."""
        ...

    def check(self, cond, steps: int | None) -> None:
        """Raise when this starting point does not fit the pipeline of ``cond`` or ``steps``."""
        ...


@runtime_checkable
class ReportSection(Protocol):
    """One part of ``python -m reprolib.reproduce``'s report: a paper's experiment, measured on a model.

    ``skip(model)`` says why the section cannot run on ``model`` (None: it can); ``run(context)`` measures and
    returns an :class:`reprolib.reproduce.Outcome` (numbers, timings, figures, claims). Work spread over
    processes goes through ``context.workers``, so a section is the same code on one process or many.
    """

    name: str
    title: str

    def skip(self, model: str) -> str | None: ...

    def run(self, context) -> object: ...
