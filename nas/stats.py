"""Rank agreement between two scorings of the same architectures (numpy only: the read side has no scipy).

* :func:`kendall_tau` — Kendall's tau-b (Kendall, "The treatment of ties in ranking problems", Biometrika 1945):
  concordant minus discordant pairs over the geometric mean of the pairs untied in each scoring;
* :func:`spearman_rho` — Spearman's rho: Pearson correlation of the average ranks (ties share their mean rank).

:func:`rank_agreement` gives both, None where undefined (what calibration and validation store).

How well a proxy training ranks architectures like a longer one is what calibration and validation report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _paired(x: Sequence[float], y: Sequence[float], who: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{who}: x and y must be paired 1-D sequences, got {a.shape} and {b.shape}")
    return a, b


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of paired scores; NaN with fewer than two pairs or when one side is constant."""
    a, b = _paired(x, y, "kendall_tau")
    if len(a) < 2:
        return float("nan")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n_a, n_b = np.count_nonzero(da), np.count_nonzero(db)  # pairs untied in x, in y
    if n_a == 0 or n_b == 0:
        return float("nan")
    return float(np.sum(da * db) / np.sqrt(float(n_a) * float(n_b)))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):  # ties share their average rank
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of paired scores; NaN with fewer than two pairs or when one side is constant."""
    a, b = _paired(x, y, "spearman_rho")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_agreement(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """(Kendall's tau-b, Spearman's rho) of paired scores, each None where it is undefined (fewer than two pairs,
    a constant side) — the JSON-safe form stored on a study."""
    tau, rho = kendall_tau(x, y), spearman_rho(x, y)
    return (None if tau != tau else tau), (None if rho != rho else rho)
