"""The search lab's score (issue 17): the hypervolume, at the mean-over-seeds truth, of the front the search itself
reports from its own estimates — checked by hand on a three-architecture table."""

from __future__ import annotations

import pytest

from benchmarks import lab_runs
from nas.engine.replay import Table, TableArch
from nas.pareto import normalized_hypervolume


def _arch(name: str, finals: list[float], tp: float) -> TableArch:
    extra = [{"seed": k, "val_acc": [f], "val_loss": [0.0], "train_loss": [0.0], "seconds": [1.0]}
             for k, f in enumerate(finals[1:], 1)]  # fmt: skip
    return TableArch(name, {"x": name}, name, 1, 1, {"median": tp}, [finals[0]], [0.0], [0.0], [1.0], extra)


@pytest.fixture
def table() -> Table:
    # true points (mean over 3 seeds): a (0.80, 100), b (0.70, 200), c (0.76, 150) -> c is on the true front;
    # d (0.60, 90) is dominated and only sets the lower bounds
    archs = [_arch("a", [0.80] * 3, 100), _arch("b", [0.70] * 3, 200), _arch("c", [0.74, 0.78, 0.76], 150),
             _arch("d", [0.60] * 3, 90)]  # fmt: skip
    return Table(name="hand", space={}, space_hash="", training={}, num_classes=10, epochs=1,
                 archs={a.arch_id: a for a in archs}, source="hand")  # fmt: skip


def _hv(table: Table, ids: list[str]) -> float:
    lo, hi = lab_runs.bounds(table)
    pts = [lab_runs.final_point(table.archs[a]) for a in ids]
    return normalized_hypervolume(pts, lab_runs.DIRECTIONS, lo, hi) / lab_runs.true_hv(table)


def test_the_score_is_the_true_hv_of_the_front_the_search_believes(table: Table) -> None:
    f = lab_runs.ReportedFront(table)
    assert f.add("a", 0.80) == pytest.approx(_hv(table, ["a"]))
    assert f.add("b", 0.70) == pytest.approx(_hv(table, ["a", "b"]))
    # c's one seed looks worse than b at lower throughput: the search reports a and b only; c's true share is lost
    assert f.add("c", 0.69) == pytest.approx(_hv(table, ["a", "b"]))
    assert _hv(table, ["a", "b"]) < 0.99
    # a second seed of c: its mean (0.69 + 0.79) / 2 = 0.74 beats b, so the reported front is the true one
    assert f.add("c", 0.79, replicate=1) == pytest.approx(1.0)
    # a reused copy repeats its source's value: nothing changes
    assert f.add("c", 0.79, replicate=1) == pytest.approx(1.0)


def test_on_a_one_seed_table_the_score_is_the_share_of_the_architectures_found(table: Table) -> None:
    """Observed = truth (the one-seed table): the reported front is the front of everything found, so the score is
    the former one (every row of the one-seed lab reproduces)."""
    f, found = lab_runs.ReportedFront(table), []
    for a in ("d", "b", "c", "a"):
        found.append(a)
        assert f.add(a, table.archs[a].mean_final) == pytest.approx(_hv(table, found))
    assert _hv(table, found) == pytest.approx(1.0) and _hv(table, ["d", "b"]) < _hv(table, ["d", "b", "c"]) < 1.0


def test_curve_from_events_counts_compute_up_to_each_completion(table: Table) -> None:
    epochs = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0), (4.0, 30.0)]
    done = [(1.0, "a", 0.80, 0, None), (2.0, "b", 0.70, 0, None), (3.0, "c", 0.69, 0, None), (4.0, "c", 0.79, 1, None)]
    curve = lab_runs.curve_from_events("m", 0, table, epochs, done)
    assert [p[0] for p in curve.points] == [1, 2, 3, 4] and curve.unique_archs == 3
    assert [p[1] for p in curve.points] == [10.0, 30.0, 60.0, 90.0]
    assert curve.points[-1][2] == pytest.approx(1.0) and curve.points[-2][2] < 0.99
    assert curve.compute_to(1.0, axis=0) == 4
    # a trial's fixed cost (issue 30) adds worker-seconds, not trial-epochs, from the moment it is paid
    fixed = [(0.5, 2.0), (1.5, 2.0), (2.5, 2.0)]
    paid = lab_runs.curve_from_events("m", 0, table, epochs, done, fixed=fixed)
    assert [p[0] for p in paid.points] == [1, 2, 3, 4]
    assert [p[1] for p in paid.points] == [12.0, 34.0, 66.0, 96.0]
