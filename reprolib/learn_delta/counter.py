"""Counting UNet evaluations: the measure of a learning scheme's compute."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class UNetCounter:
    """Counts every call of ``unet`` while in use: calls, rows (latents) and rows evaluated with grad.

        with UNetCounter(pipe.unet) as counter:
            ...
        counter.counts()  # {"calls": ..., "rows": ..., "grad_rows": ...}

    A forward pre-hook on the module sees each evaluation whoever makes it, and changes nothing.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.calls = self.rows = self.grad_rows = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._paused = False

    def __enter__(self) -> UNetCounter:
        self._handle = self.unet.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the evaluations made inside uncounted (a callback's previews are not the learning's compute)."""
        was, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = was

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._paused:
            return
        rows = (args[0] if args else kwargs["sample"]).shape[0]
        self.calls += 1
        self.rows += rows
        if torch.is_grad_enabled():
            self.grad_rows += rows

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "rows": self.rows, "grad_rows": self.grad_rows}

    def restore(self, counts: dict[str, int]) -> None:
        """Continue from saved counts (a resumed run)."""
        self.calls, self.rows, self.grad_rows = counts["calls"], counts["rows"], counts["grad_rows"]
