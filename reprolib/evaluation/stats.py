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
