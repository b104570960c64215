"""nas.pareto against plain brute-force references written here (O(n^2) dominance, exact grid counting)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from nas.errors import ConfigError
from nas.pareto import (
    crowding_distance,
    hypervolume,
    knee_point,
    non_dominated_sort,
    pareto_front,
    rank_for_pruning,
)


# -- independent references ----------------------------------------------------------------------------
def _to_min(p, directions):
    return [(-v if d == "maximize" else v) for v, d in zip(p, directions, strict=True)]


def _dominates(a, b):
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def brute_fronts(points, directions):
    pts = [_to_min(p, directions) for p in points]
    left = set(range(len(pts)))
    fronts = []
    while left:
        front = sorted(i for i in left if not any(_dominates(pts[j], pts[i]) for j in left if j != i))
        fronts.append(front)
        left -= set(front)
    return fronts


def grid_hypervolume(points, directions, reference):
    """Exact HV for integer points: count unit cells [c, c+1)^d inside the union of boxes [p, ref)."""
    pts = [_to_min(p, directions) for p in points]
    ref = _to_min(reference, directions)
    lo = [min([p[k] for p in pts] + [ref[k]]) for k in range(len(ref))]
    count = 0
    for cell in itertools.product(*[range(int(lo[k]), int(ref[k])) for k in range(len(ref))]):
        if any(all(p[k] <= cell[k] for k in range(len(ref))) for p in pts):
            count += 1
    return count


def brute_crowding(points, front):
    k = len(front)
    dist = {i: 0.0 for i in front}
    for j in range(len(points[0])):
        srt = sorted(front, key=lambda i: points[i][j])  # stable, like the implementation
        dist[srt[0]] = dist[srt[-1]] = math.inf
        span = points[srt[-1]][j] - points[srt[0]][j]
        if span == 0:
            continue
        for r in range(1, k - 1):
            dist[srt[r]] += (points[srt[r + 1]][j] - points[srt[r - 1]][j]) / span
    return [dist[i] for i in front]


def _random_points(rng, n, m, lo=0, hi=9):
    return [[rng.randint(lo, hi) for _ in range(m)] for _ in range(n)]


# -- non-dominated sort ---------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3, 4])
def test_non_dominated_sort_matches_brute_force(m):
    rng = random.Random(m)
    for _ in range(40):
        n = rng.randint(1, 30)
        dirs = [rng.choice(["maximize", "minimize"]) for _ in range(m)]
        pts = _random_points(rng, n, m)  # small integer range: many ties and duplicates
        fronts = non_dominated_sort(pts, dirs)
        assert fronts == brute_fronts(pts, dirs)
        assert pareto_front(pts, dirs) == fronts[0]
        assert sorted(itertools.chain(*fronts)) == list(range(n))


def test_hand_cases():
    # (accuracy max, latency min)
    pts = [[0.9, 10], [0.8, 5], [0.85, 20], [0.9, 10], [0.7, 4], [0.6, 30]]
    dirs = ["maximize", "minimize"]
    # 2 is dominated by 0 (lower acc, slower); 5 by everything; duplicates 0 and 3 share the first front
    assert non_dominated_sort(pts, dirs) == [[0, 1, 3, 4], [2], [5]]
    assert pareto_front([[1.0, 2.0]], dirs) == [0]
    assert non_dominated_sort([], dirs) == []
    # all but one dominated: a chain
    chain = [[i, i] for i in range(5)]
    assert non_dominated_sort(chain, ["minimize", "minimize"]) == [[0], [1], [2], [3], [4]]
    assert non_dominated_sort(chain, ["maximize", "maximize"]) == [[4], [3], [2], [1], [0]]
    # all identical: one front
    assert non_dominated_sort([[3, 3]] * 4, dirs) == [[0, 1, 2, 3]]


def test_bad_input_is_config_error():
    with pytest.raises(ConfigError, match="direction"):
        pareto_front([[1, 2]], ["max", "minimize"])
    with pytest.raises(ConfigError, match="2 objectives but 3 directions"):
        pareto_front([[1, 2]], ["minimize"] * 3)
    with pytest.raises(ConfigError, match="NaN"):
        pareto_front([[1, 2], [float("nan"), 1]], ["minimize"] * 2)
    with pytest.raises(ConfigError, match="reference"):
        hypervolume([[1, 2]], ["minimize"] * 2, [3])


# -- crowding distance / pruning order ------------------------------------------------------------------
def test_crowding_distance_matches_reference():
    rng = random.Random(1)
    for _ in range(30):
        n, m = rng.randint(1, 15), rng.randint(2, 3)
        pts = [[rng.uniform(0, 1) for _ in range(m)] for _ in range(n)]
        front = rng.sample(range(n), rng.randint(1, n))
        assert crowding_distance(pts, front) == pytest.approx(brute_crowding(pts, front))


def test_crowding_distance_hand_case():
    pts = [[0, 4], [1, 2], [2, 1], [4, 0]]
    cd = crowding_distance(pts, [0, 1, 2, 3])
    # interior: (2-0)/4 + (4-1)/4 = 1.25 and (4-1)/4 + (2-0)/4 = 1.25
    assert cd == [math.inf, 1.25, 1.25, math.inf]
    assert crowding_distance(pts, [1, 2]) == [math.inf, math.inf]
    assert crowding_distance(pts, []) == []


def test_rank_for_pruning_is_front_then_crowding():
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(1, 25)
        dirs = ["maximize", "minimize"]
        pts = [[rng.uniform(0, 1), rng.uniform(0, 1)] for _ in range(n)]
        order = rank_for_pruning(pts, dirs)
        assert sorted(order) == list(range(n))
        fronts = brute_fronts(pts, dirs)
        front_of = {i: f for f, fr in enumerate(fronts) for i in fr}
        pos = 0
        for fr in fronts:  # each front occupies a contiguous block, in front order
            block = order[pos : pos + len(fr)]
            assert sorted(block) == fr
            cd = dict(zip(fr, brute_crowding(pts, fr), strict=True))
            assert all(cd[a] >= cd[b] for a, b in itertools.pairwise(block))
            pos += len(fr)
        assert [front_of[i] for i in order] == sorted(front_of[i] for i in order)


def test_rank_for_pruning_hand_case():
    # front [0, 1, 2, 3]: extremes 0 and 3 (inf), then 2 (gap larger) before 1; then point 4 (dominated)
    pts = [[0.0, 1.0], [0.1, 0.8], [0.5, 0.3], [1.0, 0.0], [0.9, 0.9]]
    assert rank_for_pruning(pts, ["minimize", "minimize"]) == [0, 3, 2, 1, 4]


# -- hypervolume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_hypervolume_exact_against_grid_count(m):
    rng = random.Random(10 + m)
    size = {1: 12, 2: 10, 3: 7, 4: 5}[m]
    for _ in range(25):
        n = rng.randint(1, 12)
        dirs = [rng.choice(["maximize", "minimize"]) for _ in range(m)]
        raw = _random_points(rng, n, m, 0, size)  # some points sit on or beyond the reference
        ref = [(0 if d == "maximize" else size) for d in dirs]
        pts = [[(v if d == "minimize" else size - v) for v, d in zip(p, dirs, strict=True)] for p in raw]
        # maximize columns are mirrored so that reference 0 bounds them from below
        expected = grid_hypervolume(pts, dirs, ref)
        assert hypervolume(pts, dirs, ref) == pytest.approx(expected, abs=1e-9)


def test_hypervolume_hand_cases():
    mm = ["minimize", "minimize"]
    assert hypervolume([[1, 3], [2, 1]], mm, [4, 4]) == pytest.approx(7.0)
    assert hypervolume([[1, 1]], mm, [3, 2]) == pytest.approx(2.0)
    assert hypervolume([[5, 5]], mm, [4, 4]) == 0.0  # worse than the reference
    assert hypervolume([[4, 1]], mm, [4, 4]) == 0.0  # on the reference boundary: zero width
    assert hypervolume([], mm, [4, 4]) == 0.0
    # accuracy (max) vs latency (min): box from (acc 0.5, lat 10) to (acc 0.9, lat 2) = 0.4 * 8
    assert hypervolume([[0.9, 2.0]], ["maximize", "minimize"], [0.5, 10.0]) == pytest.approx(3.2)
    # 3-D unit-ish cubes: two boxes [0,2]^3 and [1,3]x[1,3]x[0,1] under ref 3 -> 8 + 4 - overlap(1*1*1) = 11
    assert hypervolume([[0, 0, 1], [1, 1, 0]], ["minimize"] * 3, [3, 3, 3]) == pytest.approx(
        grid_hypervolume([[0, 0, 1], [1, 1, 0]], ["minimize"] * 3, [3, 3, 3])
    )
    # duplicates and dominated points change nothing
    base = hypervolume([[1, 3], [2, 1]], mm, [4, 4])
    assert hypervolume([[1, 3], [2, 1], [2, 1], [3, 3]], mm, [4, 4]) == pytest.approx(base)


def test_hypervolume_float_points_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(15, 3))
    ref = np.ones(3)
    samples = rng.uniform(0, 1, size=(200_000, 3))
    covered = (pts[None, :, :] <= samples[:, None, :]).all(axis=2).any(axis=1).mean()
    assert hypervolume(pts, ["minimize"] * 3, ref) == pytest.approx(covered, abs=0.01)


# -- knee point -----------------------------------------------------------------------------------------
def test_knee_point_2d_hand_case():
    # an L-shaped front: (0.2, 0.2) is the obvious knee; 5 is dominated and must be ignored
    pts = [[0.0, 1.0], [0.05, 0.6], [0.2, 0.2], [0.6, 0.05], [1.0, 0.0], [0.3, 0.3]]
    assert knee_point(pts, ["minimize", "minimize"]) == 2
    # the same with accuracy maximised (mirrored column) and the points shuffled
    flipped = [[1 - a, b] for a, b in pts]
    assert knee_point(flipped, ["maximize", "minimize"]) == 2
    perm = [4, 0, 5, 2, 1, 3]
    assert knee_point([pts[i] for i in perm], ["minimize", "minimize"]) == perm.index(2)


def test_knee_point_2d_is_max_distance_to_extreme_line():
    rng = random.Random(3)
    for _ in range(20):
        # convex front y = (1 - x)^2 scaled: knee must be the point farthest below the chord
        xs = sorted(rng.uniform(0, 1) for _ in range(8))
        pts = [[x * 10, (1 - x) ** 2] for x in xs]
        front = pareto_front(pts, ["minimize", "minimize"])
        f = [pts[i] for i in front]
        lo = [min(p[k] for p in f) for k in range(2)]
        hi = [max(p[k] for p in f) for k in range(2)]
        norm = [[(p[k] - lo[k]) / (hi[k] - lo[k]) for k in range(2)] for p in f]
        # chord from (0, 1) to (1, 0): distance below it is (1 - x - y) / sqrt(2)
        dist = [(1 - x - y) / math.sqrt(2) for x, y in norm]
        assert knee_point(pts, ["minimize", "minimize"]) == front[dist.index(max(dist))]


def test_knee_point_fallbacks():
    mm = ["minimize", "minimize"]
    assert knee_point([[3.0, 4.0]], mm) == 0  # single point
    assert knee_point([[0, 1], [1, 0]], mm) == 0  # two extremes: equally close to ideal, lowest index
    # concave front (bulging away from the ideal): nothing beyond the chord, so closest to ideal wins
    concave = [[0, 1], [0.8, 0.9], [1, 0]]
    assert knee_point(concave, mm) == 0
    # 3-D: closest to the normalised ideal point
    pts3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0], [0.3, 0.3, 0.3], [0.5, 0.5, 0.6]]
    assert knee_point(pts3, ["minimize"] * 3) == 3
    with pytest.raises(ConfigError):
        knee_point([], mm)


def test_normalized_hypervolume_against_a_hand_made_front() -> None:
    from nas.pareto import normalized_hypervolume

    # accuracy in [0.5, 0.9] (max), throughput in [1000, 5000] (max): scaled points (0.75, 0.25), (0.25, 0.75),
    # (0.5, 0.5); the union of their boxes is 0.1875 + 0.125 + 0.0625 = 0.375 of the unit square
    pts = [[0.8, 2000.0], [0.6, 4000.0], [0.7, 3000.0], [0.55, 1500.0]]  # the last is dominated
    hv = normalized_hypervolume(pts, ["maximize", "maximize"], lo=[0.5, 1000.0], hi=[0.9, 5000.0])
    assert hv == pytest.approx(0.375)
    # a minimised objective flips: latency 20 ms (best) -> 1, 60 ms (worst) -> 0
    assert normalized_hypervolume([[0.9, 20.0]], ["maximize", "minimize"], [0.5, 20.0], [0.9, 60.0]) == 1.0
    assert normalized_hypervolume([[0.4, 9000.0]], ["maximize", "maximize"], [0.5, 1000.0], [0.9, 5000.0]) == 0.0
    assert normalized_hypervolume([], ["maximize"] * 2, [0, 0], [1, 1]) == 0.0
