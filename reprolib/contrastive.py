"""Optimization-free attribute deltas (Baumann et al., §3.2): the mean difference of subject-token embeddings.

For every prefix × prompt pair, encode "prefix + positive" and "prefix + negative" exactly as the
pipeline does (:meth:`TextConditioning.encode`), read the subject's token-wise embedding and average
e₊ − e₋. A prompt's subject token then moves along the attribute by adding α·Δ to it; nothing is trained.

Which token is read (``token=``): ``"subject"`` (default) the mean over the tokens of the pair's subject
pattern; ``"last"`` the last token of the whole prompt, as the original code does. The two agree whenever
the phrase ends in its subject ("a photo of an old man"), as every shipped config does; for a phrase
that does not ("man with grey hair" reads "hair"; in the shapes world "big red circle and a blue square"
reads "square") the original's delta is the difference of another word's embedding.
"""

from __future__ import annotations

import torch

from . import checks
from .conditioning import TextConditioning, Tokens
from .delta import Delta
from .prompts import PromptConfig, load_config
from .tokens import SpanError, token_span

TOKEN_CHOICES = ("subject", "last")


def subject_span(tokens: Tokens, pattern: str, start: int = 0) -> list[int]:
    """Token positions of ``pattern`` that lie at or after character ``start``.

    The pattern is looked up in the pair's own words, not in the prefix: in
    "a blue circle and a big red circle" only the second "circle" is the subject.
    """
    pos = [i for i in token_span(tokens, pattern) if tokens.offsets[i][0] >= start]
    if not pos:
        raise SpanError(
            f"{pattern!r} occurs in {tokens.text!r} only in the prefix (before character {start}), "
            f"not in the prompt pair itself; fix the pair's pattern. Tokens: {tokens.table()}"
        )
    return pos


def last_token(tokens: Tokens) -> list[int]:
    """The position of the prompt's last non-special token (the original naive delta's choice)."""
    return [max(i for i, s in enumerate(tokens.special) if not s)]


def contrastive_delta(pipe, config, *, batch_size: int = 64, token: str = "subject") -> Delta:
    """The attribute :class:`Delta` of ``config`` (a shipped name like "shapes/size", a path, dict or PromptConfig).

    One vector per text encoder: ``mean over prefixes × pairs of e(prefix+positive)[subject] −
    e(prefix+negative)[subject]``, computed in batches of ``batch_size`` prompts. ``token``: ``"subject"``
    (the subject pattern's tokens, averaged) or ``"last"`` (the prompt's last token, as the original).
    """
    cfg: PromptConfig = load_config(config)
    checks.integer(batch_size, "batch_size", minimum=1)
    if token not in TOKEN_CHOICES:
        raise checks.InputError(
            f"token must be one of {TOKEN_CHOICES} (which token's embedding the delta reads), got {token!r}"
        )
    cond = TextConditioning(pipe)
    # (text, pattern, where the pair starts, sign): the positive adds, the negative subtracts
    jobs: list[tuple[str, str, int, float]] = []
    for prefix, pair in cfg.combinations():
        for text, pattern, sign in ((pair.positive, pair.patterns[0], 1.0), (pair.negative, pair.patterns[1], -1.0)):
            full = PromptConfig.join(prefix, text)
            jobs.append((full, pattern, len(full) - len(PromptConfig.join("", text)), sign))

    # float64 sums: the mean over hundreds of prompts should not depend on batch size
    sums = {name: torch.zeros(dim, dtype=torch.float64) for name, dim in cond.dims.items()}
    for b0 in range(0, len(jobs), batch_size):
        chunk = jobs[b0 : b0 + batch_size]
        emb = cond.encode([text for text, *_ in chunk])
        for b, (_, pattern, start, sign) in enumerate(chunk):
            pos = subject_span(emb.tokens[b], pattern, start) if token == "subject" else last_token(emb.tokens[b])
            for name, states in emb.states.items():
                sums[name] += sign * states[b, pos].double().mean(0).cpu()

    n = len(cfg.combinations())
    return Delta(
        {k: (v / n).float() for k, v in sums.items()},
        {
            "family": cond.family,
            "model": str(getattr(pipe, "name_or_path", "") or ""),
            "tag": cfg.tag,
            "method": "contrastive",
            "token": token,
            "n_pairs": n,
            "dims": cond.dims,
            "fingerprint": cond.fingerprint(),
        },
    )
