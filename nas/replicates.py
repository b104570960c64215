"""Seed replicates on the read side: an architecture's accuracy over its training seeds, and how sure its place on
the front is.

One training run's accuracy is one draw: a second seed of the same architecture moves it by about as much as the
differences a search ranks on, and two seeds rank the same architectures alike only moderately (the figures:
benchmarks/RESULTS.md, "Seed noise of the lab table"). So:

* :func:`merge` — an architecture evaluated with several seeds (the first evaluation plus its ``replicate`` trials,
  never reused copies) is one point whose accuracy is the **mean over its seeds**; the front is computed on those
  means (``nas.results.eligible`` calls this).
* :func:`front_probability` — P(front) of each architecture: the share of ``draws`` resampled worlds in which it is
  on the Pareto front. Each draw resamples the two noises an accuracy carries, separately:

  - the **validation images**: one bootstrap resample of the images, shared by every architecture (they
    were all evaluated on the same images: the comparison stays paired), applied to each seed's correctness bitmap; an
    evaluation without a bitmap gets an independent normal draw of its binomial error instead;
  - the **training seed**: a normal draw of SD ``s / sqrt(k)`` for an architecture with ``k`` seeds, ``s`` the
    pooled within-architecture seed SD (:func:`pooled_seed_sd`: measured from the replicates, shrunk towards a
    prior SD while few exist).

  Throughput is resampled too (issue 30), log-normal within its measurement's spread (:func:`throughput_log_sd`):
  under load one measurement spreads by a third, and an order decided by the load is not the architectures'.
  Parameters and FLOPs are exact.

Racing (nas.engine.racing) retrains the architectures whose P(front) is neither near 1 nor near 0. numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.evaluation import pooled_seed_sd, throughput_log_sd
from nas.study_record import StudyRecord
from nas.trial_record import TrialRecord
from trainers import bitmap

if TYPE_CHECKING:
    from nas.layout import Objective


def merge(evaluations: Sequence[TrialRecord]) -> list[TrialRecord]:
    """One record per architecture: its first evaluation, with ``accuracy`` the mean over its seeds.

    ``evaluations`` are COMPLETE full-fidelity trials with every objective (no reused copies), in trial order. An
    architecture's seeds are its first trial that is not a replicate (a second such trial — two drivers that
    trained it at once — is the same seed and adds nothing) and its ``replicate`` trials, one per seed.
    """
    groups: dict[str, list[TrialRecord]] = {}
    order: list[str] = []
    for r in evaluations:
        key = r.arch_id if r.arch_id is not None else f"trial-{r.number}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    out = []
    for key in order:
        first = next((r for r in groups[key] if r.replicate is None), groups[key][0])
        seen_seeds = {first.replicate or 0}
        seeds = [first]
        for r in groups[key]:
            if r.replicate is not None and r.replicate not in seen_seeds:
                seen_seeds.add(r.replicate)
                seeds.append(r)
        out.append(_merged(first, seeds))
    return out


def _merged(first: TrialRecord, seeds: list[TrialRecord]) -> TrialRecord:
    accs = [r.values["accuracy"] for r in seeds if "accuracy" in r.values]
    values = dict(first.values)
    if len(accs) == len(seeds) and len(seeds) > 1:
        values["accuracy"] = float(np.mean(accs))
    return dataclasses.replace(
        first,
        values=values,
        seed_values=accs,
        seed_bits=[r.val_correct for r in seeds],
        seed_trials=[r.number for r in seeds],
    )


def front_probability(
    archs: Sequence[TrialRecord],
    objectives: Sequence[Objective],
    prior_seed_sd: float,
    draws: int = 1000,
    seed: int = 0,
    predicted_sd: Sequence[float | None] | None = None,
) -> dict[int, float]:
    """P(front) of each merged architecture record (:func:`merge`), by trial number (see the module docstring).
    ``predicted_sd``: for an architecture whose accuracy is a prediction (a pruned one, :func:`rung_extrapolation`),
    the SD of that prediction, which then replaces its image and seed noise; None for a measured one.

    Without an ``accuracy`` objective nothing is noisy: 1.0 on the front, 0.0 off it.
    """
    if not archs:
        return {}
    share = front_membership(archs, objectives, prior_seed_sd, draws, seed, predicted_sd).mean(0)
    return {r.number: float(p) for r, p in zip(archs, share, strict=True)}


def front_membership(
    archs: Sequence[TrialRecord],
    objectives: Sequence[Objective],
    prior_seed_sd: float,
    draws: int,
    seed: int = 0,
    predicted_sd: Sequence[float | None] | None = None,
) -> np.ndarray:
    """(draws, archs) booleans: whether each architecture is on the front in each resampled world (accuracy and,
    where its measurement has a spread, throughput resampled; every other objective fixed)."""
    names = [o.name for o in objectives]
    sign = np.array([1.0 if o.direction == "maximize" else -1.0 for o in objectives])
    base = np.array([[r.values[n] for n in names] for r in archs], dtype=float) * sign
    noisy: dict[int, np.ndarray] = {}  # objective index -> (draws, archs) drawn values, signed
    if "accuracy" in names:
        j = names.index("accuracy")
        noisy[j] = _accuracy_draws(archs, prior_seed_sd, draws, np.random.default_rng(seed), predicted_sd) * sign[j]
    if "throughput" in names:
        k = names.index("throughput")
        tp = _throughput_draws(archs, base[:, k] * sign[k], draws, np.random.default_rng([seed, 1]))
        if tp is not None:
            noisy[k] = tp * sign[k]
    if not noisy:
        draws = 1
    out = np.zeros((draws, len(archs)), dtype=bool)
    live = _possible(base, noisy) if noisy else np.arange(len(archs))  # exact, see _possible
    fixed = base[live]  # the objectives no draw changes, compared once: (live, live)
    ge0 = np.ones((len(live), len(live)), dtype=bool)  # [c, a]: c at least as good as a in every fixed objective
    gt0 = np.zeros((len(live), len(live)), dtype=bool)  # [c, a]: c better than a in some fixed objective
    for k in range(base.shape[1]):
        if k not in noisy:
            ge0 &= fixed[:, None, k] >= fixed[None, :, k]
            gt0 |= fixed[:, None, k] > fixed[None, :, k]
    if not noisy:
        out[:, live] = ~(ge0 & gt0).any(0)
        return out
    for start in range(0, draws, 64):  # the drawn objectives in blocks: (block, live, live) booleans
        ge, gt = ge0, gt0
        for d in noisy.values():
            a = d[start : start + 64][:, live]
            ge = ge & (a[:, :, None] >= a[:, None, :])  # [b, c, a]: c at least as good as a everywhere
            gt = gt | (a[:, :, None] > a[:, None, :])
        out[start : start + len(a), live] = ~(ge & gt).any(1)
    return out


def _possible(base: np.ndarray, noisy: dict[int, np.ndarray]) -> np.ndarray:
    """Indices of the architectures that some draw may put on the front: ``a`` is left out when another ``c`` with
    its *worst* drawn values still dominates ``a`` with its *best* (then ``c`` dominates ``a`` in every draw).
    Leaving them out changes no one's membership: whatever such an ``a`` dominates in a draw, the ``c`` that
    dominates it there dominates too (dominance is transitive)."""
    hi, lo = base.copy(), base.copy()
    for k, d in noisy.items():
        hi[:, k], lo[:, k] = d.max(0), d.min(0)
    keep = []
    for a in range(len(base)):  # one row at a time: no (archs, archs) matrix for a large study
        ge = (lo >= hi[a]).all(1)
        gt = (lo > hi[a]).any(1)
        if not (ge & gt).any():
            keep.append(a)
    return np.array(keep, dtype=int)


def _throughput_draws(
    archs: Sequence[TrialRecord], measured: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray | None:
    """(draws, archs) resampled throughputs, log-normal around each measured value with its measurement's spread
    (:func:`throughput_log_sd`); None when no measurement has a spread (an exact device: nothing to resample)."""
    sd = np.array([throughput_log_sd(r.throughput) for r in archs])
    if not (sd > 0).any():
        return None
    return measured[None, :] * np.exp(rng.normal(0.0, 1.0, (draws, len(archs))) * sd[None, :])


def _accuracy_draws(
    archs: Sequence[TrialRecord],
    prior_seed_sd: float,
    draws: int,
    rng: np.random.Generator,
    predicted_sd: Sequence[float | None] | None = None,
) -> np.ndarray:
    """(draws, archs) resampled mean accuracies: shared image bootstrap on the bitmaps, plus seed noise; a predicted
    accuracy (``predicted_sd`` not None) is drawn from its prediction's normal instead."""
    predicted = list(predicted_sd) if predicted_sd is not None else [None] * len(archs)
    measured = [r for r, sd in zip(archs, predicted, strict=True) if sd is None]
    seeds = [r.seed_values or [r.values["accuracy"]] for r in archs]
    bits = [r.seed_bits or [r.val_correct] for r in archs]
    s = pooled_seed_sd([r.seed_values for r in measured], prior_seed_sd)
    out = np.zeros((draws, len(archs)))
    lengths = {bitmap.unpack(b).size for r in measured for b in (r.seed_bits or [r.val_correct]) if b}
    n_img = lengths.pop() if len(lengths) == 1 else None  # one validation set: resample it, paired
    moved = _image_bootstrap(
        [b for i, bs in enumerate(bits) if predicted[i] is None and all(bs) for b in bs], n_img, draws, rng
    ) if n_img else {}  # fmt: skip
    for i, (accs, bs) in enumerate(zip(seeds, bits, strict=True)):
        if predicted[i] is not None:
            out[:, i] = archs[i].values["accuracy"] + rng.normal(0.0, predicted[i], draws)
            continue
        if moved and all(bs):  # each seed's accuracy moved by its images' resampled deviation
            for a, b in zip(accs, bs, strict=True):
                out[:, i] += (a + moved[b]) / len(accs)
        else:
            p = float(np.mean(accs))
            se = math.sqrt(max(p * (1 - p), 1e-6) / (n_img or 10_000))
            out[:, i] = p + rng.normal(0.0, se, draws)
        out[:, i] += rng.normal(0.0, s / math.sqrt(len(accs)), draws)
    return out


def _image_bootstrap(bitmaps: Sequence[str], n_img: int, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each bitmap's accuracy deviation in ``draws`` bootstrap resamples of the validation images, one resample
    shared by all (paired): ``{bitmap: (draws,) resampled accuracy - accuracy}``.

    The images are resampled with replacement (multinomial counts over the images), but images that every bitmap
    got alike (the same right/wrong pattern) are interchangeable, so the counts are drawn per *pattern*: a
    multinomial over the G distinct patterns with their image counts as weights is exactly the per-image one summed
    by pattern, at G binomials a resample instead of ``n_img`` (a few hundred patterns against 10,000 images: `nas
    status` spent 1.8 s here)."""
    uniq = list(dict.fromkeys(bitmaps))
    if not uniq:
        return {}
    m = np.stack([bitmap.unpack(b).astype(bool) for b in uniq], axis=1)  # (n_img, bitmaps)
    packed = np.ascontiguousarray(np.packbits(m, axis=1))  # each image's pattern as bytes: one sortable key
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    patterns = m[first]  # (G, bitmaps), with ``counts`` images each
    w = rng.multinomial(n_img, counts / n_img, size=draws) / n_img  # (draws, G)
    dev = w @ patterns - (counts @ patterns) / n_img  # (draws, bitmaps)
    return {b: dev[:, j] for j, b in enumerate(uniq)}


def study_front_probability(
    study: Any, archs: Sequence[TrialRecord], objectives: Sequence[Objective]
) -> dict[int, float]:
    """P(front) of a study's merged architectures (``nas status``, ``nas pareto``, export), with the study's
    ``replicates.prior_seed_sd`` (else :data:`PRIOR_SEED_SD`); empty without an accuracy objective."""
    if not archs or "accuracy" not in [o.name for o in objectives]:
        return {}
    return front_probability(archs, objectives, StudyRecord.of(study).prior_seed_sd)


def rung_extrapolation(
    pairs: Sequence[tuple[float, float]], min_pairs: int = 8
) -> Callable[[float], tuple[float, float]] | None:
    """What a pruned architecture's final accuracy would be, from its accuracy at the rung it was pruned at.

    ``pairs``: (accuracy at the rung, final accuracy) of the architectures trained to full fidelity (one seed each).
    The least-squares line ``final = a + b·x`` and its prediction SD for a new architecture,
    ``σ·sqrt(1 + 1/n + (x − x̄)²/Sxx)`` with ``σ`` the residual SD (n − 2 degrees of freedom): the textbook
    prediction interval of simple linear regression. The residual holds the rung's ranking error and the seed noise
    of the final accuracy together — an early rung ranks the mean over seeds poorly (RESULTS.md) — so a pruned
    architecture close to the front keeps a fair chance. Returns ``x -> (prediction, SD)``, or None with fewer
    than ``min_pairs`` pairs or no spread in ``x``."""
    if len(pairs) < max(3, min_pairs):
        return None
    x, y = np.array(pairs, dtype=float).T
    sxx = float(((x - x.mean()) ** 2).sum())
    if sxx <= 1e-12:  # no spread in x (accuracies differ by at least one image: far more than this)
        return None
    b = float(((x - x.mean()) * (y - y.mean())).sum()) / sxx
    a = float(y.mean()) - b * float(x.mean())
    sigma = math.sqrt(float(((y - a - b * x) ** 2).sum()) / (len(x) - 2))
    n, xbar = len(x), float(x.mean())
    return lambda v: (a + b * v, sigma * math.sqrt(1 + 1 / n + (v - xbar) ** 2 / sxx))


def settled(p: float, threshold: float) -> bool:
    """Whether a P(front) is settled: at least ``threshold`` (a member) or at most ``1 - threshold`` (not one)."""
    return p >= threshold or p <= 1 - threshold
