"""Which token positions a word or pattern covers, from the tokenizer's character offsets.

Sub-word safe ("astronaut" may be two tokens: both are returned), every match counts,
case-insensitive, and start/end/padding tokens are never returned. A pattern is taken literally
("(red) circle" means those characters) unless it is a compiled ``re.Pattern`` or ``regex=True``.
"""

from __future__ import annotations

import re

from .checks import InputError
from .checks import pattern as check_pattern
from .conditioning import Tokens


class SpanError(InputError):
    """A pattern that matches nothing in the prompt, or only part of a token."""


def as_regex(pattern: str | re.Pattern, regex: bool = False) -> re.Pattern:
    """The case-insensitive regex a pattern stands for: a word or phrase matches those words whole ("man" ≠
    "woman", any spacing, other characters literal); a ``re.Pattern`` (or ``regex=True``) is a regex."""
    check_pattern(pattern)
    if isinstance(pattern, re.Pattern):
        return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)
    if regex:
        try:
            return re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise InputError(f"pattern {pattern!r} is not a valid regex ({e}); drop regex=True for a word") from None
    words = pattern.split()
    head = r"\b" if re.match(r"\w", words[0]) else ""
    tail = r"\b" if re.search(r"\w$", words[-1]) else ""
    return re.compile(head + r"\s+".join(map(re.escape, words)) + tail, re.IGNORECASE)


def token_span(tokens: Tokens, pattern: str | re.Pattern, regex: bool = False) -> list[int]:
    """Positions of the tokens covered by every match of ``pattern`` (a word or phrase; a regex if it is a
    ``re.Pattern`` or ``regex=True``).

    A regex with a group (like the original's ``\\b(man)\\b``) selects the group's characters.
    """
    rx = as_regex(pattern, regex)
    matches = [(m.start(1), m.end(1)) if rx.groups else m.span() for m in rx.finditer(tokens.text)]
    matches = [(s, e) for s, e in matches if e > s]
    if not matches:
        literal = isinstance(pattern, str) and not regex and re.search(r"[()\[\]|*+?\\.^$]", pattern)
        hint = " (a pattern is taken literally; for a regex pass re.compile(...) or regex=True)" if literal else ""
        raise SpanError(
            f"{pattern!r} does not occur in the prompt {tokens.text!r}{hint}. Its tokens are: {tokens.table()}"
        )
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
