"""Pareto-front arithmetic over objective vectors: pure functions, numpy only (no Optuna needed).

* :func:`non_dominated_sort` and :func:`crowding_distance` are NSGA-II's (Deb, Pratap, Agarwal & Meyarivan,
  "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEC 2002).
* :func:`rank_for_pruning` is the order MO-ASHA keeps at a rung (Schmucker et al., "Multi-objective
  Asynchronous Successive Halving", 2021; Syne Tune's MOASHA): front by front, and within a front by crowding
  distance, largest first.
* :func:`hypervolume` is exact: a sweep in 2-D and "hypervolume by slicing objectives" (HSO; While, Hingston,
  Barone & Huband, IEEE TEC 2006) above, which recurses down to the 2-D sweep — fine for the tens to
  hundreds of trials a study's front holds.
* :func:`knee_point`: 2-D — the front point farthest from the straight line joining the front's two extremes,
  on the ideal point's side, after min-max normalisation (Das, "On characterizing the 'knee' of the Pareto
  curve", 1999; the Kneedle idea). More objectives, or a front with no point on the ideal side of that
  line — the front point closest (Euclidean, normalised) to the ideal point.

Points are rows (one per trial), columns are objectives, ``directions`` holds "maximize"/"minimize" per
column. Indices returned always refer to the rows of ``points``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas.errors import ConfigError

DIRECTIONS = ("maximize", "minimize")
ArrayLike = Sequence[Sequence[float]] | np.ndarray


def _as_min(points: ArrayLike, directions: Sequence[str]) -> np.ndarray:
    """Points as a float (n, m) array in which every objective is minimised."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1 and pts.size == 0:
        pts = pts.reshape(0, len(directions))
    if pts.ndim != 2:
        raise ConfigError(f"pareto: points must be a 2-D (n_points, n_objectives) array, got shape {pts.shape}")
    if pts.shape[1] != len(directions):
        raise ConfigError(
            f"pareto: points have {pts.shape[1]} objectives but {len(directions)} directions were given; "
            "pass one direction per objective"
        )
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ConfigError(f"pareto: direction {bad[0]!r} is unknown; use 'maximize' or 'minimize'")
    if np.isnan(pts).any():
        row = int(np.argwhere(np.isnan(pts))[0, 0])
        raise ConfigError(f"pareto: row {row} has a NaN objective; drop failed trials before ranking")
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return pts * sign


def _dominance(pts: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when row i dominates row j (all <=, one <; minimisation)."""
    le = (pts[:, None, :] <= pts[None, :, :]).all(axis=2)
    lt = (pts[:, None, :] < pts[None, :, :]).any(axis=2)
    return le & lt


def non_dominated_sort(points: ArrayLike, directions: Sequence[str]) -> list[list[int]]:
    """Fronts of non-dominated rows, best first; each front's indices ascending. Equal rows share a front."""
    pts = _as_min(points, directions)
    n = len(pts)
    if n == 0:
        return []
    dom = _dominance(pts)
    dominated_by = dom.sum(axis=0)  # how many rows dominate each row
    remaining = np.ones(n, dtype=bool)
    fronts: list[list[int]] = []
    while remaining.any():
        front = np.flatnonzero(remaining & (dominated_by == 0))
        fronts.append([int(i) for i in front])
        remaining[front] = False
        dominated_by = dominated_by - dom[front].sum(axis=0)
    return fronts


def pareto_front(points: ArrayLike, directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated rows."""
    fronts = non_dominated_sort(points, directions)
    return fronts[0] if fronts else []


def crowding_distance(points: ArrayLike, front: Sequence[int]) -> list[float]:
    """NSGA-II crowding distance of each member of ``front`` (same order as ``front``).

    Per objective the members are sorted (stable, so ties keep ``front`` order); the first and last get
    ``inf``, the others the gap between their neighbours divided by the objective's range on the front. An
    objective with zero range adds nothing. Direction does not matter (distances are symmetric).
    """
    pts = np.asarray(points, dtype=float)
    idx = list(front)
    k = len(idx)
    if k == 0:
        return []
    if k <= 2:
        return [float("inf")] * k
    sub = pts[idx]
    dist = np.zeros(k)
    for j in range(sub.shape[1]):
        order = np.argsort(sub[:, j], kind="stable")
        col = sub[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return [float(d) for d in dist]


def rank_for_pruning(points: ArrayLike, directions: Sequence[str]) -> list[int]:
    """All row indices best first: front by front, within a front by crowding distance descending.

    Ties (equal crowding distance) keep ascending index order, so the ranking is deterministic.
    """
    order: list[int] = []
    pts = np.asarray(points, dtype=float)
    for front in non_dominated_sort(points, directions):
        cd = crowding_distance(pts, front)
        order.extend(i for _, i in sorted(zip(cd, front, strict=True), key=lambda t: (-t[0], t[1])))
    return order


def _hv2d(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume of points that all strictly dominate ``ref`` (minimisation)."""
    order = np.lexsort((pts[:, 1], pts[:, 0]))  # by x, then y
    volume, best_y = 0.0, ref[1]
    xs, ys = pts[order, 0], pts[order, 1]
    for i in range(len(xs)):
        if ys[i] < best_y:
            # Area of the new strip: from this x to the reference, between the new and the previous best y.
            volume += (ref[0] - xs[i]) * (best_y - ys[i])
            best_y = ys[i]
    return float(volume)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    m = pts.shape[1]
    if len(pts) == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return _hv2d(pts, ref)
    # HSO: slice along the last objective; between consecutive values the cross-section is the (m-1)-D
    # hypervolume of the points already passed.
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    zs = np.append(pts[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(pts)):
        depth = zs[i + 1] - zs[i]
        if depth > 0:
            proj = pts[: i + 1, :-1]
            if proj.shape[1] > 2:  # dominated projections add nothing; pruning them keeps recursion small
                proj = proj[~_dominance(proj).any(axis=0)]
            volume += depth * _hv(proj, ref[:-1])
    return float(volume)


def hypervolume(points: ArrayLike, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference`` (in the objectives' own units).

    Points that do not strictly beat the reference in every objective contribute nothing.
    """
    pts = _as_min(points, directions)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (len(directions),):
        raise ConfigError(
            f"pareto: reference point has {ref.size} values for {len(directions)} objectives; "
            "give one reference value per objective"
        )
    if not np.isfinite(ref).all() or not np.isfinite(pts).all():
        raise ConfigError("pareto: hypervolume needs finite points and reference; drop infinite objectives")
    ref = ref * np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    inside = pts[(pts < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    inside = np.unique(inside, axis=0)
    inside = inside[~_dominance(inside).any(axis=0)]
    return _hv(inside, ref)


def knee_point(points: ArrayLike, directions: Sequence[str]) -> int:
    """Index of the front's knee (see the module docstring for the rule); ties go to the lowest index."""
    pts = _as_min(points, directions)
    front = pareto_front(points, directions)
    if not front:
        raise ConfigError("pareto: knee_point needs at least one point")
    fp = pts[front]
    lo, hi = fp.min(axis=0), fp.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (fp - lo) / span  # ideal point is the origin
    if fp.shape[1] == 2 and len(front) >= 3:
        a = norm[np.lexsort((norm[:, 1], norm[:, 0]))[0]]  # best in objective 0
        b = norm[np.lexsort((norm[:, 0], norm[:, 1]))[0]]  # best in objective 1
        ab = b - a
        length = float(np.hypot(*ab))
        if length > 0:
            # Signed distance to the line a-b, positive on the side of the ideal point (the origin).
            cross = ab[0] * (norm[:, 1] - a[1]) - ab[1] * (norm[:, 0] - a[0])
            ideal_side = np.sign(ab[0] * (0 - a[1]) - ab[1] * (0 - a[0]))
            signed = cross * ideal_side / length
            best = int(np.argmax(signed))
            if signed[best] > 1e-12:
                return front[best]
    dist = np.linalg.norm(norm, axis=1)
    return front[int(np.argmin(dist))]


def normalized_hypervolume(
    points: ArrayLike, directions: Sequence[str], lo: Sequence[float], hi: Sequence[float]
) -> float:
    """Hypervolume in the unit box: each objective scaled so that its worst bound is 0 and its best bound 1
    (``lo``/``hi`` are the objective's smallest and largest values, whatever its direction), values outside the
    bounds clipped, reference point at the origin. Scale-free, so accuracy (0-1) and throughput (thousands of
    images/s) weigh alike; the HV of a front divided by that of the true front is the share of it found."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return 0.0
    lo_a, hi_a = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    span = np.where(hi_a > lo_a, hi_a - lo_a, 1.0)
    scaled = np.clip((pts - lo_a) / span, 0.0, 1.0)
    flip = np.array([d == "minimize" for d in directions])
    scaled[:, flip] = 1.0 - scaled[:, flip]
    return hypervolume(scaled, ["maximize"] * len(directions), [0.0] * len(directions))
