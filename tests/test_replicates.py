"""Seed replicates on the read side (nas.replicates): the front on means, P(front) on hand-made studies with planted
noise, the pooled seed SD and the interval of a mean over seeds, against plain reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas import replicates, results
from nas.evaluation import PRIOR_DOF, pooled_seed_sd, seed_mean_interval, throughput_log_sd
from nas.layout import Objective
from nas.replicates import front_probability, merge, settled
from nas.trial_record import TrialRecord
from trainers import bitmap

OBJS = [Objective("accuracy", "maximize"), Objective("throughput", "maximize")]
N_IMG = 2000


def _bits(acc: float, rng: np.random.Generator, base: np.ndarray | None = None, flip: float = 0.0) -> str:
    """A correctness bitmap of accuracy ``acc``; with ``base``, the same images right except a ``flip`` share
    redrawn (two models that mostly agree, as real ones do)."""
    if base is None:
        bits = rng.random(N_IMG) < acc
    else:
        bits = base.copy()
        redo = rng.random(N_IMG) < flip
        bits[redo] = rng.random(int(redo.sum())) < acc
    return bitmap.pack(bits)


def _swapped(base: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Another model of exactly the same accuracy: ``m`` images it gets right that ``base`` does not, and ``m`` the
    other way round."""
    out = base.copy()
    out[rng.choice(np.flatnonzero(base), m, replace=False)] = False
    out[rng.choice(np.flatnonzero(~base), m, replace=False)] = True
    return out


def _rec(number: int, arch: str, acc: float, tp: float, **kw) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", values={"accuracy": acc, "throughput": tp}, arch_id=arch,
                       full_fidelity=True, **kw)  # fmt: skip


def test_the_front_is_computed_on_the_mean_over_seeds() -> None:
    """Architecture b's first seed beats a; its two replicates say it is worse: on the means, a is on the front
    and b is not. A second same-seed trial of a (two drivers at once) and a reused copy add no seed."""
    recs = [
        _rec(0, "a", 0.850, 1000.0),
        _rec(1, "b", 0.856, 1000.0),
        _rec(2, "b", 0.836, 1000.0, replicate=1, replicate_of=1),
        _rec(3, "b", 0.842, 1000.0, replicate=2, replicate_of=1),
        _rec(4, "a", 0.990, 1000.0),  # the same seed of a trained twice: not a second seed
        _rec(5, "b", 0.856, 1000.0, reused_from=1),  # a copy
        _rec(6, "c", 0.800, 3000.0),
    ]
    merged = {r.arch_id: r for r in results.eligible(recs, OBJS)}
    assert set(merged) == {"a", "b", "c"}
    assert merged["b"].number == 1 and merged["b"].seed_trials == [1, 2, 3] and merged["b"].seeds == 3
    assert merged["b"].values["accuracy"] == pytest.approx((0.856 + 0.836 + 0.842) / 3)
    assert merged["a"].seeds == 1 and merged["a"].values["accuracy"] == 0.850
    assert [r.arch_id for r in results.front(recs, OBJS)] == ["a", "c"]
    single = [r for r in recs if r.replicate is None]  # what one seed alone would say
    assert next(r.arch_id for r in results.front(single, OBJS)) in ("a", "b")


def test_merge_keeps_one_record_per_seed_index() -> None:
    recs = [_rec(0, "x", 0.8, 1.0), _rec(1, "x", 0.82, 1.0, replicate=1), _rec(2, "x", 0.7, 1.0, replicate=1)]
    (m,) = merge(recs)
    assert m.seed_trials == [0, 1] and m.values["accuracy"] == pytest.approx(0.81)


def test_pooled_seed_sd_matches_the_formula() -> None:
    groups = [[0.80, 0.81, 0.83], [0.70, 0.72], [0.9]]
    num = PRIOR_DOF * 0.005**2 + 2 * np.var(groups[0], ddof=1) + 1 * np.var(groups[1], ddof=1)
    assert pooled_seed_sd(groups, 0.005) == pytest.approx(math.sqrt(num / (PRIOR_DOF + 3)))
    assert pooled_seed_sd([[0.9]], 0.004) == pytest.approx(0.004)  # nothing measured: the prior


def test_p_front_of_a_clear_member_a_coin_flip_and_a_clear_loser() -> None:
    """Planted: `star` is the most accurate by 10 points (P = 1); `left` and `right` are the fastest, with the same
    throughput and exactly the same accuracy on other images, so exactly one of them is on the front in each world
    (P near 1/2 each, summing to 1); `slow` is slower than `star` and 18 points less accurate (P = 0)."""
    rng = np.random.default_rng(0)
    base = rng.random(N_IMG) < 0.85
    archs = [
        _rec(0, "star", 0.95, 1000.0, val_correct=_bits(0.95, rng)),
        _rec(1, "left", 0.85, 5000.0, val_correct=bitmap.pack(base)),
        _rec(2, "right", 0.85, 5000.0, val_correct=bitmap.pack(_swapped(base, 60, rng))),
        _rec(3, "slow", 0.77, 900.0, val_correct=_bits(0.77, rng)),
    ]
    archs = [dataclass_with_acc(r) for r in archs]
    p = front_probability(merge(archs), OBJS, prior_seed_sd=0.005, draws=2000, seed=1)
    assert p[0] == 1.0 and p[3] == 0.0
    assert 0.3 < p[1] < 0.7 and 0.3 < p[2] < 0.7 and p[1] + p[2] == pytest.approx(1.0, abs=0.01)
    assert settled(p[0], 0.9) and settled(p[3], 0.9) and not settled(p[1], 0.9)
    assert front_probability(merge(archs), OBJS, 0.005, draws=2000, seed=1) == p  # seeded


def dataclass_with_acc(r: TrialRecord) -> TrialRecord:
    """The record's accuracy is its bitmap's (the planted data is consistent)."""
    import dataclasses

    right, n = bitmap.count(r.val_correct)
    return dataclasses.replace(r, values={**r.values, "accuracy": right / n})


def test_more_seeds_settle_a_close_call() -> None:
    """Two architectures 0.6 points apart at the same throughput, seed SD 0.5 points: with one seed each the
    better one's P(front) is far from settled; with six seeds each (the same means) it is much closer to 1."""
    rng = np.random.default_rng(3)
    base = rng.random(N_IMG) < 0.86

    def arch(number: int, name: str, accs: list[float]) -> TrialRecord:
        bits = [_bits(0.86, rng, base, flip=0.05) for _ in accs]
        seeds = [
            _rec(number * 10 + k, name, a, 1000.0, val_correct=b, replicate=k or None)
            for k, (a, b) in enumerate(zip(accs, bits, strict=True))
        ]
        return merge(seeds)[0]

    one = [arch(1, "hi", [0.866]), arch(2, "lo", [0.860])]
    six = [arch(1, "hi", [0.866 + d for d in (-0.006, 0.004, 0.0, 0.006, -0.004, 0.0)]),
           arch(2, "lo", [0.860 + d for d in (0.005, -0.005, 0.0, 0.003, -0.003, 0.0)])]  # fmt: skip
    p1 = front_probability(one, OBJS, 0.005, draws=2000)[10]
    p6 = front_probability(six, OBJS, 0.005, draws=2000)[10]
    assert p1 < 0.9 and p6 > p1 + 0.1


def test_mean_interval_combines_the_images_and_the_seeds() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(N_IMG) < 0.8
    bits = [_bits(0.8, rng, base, flip=0.1) for _ in range(3)]
    accs = [bitmap.count(b)[0] / N_IMG for b in bits]
    seeds = zip(accs, bits, strict=True)
    (m,) = merge([_rec(k, "z", a, 1.0, val_correct=b, replicate=k or None) for k, (a, b) in enumerate(seeds)])
    lo, hi = seed_mean_interval(m.seed_values, m.seed_bits, prior_seed_sd=0.005)
    assert m.accuracy_interval == pytest.approx((lo, hi))  # the record says the same
    per_image = np.mean([bitmap.unpack(b) for b in bits], axis=0)
    var = pooled_seed_sd([accs], 0.005) ** 2 / 3 + np.var(per_image, ddof=1) / N_IMG
    assert (lo + hi) / 2 == pytest.approx(np.mean(accs)) and (hi - lo) / 2 == pytest.approx(
        1.959963984540054 * var**0.5
    )
    assert m.accuracy_interval == pytest.approx((lo, hi))  # what status, pareto and the dashboard show


def test_membership_equals_brute_force_dominance_on_every_draw() -> None:
    """front_membership leaves out architectures dominated in every draw before comparing; on 60 random
    architectures (most far off the front) its answer equals plain pairwise dominance on the same draws."""
    from nas import replicates

    rng = np.random.default_rng(11)
    points = zip(rng.uniform(0.6, 0.9, 60), rng.uniform(1e3, 9e3, 60), strict=True)
    archs = merge(
        [_rec(i, f"x{i}", float(a), float(t), val_correct=_bits(float(a), rng)) for i, (a, t) in enumerate(points)]
    )
    archs = [dataclass_with_acc(r) for r in archs]
    got = replicates.front_membership(archs, OBJS, 0.005, draws=300, seed=4)
    acc = replicates._accuracy_draws(archs, 0.005, 300, np.random.default_rng(4))
    tp = np.array([r.values["throughput"] for r in archs])
    for d in range(300):
        pts = np.stack([acc[d], tp], axis=1)
        dominated = [((pts >= p).all(1) & (pts > p).any(1)).any() for p in pts]
        assert (got[d] == ~np.array(dominated)).all()
    assert got.any(0).sum() < 30  # the shortcut had something to leave out


def test_rung_extrapolation_is_the_regression_prediction_interval() -> None:
    """The prediction and its SD against the matrix form of least squares, ``s²·(1 + x0ᵀ(XᵀX)⁻¹x0)`` with
    ``s² = RSS/(n − 2)``, and the slope against scipy; too few pairs or no spread in x give None."""
    from scipy import stats

    rng = np.random.default_rng(7)
    x = rng.uniform(0.60, 0.70, 30)
    y = 0.30 + 0.70 * x + rng.normal(0.0, 0.004, 30)
    fit = replicates.rung_extrapolation(list(zip(x, y, strict=True)))
    X = np.c_[np.ones_like(x), x]
    beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    s2 = float(rss[0]) / (len(x) - 2)
    for x0 in (0.58, 0.65, 0.72):
        v = np.array([1.0, x0])
        mean, sd = fit(x0)
        assert mean == pytest.approx(float(v @ beta), abs=1e-12)
        assert sd == pytest.approx(math.sqrt(s2 * (1 + v @ np.linalg.inv(X.T @ X) @ v)), rel=1e-9)
    assert fit(0.65)[0] - fit(0.60)[0] == pytest.approx(stats.linregress(x, y).slope * 0.05)
    assert fit(0.72)[1] > fit(0.65)[1]  # further from the data: less sure
    assert replicates.rung_extrapolation(list(zip(x[:5], y[:5], strict=True))) is None  # fewer than 8 pairs
    assert replicates.rung_extrapolation([(0.6, float(v)) for v in y]) is None  # every x the same


def test_a_predicted_accuracy_races_with_its_prediction_sd() -> None:
    """A pruned architecture enters P(front) with its predicted accuracy and that prediction's SD instead of image
    and seed noise: predicted level with the only other architecture of its throughput and very unsure, it is a
    coin flip against it; predicted 10 points below with a tight SD, it is never on the front. The measured
    architectures' P(front) is what it is without the predicted one where that one cannot matter."""
    rng = np.random.default_rng(2)
    measured = [dataclass_with_acc(_rec(0, "fast", 0.80, 5000.0, val_correct=_bits(0.80, rng))),
                dataclass_with_acc(_rec(1, "slow", 0.86, 1000.0, val_correct=_bits(0.86, rng)))]  # fmt: skip
    level = _pruned(_rec(2, "pruned", measured[1].values["accuracy"], 1000.0))
    p = front_probability([*measured, level], OBJS, 0.005, draws=4000, seed=3, predicted_sd=[None, None, 0.05])
    assert p[0] == 1.0 and 0.4 < p[2] < 0.6 and p[1] + p[2] == pytest.approx(1.0, abs=0.02)
    low = _pruned(_rec(2, "pruned", 0.76, 1000.0))
    q = front_probability([*measured, low], OBJS, 0.005, draws=4000, seed=3, predicted_sd=[None, None, 0.002])
    assert q[2] == 0.0 and q[1] == front_probability(measured, OBJS, 0.005, draws=4000, seed=3)[1] > 0.999


def _pruned(r: TrialRecord) -> TrialRecord:
    import dataclasses

    return dataclasses.replace(r, state="PRUNED", full_fidelity=False)


def _tp(median: float, spread: float) -> dict:
    """A measurement of ``median`` images/s whose 5 repeats spread log-normally by ``spread`` (an SD of logs)."""
    z = np.array([-1.2649, -0.6325, 0.0, 0.6325, 1.2649])  # SD 1 with ddof=1, median 0
    return {"median": median, "values": list(median * np.exp(spread * z))}


def test_throughput_noise_a_clear_case_stays_clear_and_a_coin_flip_becomes_one() -> None:
    """Issue 30: P(front) resamples throughput within its measurement's spread. A clear front (2x apart, 1 %
    spread) and a clearly dominated point keep P 1 and 0; b, 10 points less accurate than a and 0.1 % faster, is on
    the front only because of that 0.1 %: exactly so when throughput is exact, a coin flip when one measurement
    spreads by 20 % (a loaded device)."""
    assert throughput_log_sd(_tp(1000.0, 0.2)) == pytest.approx(0.2, rel=1e-3)
    assert throughput_log_sd({"median": 1000.0, "cv": 0.05}) == 0.05  # a tabulated one
    assert throughput_log_sd({"median": 1000.0}) == 0.0
    clear = [_rec(0, "a", 0.90, 1000.0, throughput=_tp(1000.0, 0.01)),
             _rec(1, "c", 0.80, 2000.0, throughput=_tp(2000.0, 0.01)),
             _rec(2, "d", 0.70, 900.0, throughput=_tp(900.0, 0.01))]  # fmt: skip
    assert front_probability(clear, OBJS, 0.005) == {0: 1.0, 1: 1.0, 2: 0.0}
    exact = [_rec(0, "a", 0.90, 1000.0), _rec(1, "b", 0.80, 1001.0)]
    assert front_probability(exact, OBJS, 0.005) == {0: 1.0, 1: 1.0}
    loaded = [_rec(0, "a", 0.90, 1000.0, throughput=_tp(1000.0, 0.2)),
              _rec(1, "b", 0.80, 1001.0, throughput=_tp(1001.0, 0.2))]  # fmt: skip
    p = front_probability(loaded, OBJS, 0.005, draws=4000)
    assert p[0] == 1.0 and 0.45 < p[1] < 0.55  # a coin flip: Φ(0.1 % / (20 % · √2)) ≈ 0.50


def test_the_image_bootstrap_by_pattern_has_the_per_image_bootstraps_moments() -> None:
    """Resampling the images by right/wrong pattern is the per-image multinomial bootstrap summed by pattern: each
    accuracy's resampled deviation has mean 0 and variance p(1-p)/n, and two bitmaps covary by
    (mean(v1 v2) - p1 p2)/n — the pairing that makes P(front) compare architectures on the same images."""
    rng = np.random.default_rng(5)
    n = 2000
    v1 = rng.random(n) < 0.8
    v2 = np.where(rng.random(n) < 0.7, v1, rng.random(n) < 0.8)  # correlated with v1
    b1, b2 = bitmap.pack(v1), bitmap.pack(v2)
    dev = replicates._image_bootstrap([b1, b2, b1], n, 20000, np.random.default_rng(0))
    assert set(dev) == {b1, b2}
    for v, b in ((v1, b1), (v2, b2)):
        p = v.mean()
        assert abs(dev[b].mean()) < 4 * math.sqrt(p * (1 - p) / n / 20000)
        assert dev[b].var() == pytest.approx(p * (1 - p) / n, rel=0.05)
    cov = ((v1 & v2).mean() - v1.mean() * v2.mean()) / n
    assert np.cov(dev[b1], dev[b2])[0, 1] == pytest.approx(cov, rel=0.08)
