"""Boxes for layout guidance: checked, tied to the prompt's tokens, and laid on a map's cells.

A box is normalised ``(x0, y0, x1, y1)``: fractions of the image from the top left.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import torch

from ..checks import InputError
from ..conditioning import Tokens
from ..tokens import SpanError, token_span

Box = tuple[float, float, float, float]


class BoxError(InputError):
    """A box that is not a normalised (x0, y0, x1, y1) or a phrase that is not in the prompt."""


def normalise_boxes(boxes: dict) -> dict[str, list[Box]]:
    """``{phrase: box or [boxes]}`` → ``{phrase: [boxes]}``, each checked: in [0, 1], x0 < x1, y0 < y1."""
    if not isinstance(boxes, dict) or not boxes:
        raise BoxError(f"boxes must be a non-empty dict {{phrase: (x0, y0, x1, y1) or [boxes]}}, got {boxes!r}")
    out = {}
    for phrase, value in boxes.items():
        if not isinstance(phrase, str) or not phrase.strip():
            raise BoxError(f"box keys are phrases of the prompt, got {phrase!r}")
        if not isinstance(value, (list, tuple)):
            raise BoxError(f"the box for {phrase!r} must be (x0, y0, x1, y1) or a list of them, not {value!r}")
        items = [value] if value and all(isinstance(v, Real) for v in value) else list(value)  # one bare box
        if not items:
            raise BoxError(f"{phrase!r} has an empty list of boxes")
        checked = []
        for box in items:
            four = isinstance(box, (list, tuple)) and len(box) == 4
            if not four or not all(isinstance(v, Real) and math.isfinite(v) for v in box):
                raise BoxError(f"box {box!r} for {phrase!r} is not four finite numbers (x0, y0, x1, y1)")
            x0, y0, x1, y1 = map(float, box)
            if min(x0, y0, x1, y1) < 0 or max(x0, y0, x1, y1) > 1:
                raise BoxError(
                    f"box {box!r} for {phrase!r} is not normalised: coordinates are fractions of "
                    "the image in [0, 1] from the top left (divide pixels by the width/height)"
                )
            if not (x0 < x1 and y0 < y1):
                raise BoxError(
                    f"box {box!r} for {phrase!r} is empty or flipped: need x0 < x1 and y0 < y1 "
                    "(order is x0, y0, x1, y1, origin top-left)"
                )
            checked.append((x0, y0, x1, y1))
        out[phrase] = checked
    return out


@dataclass
class Target:
    """A boxed phrase: its boxes and its token positions in each prompt of the batch."""

    phrase: str
    boxes: list[Box]
    positions: list[list[int]]


def targets_for(tokens_list: Sequence[Tokens], boxes: dict) -> list[Target]:
    """One :class:`Target` per phrase; :class:`BoxError` if a phrase is not in every prompt."""
    out = []
    for phrase, bx in normalise_boxes(boxes).items():
        try:
            pos = [token_span(t, phrase) for t in tokens_list]
        except SpanError as e:
            raise BoxError(f"box phrase {phrase!r}: {e}") from None
        out.append(Target(phrase, bx, pos))
    return out


def _coverage(a: float, b: float, n: int) -> torch.Tensor:
    """For each of n equal cells of [0, 1], the fraction of it inside [a, b]."""
    edges = torch.arange(n + 1, dtype=torch.float32) / n
    return (edges[1:].clamp(max=b) - edges[:-1].clamp(min=a)).clamp(min=0) * n


def box_mask(boxes: Sequence[Box], h: int, w: int) -> torch.Tensor:
    """Tensor[h, w]: how much of each map cell the boxes cover (1 inside, 0 outside, fractions on edges).

    The official code rounds box edges down to cells (``int(x0 * W)``); area weights agree with it
    for boxes on cell edges and stay meaningful on 4×4 or 8×8 maps, where rounding moves edges a lot.
    """
    m = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes:
        m = torch.maximum(m, _coverage(y0, y1, h)[:, None] * _coverage(x0, x1, w)[None, :])
    return m


def parse_box(text: str) -> tuple[str, Box]:
    """``"red circle=0,0,0.5,0.5"`` → ``("red circle", (0.0, 0.0, 0.5, 0.5))``."""
    phrase, sep, coords = text.rpartition("=")
    nums = [c for c in re.split(r"[,\s]+", coords.strip()) if c]
    try:
        box = tuple(float(c) for c in nums)
    except ValueError:
        box = ()
    if not sep or not phrase.strip() or len(box) != 4:
        raise BoxError(
            f"--box {text!r}: write it as 'phrase=x0,y0,x1,y1' with normalised coordinates, "
            "e.g. --box 'red circle=0,0,0.5,0.5'"
        )
    return phrase.strip(), box
