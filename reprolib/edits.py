"""Attribute edits: α·Δ added to one subject's token-wise embeddings (Baumann et al.)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from .checks import edit_list
from .conditioning import Embeddings, TextConditioning
from .delta import Delta
from .tokens import token_span


class Edit(NamedTuple):
    """Add ``alpha``·``delta`` to the tokens of ``pattern`` (a word or phrase of the prompt; a compiled
    ``re.Pattern`` for a regex).

    ``reach``: what cross-attention reads the edited tokens for. ``"keys+values"`` (the paper): where the
    subject is drawn and what is drawn there; ``"values"``: what alone, the keys made from the unedited
    tokens, so the subject keeps the pixels the unedited prompt gives it and cannot take another object's.
    None: ``generate``'s choice, ``"values"`` for edits of an inverted picture (chosen by measurement,
    ``benchmarks/inversion.py --reach``), the paper's otherwise.

    ``delay``: this edit's own share of unedited first steps; None: ``generate``'s ``delay``. An attribute
    the model settles early (colour, in the shapes world) can start before one it settles late (size).
    """

    delta: Delta
    pattern: str | re.Pattern
    alpha: float
    reach: str | None = None
    delay: float | None = None


def as_edits(edits: Iterable) -> list[Edit]:
    """``edits`` as :class:`Edit`\\ s; plain ``(delta, pattern, alpha)`` tuples are accepted."""
    return [Edit(*e) for e in edit_list(edits)]


def apply_edits(
    cond: TextConditioning, emb: Embeddings, edits: Iterable[Edit], default_reach: str = "keys+values"
) -> Embeddings:
    """``emb`` with α·Δ added to each edit's tokens, per encoder, in every prompt of the batch; to the
    states the keys are made from too unless the edit reaches the values alone (``Edit.reach``;
    ``default_reach`` where it is None).

    The pooled embedding is left as it is (as in Baumann et al.): deltas are token-wise.
    """
    edits = [e if e.reach else e._replace(reach=default_reach) for e in as_edits(edits)]
    if not edits:
        return emb
    out = emb.clone()
    if out.keys is None and any(e.reach == "values" for e in edits):
        out.keys = {k: v.clone() for k, v in out.states.items()}
    for delta, pattern, alpha, reach, _ in edits:
        delta.check(cond)
        targets = [out.states] if reach == "values" or out.keys is None else [out.states, out.keys]
        for b, toks in enumerate(out.tokens):
            pos = token_span(toks, pattern)
            for name, vec in delta.vectors.items():
                for states in targets:
                    s = states[name]
                    s[b, pos] += alpha * vec.to(s.device, s.dtype)
    return out
