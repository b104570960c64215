"""nas.stats against scipy's reference implementations, ties and degenerate inputs included."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from nas.stats import kendall_tau, spearman_rho


@pytest.mark.parametrize("seed", range(12))
def test_kendall_and_spearman_equal_scipys(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 40)
    ties = seed % 3 == 0  # every third case draws from few values: many ties on both sides
    x = [rng.randint(0, 4) if ties else rng.random() for _ in range(n)]
    y = [xi * rng.uniform(0.5, 1.5) + rng.gauss(0, 0.3) if seed % 2 else rng.randint(0, 3) for xi in x]
    ref_tau, ref_rho = sps.kendalltau(x, y)[0], sps.spearmanr(x, y)[0]
    if math.isnan(ref_tau):
        assert math.isnan(kendall_tau(x, y))
    else:
        assert kendall_tau(x, y) == pytest.approx(ref_tau, abs=1e-12)
    if math.isnan(ref_rho):
        assert math.isnan(spearman_rho(x, y))
    else:
        assert spearman_rho(x, y) == pytest.approx(ref_rho, abs=1e-12)


def test_perfect_reversed_and_degenerate() -> None:
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1], [2])) and math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="paired"):
        kendall_tau([1, 2], [1, 2, 3])
