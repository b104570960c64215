"""The uncertainty of one evaluation: accuracy intervals and paired comparisons from per-example correctness.

An accuracy measured on ``n`` validation images is a binomial proportion; on 3,000 images near 0.88 its standard
error is 0.6 points, as large as the differences a search ranks on. Every trial that reaches full fidelity keeps
which images it got right (``val_correct``, :mod:`trainers.bitmap`), so:

* :func:`accuracy_interval` — the Wilson score interval of ``k`` right of ``n`` (E. B. Wilson, "Probable inference,
  the law of succession, and statistical inference", JASA 1927): centre ``(p + z²/2n) / (1 + z²/n)``, half-width
  ``z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)``; unlike the normal interval it stays inside [0, 1] and is not
  degenerate at 0 or 1;
* :func:`mcnemar_exact` — McNemar's test for two classifiers on the same images (Q. McNemar, Psychometrika 1947;
  exact form: the discordant pairs are Binomial(b + c, 1/2) under "equally accurate", two-sided
  ``p = min(1, 2 · P[X ≤ min(b, c)])``, as in Dietterich, "Approximate statistical tests for comparing supervised
  classification learning algorithms", Neural Computation 1998);
* :func:`compare` — the difference of two accuracies on the same images with its paired-bootstrap percentile
  interval (Efron & Tibshirani 1993, ch. 13: resample images, not the two runs independently) and McNemar's p.

Only the validation sample is resampled here: the noise of the training seed is a second, separate source that only
replicates measure. numpy and the standard library only (the read side has no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainers import bitmap

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 % intervals
TARGET_SE = 0.005  # the standard error an accuracy should have from its validation images alone (0.5 points)
PRIOR_DOF = 2.0  # how many within-architecture degrees of freedom the prior seed SD counts for
PRIOR_SEED_SD = 0.005  # the seed SD of accuracy assumed before replicates measure it (the lab's table: 0.0045)
SETTLED = 0.9  # ``replicates.settled``'s default: P(front) at which a membership of the front counts as settled


def accuracy_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` right of ``n`` (95 % by default), as fractions in [0, 1].

    Raises:
        ValueError: ``n < 1`` or ``correct`` outside [0, n].
    """
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def precision_note(images: int, typical: float = 0.85) -> tuple[str, bool]:
    """What ``images`` validation images can tell apart: (a line with the 95 % half-width of an accuracy at
    ``typical`` and at worst (0.5), whether the standard error at worst exceeds :data:`TARGET_SE` (then the
    line says how many images would keep it within))."""
    half = lambda p: 100 * Z95 * math.sqrt(p * (1 - p) / images)  # noqa: E731
    worst_se = 100 * math.sqrt(0.25 / images)
    line = (
        f"validation {images:,} images: an accuracy is known to ±{half(typical):.2f} pt at {typical:.2f} "
        f"(±{half(0.5):.2f} pt at worst; 95 %) from the images alone"
    )
    coarse = worst_se > 100 * TARGET_SE + 1e-9
    if coarse:
        need = math.ceil(0.25 / TARGET_SE**2)
        line += f"; {need:,} images (dataset.val_fraction, or the official test split) keep its error within 0.5 pt"
    return line, coarse


def bitmap_interval(text: str, z: float = Z95) -> tuple[float, float, float]:
    """(accuracy, low, high) of a stored correctness bitmap (:mod:`trainers.bitmap`)."""
    right, n = bitmap.count(text)
    return (right / n, *accuracy_interval(right, n, z))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for two classifiers' correctness on the same examples (1.0 if they never
    disagree)."""
    a, b = _same_examples(a, b)
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(only_a, only_b) + 1))  # exact integers: no underflow at any m
    return min(1.0, 2 * tail / 2**m)


@dataclass(frozen=True)
class PairedComparison:
    """Architecture A minus architecture B on the same validation images.

    ``diff`` = acc(A) − acc(B); [``lo``, ``hi``] its paired-bootstrap interval; ``p_value`` McNemar's exact p;
    ``only_a`` / ``only_b`` the images only A / only B got right; ``n`` the images.
    """

    diff: float
    lo: float
    hi: float
    p_value: float
    only_a: int
    only_b: int
    n: int
    level: float

    @property
    def settled(self) -> bool:
        """Whether the images settle the sign of ``diff``: the interval excludes 0 *and* McNemar rejects "equally
        accurate" at the same level (the percentile bootstrap alone is too eager when few images differ)."""
        return (self.lo > 0 or self.hi < 0) and self.p_value < 1 - self.level

    def describe(self) -> str:
        """One line: the difference in points with its interval, and McNemar's p."""
        pct = round(self.level * 100)
        return (
            f"{self.diff * 100:+.2f} pt ({pct} % CI {self.lo * 100:+.2f} to {self.hi * 100:+.2f}; McNemar p = "
            f"{self.p_value:.3g}; {self.only_a} vs {self.only_b} of {self.n} images right on one side only)"
        )


def compare(
    a: np.ndarray | str, b: np.ndarray | str, resamples: int = 4000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """A minus B, paired on the same images: bitmaps as boolean arrays or as stored text (:mod:`trainers.bitmap`).

    The bootstrap draws the images with replacement ``resamples`` times (multinomial counts, one matrix product) and
    takes the percentile interval of the difference; seeded, so the same inputs give the same interval.

    Raises:
        ValueError: the two bitmaps are not of the same number of examples, or ``level`` is not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"compare: level must be in (0, 1), got {level}")
    x, y = _same_examples(_bits(a), _bits(b))
    n = x.size
    delta = x.astype(np.int64) - y.astype(np.int64)
    rng = np.random.default_rng(seed)
    uniform, draws = np.full(n, 1.0 / n), []
    for start in range(0, resamples, 256):  # in blocks: a (resamples x n) count matrix at once would be large
        draws.append(rng.multinomial(n, uniform, size=min(256, resamples - start)) @ delta / n)
    lo, hi = np.quantile(np.concatenate(draws), [(1 - level) / 2, (1 + level) / 2])
    return PairedComparison(
        diff=float(delta.mean()),
        lo=float(lo),
        hi=float(hi),
        p_value=mcnemar_exact(x, y),
        only_a=int(np.count_nonzero(delta > 0)),
        only_b=int(np.count_nonzero(delta < 0)),
        n=n,
        level=level,
    )


def _bits(v: np.ndarray | str) -> np.ndarray:
    return bitmap.unpack(v) if isinstance(v, str) else np.asarray(v).astype(bool).reshape(-1)


def _same_examples(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool).reshape(-1), np.asarray(b).astype(bool).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"paired comparison needs two bitmaps of the same examples, got {a.size} and {b.size}")
    return a, b


# ---------------------------------------------------------------------------------------------- seeds and throughput


def pooled_seed_sd(groups: Sequence[Sequence[float]], prior_sd: float, prior_dof: float = PRIOR_DOF) -> float:
    """The within-architecture SD of accuracy across seeds, pooled over every architecture with two or more seeds
    and shrunk towards ``prior_sd`` (counted as ``prior_dof`` degrees of freedom):
    ``sqrt((prior_dof·prior² + Σ (k_a − 1)·var_a) / (prior_dof + Σ (k_a − 1)))``."""
    num, dof = prior_dof * prior_sd**2, prior_dof
    for g in groups:
        if len(g) >= 2:
            num += (len(g) - 1) * float(np.var(g, ddof=1))
            dof += len(g) - 1
    return math.sqrt(num / dof) if dof > 0 else prior_sd


def seed_mean_interval(
    seed_values: Sequence[float],
    seed_bits: Sequence[str | None] = (),
    prior_seed_sd: float = PRIOR_SEED_SD,
    z: float = Z95,
) -> tuple[float, float] | None:
    """The 95 % interval of an architecture's mean accuracy over ``k >= 2`` seeds: the images' error of the mean
    per-image correctness (when every seed kept its correct images) and the seed error ``s / sqrt(k)`` (``s`` its own
    seed SD shrunk to the prior, :func:`pooled_seed_sd`); None with fewer seeds."""
    if len(seed_values) < 2:
        return None
    mean = float(np.mean(seed_values))
    var = pooled_seed_sd([seed_values], prior_seed_sd) ** 2 / len(seed_values)
    if seed_bits and all(seed_bits):
        per_image = np.mean([bitmap.unpack(b).astype(float) for b in seed_bits], axis=0)
        var += float(np.var(per_image, ddof=1)) / per_image.size
    half = z * math.sqrt(var)
    return max(0.0, mean - half), min(1.0, mean + half)


def throughput_log_sd(tp: dict[str, Any]) -> float:
    """The spread of one throughput measurement as an SD of log throughput: the SD of the logs of its repeats, else
    its CV (a tabulated measurement keeps median, IQR and CV only), else IQR / 1.349 / median; 0 without any.
    One measurement's spread, not its median's standard error: the load that moves its repeats moves the whole
    measurement too, and the trials of a study were measured minutes apart (see nas.settle)."""
    values = [float(v) for v in (tp.get("values") or []) if v and v > 0]
    if len(values) >= 2:
        return float(np.std(np.log(values), ddof=1))
    if tp.get("cv"):
        return float(tp["cv"])
    if tp.get("iqr") and tp.get("median"):
        return float(tp["iqr"]) / 1.349 / float(tp["median"])
    return 0.0
