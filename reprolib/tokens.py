"""Which token positions a word or pattern covers, from the tokenizer's character offsets.

Sub-word safe ("astronaut" may be two tokens: both are returned), every match counts,
case-insensitive, and start/end/padding tokens are never returned.
"""

from __future__ import annotations

import re

from .conditioning import Tokens


class SpanError(ValueError):
    """A pattern that matches nothing in the prompt, or only part of a token."""


def _regex(pattern: str) -> re.Pattern:
    if re.fullmatch(r"[\w\s'-]+", pattern):  # a plain word or phrase: whole words only ("man" ≠ "woman")
        return re.compile(r"\b" + r"\s+".join(map(re.escape, pattern.split())) + r"\b", re.IGNORECASE)
    return re.compile(pattern, re.IGNORECASE)


def token_span(tokens: Tokens, pattern: str) -> list[int]:
    """Positions of the tokens covered by every match of ``pattern`` (a word, phrase or regex).

    A regex with a group (like the original's ``\\b(man)\\b``) selects the group's characters.
    """
    rx = _regex(pattern)
    matches = [(m.start(1), m.end(1)) if rx.groups else m.span() for m in rx.finditer(tokens.text)]
    matches = [(s, e) for s, e in matches if e > s]
    if not matches:
        raise SpanError(f"{pattern!r} does not occur in the prompt {tokens.text!r}. Its tokens are: {tokens.table()}")
    positions: list[int] = []
    for s, e in matches:
        hit = [i for i, (a, b) in enumerate(tokens.offsets) if not tokens.special[i] and a < e and b > s]
        if not hit:
            raise SpanError(
                f"{pattern!r} matches {tokens.text[s:e]!r}, which was truncated away "
                f"(the prompt is longer than the tokenizer's {len(tokens)} tokens): {tokens.table()}"
            )
        for i in hit:
            a, b = tokens.offsets[i]
            if a < s or b > e:
                raise SpanError(
                    f"{pattern!r} matches only part of token {i} {tokens.tokens[i]!r} "
                    f"({tokens.text[a:b]!r}) in {tokens.text!r}. Match whole tokens; the prompt's "
                    f"tokens are: {tokens.table()}"
                )
        positions += hit
    return sorted(set(positions))
