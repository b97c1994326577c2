"""Recording cross-attention probabilities per layer and step: :class:`AttentionStore`.

with record_attention(pipe.unet, layers=["mid", "up.1"]) as store:
    pipe.unet(...)
store.grid(name)  # (batch, heads, h, w, tokens)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .layers import cross_attention_layers, grid_shape, select_layers
from .processor import attach, detach


class EnoughRecorded(Exception):
    """Raised by a store with ``stop_when_full`` once every layer is recorded: the rest of the UNet is not needed.

    Catch it around the UNet call (:func:`run_until_recorded` does).
    """


class AttentionStore:
    """Records cross-attention probabilities per layer and step while installed (a context manager).

    ``maps[name][step]`` is (batch, heads, queries, tokens); :meth:`grid` reshapes to (batch, heads,
    h, w, tokens). ``rows`` keeps part of the batch: ``"cond"`` is the second half (the conditional
    branch of a classifier-free-guidance batch), or a slice / list of indices. ``batch``: record only
    calls with this batch size (so a store for the CFG pass ignores guidance's conditional-only
    passes). ``heads="mean"`` and ``tokens`` (positions to keep) shrink what is kept; ``to_cpu``
    moves it off the GPU. ``keep_grad`` keeps the autograd graph (for losses on the maps). ``step``
    is set by whoever drives the loop; ``steps`` restricts recording to those steps.
    """

    edits = False

    def __init__(
        self,
        unet,
        layers=None,
        *,
        keep_grad: bool = False,
        rows=None,
        batch: int | None = None,
        heads: str = "keep",
        tokens: Sequence[int] | None = None,
        to_cpu: bool = False,
        steps: Iterable[int] | None = None,
        aspect: float = 1.0,
        stop_when_full: bool = False,
    ):
        if heads not in ("keep", "mean"):
            raise ValueError(f"heads must be 'keep' or 'mean', not {heads!r}")
        self.unet = unet
        self.layers = select_layers(unet, layers)
        self.resolutions = dict(cross_attention_layers(unet))
        self.keep_grad, self.rows, self.batch, self.heads = keep_grad, rows, batch, heads
        self.tokens = None if tokens is None else list(tokens)
        self.to_cpu, self.aspect, self.stop_when_full = to_cpu, aspect, stop_when_full
        self.steps = None if steps is None else set(steps)
        self.step = 0
        self.active = True
        self.maps: dict[str, dict[int, torch.Tensor]] = {}
        self._replaced: dict | None = None

    def __enter__(self) -> AttentionStore:
        self._replaced = attach(self.unet, self.layers, self)
        return self

    def __exit__(self, *exc) -> None:
        detach(self.unet, self, self._replaced or {})
        self._replaced = None

    def clear(self) -> None:
        self.maps = {}

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        if self.batch is not None and probs.shape[0] != self.batch:
            return
        if self.steps is not None and self.step not in self.steps:
            return
        p = probs
        if isinstance(self.rows, str):
            if self.rows != "cond":
                raise ValueError(f"rows must be 'cond', a slice or indices, not {self.rows!r}")
            p = p[p.shape[0] // 2 :]
        elif self.rows is not None:
            p = p[self.rows]
        if self.tokens is not None:
            p = p[..., self.tokens]
        if self.heads == "mean":
            p = p.mean(1, keepdim=True)
        if not self.keep_grad:
            p = p.detach()
            if self.to_cpu:
                p = p.float().cpu()
        self.maps.setdefault(name, {})[self.step] = p
        if self.stop_when_full and all(self.step in self.maps.get(n, {}) for n in self.layers):
            raise EnoughRecorded

    def get(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch, heads, queries, tokens) of layer ``name`` at ``step`` (default: the last recorded)."""
        if name not in self.maps:
            raise KeyError(f"no maps recorded for {name!r}; recorded: {sorted(self.maps)}")
        by_step = self.maps[name]
        return by_step[max(by_step) if step is None else step]

    def grid(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch, heads, h, w, tokens) of layer ``name`` at ``step``."""
        p = self.get(name, step)
        h, w = grid_shape(p.shape[2], self.aspect)
        return p.reshape(*p.shape[:2], h, w, p.shape[-1])

    def flat(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch·heads, queries, tokens), the layout of ``attn.get_attention_scores``."""
        p = self.get(name, step)
        return p.flatten(0, 1)


def record_attention(unet, layers=None, keep_grad: bool = False, **kwargs) -> AttentionStore:
    """``with record_attention(unet, ["mid", "up.1"]) as store: ...`` — see :class:`AttentionStore`."""
    return AttentionStore(unet, layers, keep_grad=keep_grad, **kwargs)


def run_until_recorded(forward, *args, **kwargs) -> None:
    """Call ``forward(*args, **kwargs)``, stopping quietly where a ``stop_when_full`` store has all it needs."""
    try:
        forward(*args, **kwargs)
    except EnoughRecorded:
        pass
