"""Statistics the probes report."""

from __future__ import annotations

import numpy as np


def spearman(x, y) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN pairs are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan")

    def ranks(v):
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):  # ties share their mean rank
            r[v == u] = r[v == u].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def leak_ratio(subject_change: float, other_change: float) -> float:
    """|other object's change| ÷ |edited subject's change|: 0 when neither changed, inf when only the other did
    (an edit that left its subject as it was and moved the bystander leaked without bound)."""
    subject, other = abs(float(subject_change)), abs(float(other_change))
    if subject == 0:
        return 0.0 if other == 0 else float("inf")
    return other / subject
