"""The uncertainty of one evaluation (nas.evaluation, trainers.bitmap), checked against scipy's references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from nas.evaluation import accuracy_interval, bitmap_interval, compare, mcnemar_exact, precision_note
from trainers import bitmap


@pytest.mark.parametrize("n", [1, 7, 8, 9, 3000, 10_001])
def test_bitmap_round_trip_at_any_length(n: int) -> None:
    bits = np.random.default_rng(n).random(n) < 0.83
    text = bitmap.pack(bits)
    assert text.startswith(f"{n}:")
    assert (bitmap.unpack(text) == bits).all()
    assert bitmap.count(text) == (int(bits.sum()), n)
    assert (bitmap.unpack(bitmap.pack(torch.from_numpy(bits))) == bits).all()  # a tensor packs the same


def test_3000_examples_take_a_few_hundred_characters() -> None:
    assert len(bitmap.pack(np.ones(3000, bool))) <= 510


@pytest.mark.parametrize("bad", ["", "abc", "12", "x:AAAA", "100:AA==", "8:not base64!"])
def test_a_bad_bitmap_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        bitmap.unpack(bad)


def test_fingerprint_names_the_exact_validation_set() -> None:
    x = torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (50,))
    fp = bitmap.fingerprint(x, y)
    assert fp == bitmap.fingerprint(x.clone(), y.clone()) and len(fp) == bitmap.FINGERPRINT_CHARS
    y2 = y.clone()
    y2[3] = (y2[3] + 1) % 10
    x2 = x.clone()
    x2[0, 0, 0, 0] ^= 1
    assert len({fp, bitmap.fingerprint(x, y2), bitmap.fingerprint(x2, y), bitmap.fingerprint(x[1:], y[1:])}) == 4


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (1, 1), (2640, 3000), (2995, 3000), (37, 120)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = accuracy_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_wilson_at_3000_images_is_about_1_2_points_each_side_near_088() -> None:
    lo, hi = accuracy_interval(2640, 3000)  # the lab's validation set at a typical accuracy
    assert 0.011 < (hi - lo) / 2 < 0.013


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_impossible_counts_are_refused(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        accuracy_interval(k, n)


def test_bitmap_interval_reads_the_stored_text() -> None:
    bits = np.zeros(200, bool)
    bits[:150] = True
    acc, lo, hi = bitmap_interval(bitmap.pack(bits))
    assert acc == 0.75 and (lo, hi) == pytest.approx(accuracy_interval(150, 200))


def _pair(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """A hand-made pair of correctness vectors with the given contingency counts, shuffled."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    perm = np.random.default_rng(0).permutation(a.size)
    return a[perm], b[perm]


@pytest.mark.parametrize(("only_a", "only_b"), [(12, 3), (3, 12), (40, 25), (0, 6), (5, 5), (0, 0), (200, 150)])
def test_mcnemar_exact_matches_scipy_binomtest(only_a: int, only_b: int) -> None:
    a, b = _pair(500, only_a, only_b, 60)
    ref = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(ref, rel=1e-9)
    assert mcnemar_exact(b, a) == pytest.approx(ref, rel=1e-9)  # symmetric


def test_paired_bootstrap_matches_scipy_bootstrap() -> None:
    a, b = _pair(2400, 160, 110, 330)  # 3,000 images, A ahead by 50 of them (1.67 points)
    got = compare(bitmap.pack(a), bitmap.pack(b), resamples=4000, seed=1)
    ref = stats.bootstrap(
        (a.astype(float), b.astype(float)), lambda x, y: np.mean(x) - np.mean(y), paired=True, vectorized=False,
        n_resamples=4000, method="percentile", random_state=2,
    ).confidence_interval  # fmt: skip
    assert got.diff == pytest.approx(50 / 3000)
    assert (got.only_a, got.only_b, got.n) == (160, 110, 3000)
    assert got.lo == pytest.approx(ref.low, abs=0.0015) and got.hi == pytest.approx(ref.high, abs=0.0015)
    # the paired interval is far narrower than two independent binomial intervals would make it
    unpaired = 1.96 * np.sqrt(a.mean() * (1 - a.mean()) / 3000 + b.mean() * (1 - b.mean()) / 3000)
    assert got.hi - got.lo < 0.75 * 2 * unpaired
    assert got.settled and got.p_value == pytest.approx(stats.binomtest(160, 270).pvalue)
    assert "+1.67 pt" in got.describe()


def test_a_difference_inside_the_noise_is_not_settled() -> None:
    a, b = _pair(2400, 60, 55, 485)
    c = compare(a, b)
    assert c.lo < 0 < c.hi and not c.settled and c.p_value > 0.5
    assert compare(a, b) == c  # seeded: the same inputs give the same interval


def test_compare_refuses_bitmaps_of_different_images() -> None:
    with pytest.raises(ValueError, match="same examples"):
        compare(np.ones(10, bool), np.ones(11, bool))
    with pytest.raises(ValueError, match="level"):
        compare(np.ones(10, bool), np.ones(10, bool), level=1.0)


def test_a_handful_of_discordant_images_does_not_settle_a_difference() -> None:
    """Five images right for A only, none for B only: the percentile bootstrap's interval excludes 0, but exact
    McNemar gives p = 2/32 — not settled at 95 %."""
    a, b = _pair(900, 5, 0, 95)
    c = compare(a, b)
    assert c.lo > 0 and c.p_value == pytest.approx(2 / 32) and not c.settled


def test_precision_note_warns_below_ten_thousand_images() -> None:
    line, coarse = precision_note(10_000)  # Fashion-MNIST's and CIFAR's official test splits
    assert not coarse and "±0.70 pt at 0.85 (±0.98 pt at worst; 95 %)" in line
    line, coarse = precision_note(3_000)  # the lab table's val_fraction 0.05
    assert coarse and "±1.28 pt at 0.85" in line and "10,000 images" in line
