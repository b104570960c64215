"""benchmarks/search_lab.py cannot rot: a small lab on a hand-made table (our engine, Ray's ASHA, Syne Tune's MOASHA
and MOREA, two seeds) writes its report, its curves and its plot; the curves respect the compute budget. The lab runs
as ``python -m benchmarks.search_lab`` from the repository root, as its users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import lab_runs, lab_truth, search_lab, syne_adapter
from tests.test_replay import _study, make_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LAB = [sys.executable, "-m", "benchmarks.search_lab"]  # run with cwd=REPO


def test_a_small_lab_reports_every_kind_of_peer(tmp_path: Path) -> None:
    table, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    methods = ["random", "ours-random", "ray-asha", "syne-moasha", "syne-morea"]
    out = subprocess.run(
        [*LAB, "run", "--table", str(table), "--seeds", "2", "--budget", "60", "--procs", "1",
         "--out", str(tmp_path / "lab_v0.5"), "--methods", *methods],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "| method | 90 % HV" in out.stdout and "random / ours-random" in out.stdout
    report = json.loads((tmp_path / "lab_v0.5.json").read_text())  # --out is a prefix: its dot is kept
    assert {c["method"] for c in report["curves"]} == set(methods) and report["budget"] == 60
    for c in report["curves"]:
        shares = [p[2] for p in c["points"]]
        assert all(0 <= s <= 1 + 1e-9 for s in shares) and shares == sorted(shares)  # the front only grows
        assert all(p[0] <= 60 for p in c["points"])  # no method trains past the budget
    assert (tmp_path / "lab_v0.5.html").stat().st_size > 1000 and (tmp_path / "lab_v0.5.png").stat().st_size > 1000
    (tmp_path / "lab_v0.5.html").unlink()
    again = subprocess.run([*LAB, "plot", "--out", str(tmp_path / "lab_v0.5")], cwd=REPO, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]  # the figure again from the run's JSON, and its tables
    assert "random / ours-random" in again.stdout and (tmp_path / "lab_v0.5.html").stat().st_size > 1000


def test_a_run_ends_where_it_reaches_the_stop_share_and_not_before(tmp_path: Path) -> None:
    table, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    curves = {}
    for stop in ("0.6", "1.0"):
        out = subprocess.run(
            [*LAB, "run", "--table", str(table), "--seeds", "2", "--procs", "1", "--no-plot", "--stop-at", stop,
             "--out", str(tmp_path / f"stop{stop[-1]}"), "--methods", "ours-tpe"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        curves[stop] = json.loads((tmp_path / f"stop{stop[-1]}.json").read_text())["curves"]
    for short, full in zip(curves["0.6"], curves["1.0"], strict=True):
        cut = next(i for i, p in enumerate(full["points"]) if p[2] >= 0.6)
        assert short["points"] == full["points"][: cut + 1]  # the same search, ended at the first point >= 0.6
        assert len(full["points"]) > cut + 1  # (the full run went on: the stop did end it early)


def test_a_syne_tune_run_is_reproducible_from_its_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One seed, one curve, however slow the machine: Syne Tune's simulator used to add the real seconds spent
    outside it to its simulated clock, so a slow first run (a fresh clone) gave another curve. The third run here
    has a wall clock that jumps 0.3 s at every reading (what the simulator read); another seed gives another curve."""
    import itertools
    from types import SimpleNamespace

    from syne_tune.backend.simulator_backend import time_keeper

    table, t = make_table(tmp_path, _study(tmp_path, "seed"))
    morea = next(m for m in search_lab.methods() if m.name == "syne-morea")

    def run(seed: int) -> list[tuple[int, float, float]]:
        return lab_runs.run(str(table), search_lab.base_config(t), morea, seed, lab_runs.RunSettings(3, 80)).points

    runs = [run(5), run(5)]
    with monkeypatch.context() as m:
        clock = itertools.count(step=0.3)
        m.setattr(time_keeper, "time", SimpleNamespace(time=lambda: float(next(clock))))
        runs.append(run(5))
    assert runs[0] and runs[0] == runs[1] == runs[2]
    assert run(6) != runs[0]


def test_fidelity_table_has_one_row_per_epoch(tmp_path: Path) -> None:
    table, t = make_table(tmp_path, _study(tmp_path, "seed"))
    out = subprocess.run([*LAB, "fidelity", "--table", str(table)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == t.epochs and rows[-1].split("|")[2].strip() == "1.000"  # the last epoch ranks like itself


def test_the_oracle_bound_ranks_on_final_accuracy_where_ours_ranks_on_the_rung() -> None:
    """lab_runs.OraclePruner: the same MO-ASHA decision as ours, on the table's final accuracy. Eight trials at rung
    1 with equal throughput; the early leader ends last and the early last ends first."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from nas.engine.pruners import ParetoPruner

    finals = [0.90 - 0.01 * i for i in range(8)]  # arch 0 ends best ...
    rung1 = [0.10 + 0.01 * i for i in range(8)]  # ... and is the worst at rung 1
    truth = lab_truth.Truth("proxy", {f"a{i}": finals[i] for i in range(8)}, (0,))  # the oracle ranks on the truth
    study = optuna.create_study(directions=["maximize", "maximize"])
    for i in range(8):
        attrs = {"arch_id": f"a{i}", "curve": [{"epoch": 1, "val_acc": rung1[i]}], "throughput": {"median": 100.0}}
        study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=attrs))
    ours = ParetoPruner([1], ["accuracy", "throughput"], ["maximize", "maximize"], eta=2, min_trials=8)
    oracle = lab_runs.OraclePruner(truth, ours)
    pruned = {name: [p.prune(study, t) for t in study.trials] for name, p in (("ours", ours), ("oracle", oracle))}
    assert pruned["ours"] == [True] * 4 + [False] * 4  # the better half at rung 1: a4..a7
    assert pruned["oracle"] == [False] * 4 + [True] * 4  # the better half at the end: a0..a3
    with pytest.raises(SystemExit, match="pareto pruner"):
        lab_runs.OraclePruner(truth, optuna.pruners.NopPruner())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--methods", "ours-tpe", "oracle-tpe"], "--methods: no method oracle-tpe (oracle-* needs --oracle)"),
        (["--race", "budget_share=1.5"], "--race: replicates.budget_share: Input should be less than 1"),
        (["--race", "max_per_arch=0"], "--race: replicates.max_per_arch: Input should be greater than or equal to 1"),
        (["--race", "budget"], "--race: 'budget' is not KEY=VALUE"),
        (["--race", "budget=0.4"], "--race: replicates.budget: unknown field; remove it or check its spelling"),
    ],
)
def test_a_bad_lab_option_is_one_line_naming_it(tmp_path: Path, args: list[str], says: str) -> None:
    table, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    lab = [*LAB, "run", "--table", str(table), "--no-plot", "--out", str(tmp_path / "lab")]
    out = subprocess.run([*lab, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and says in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "lab.json").exists()  # nothing ran


def test_the_replicate_methods_refuse_a_table_of_one_seed_in_one_line(tmp_path: Path) -> None:
    """ours-race and tpe-3seeds replay three seeds per architecture: on table v1 (one seed) the lab says so and
    which command builds v2 — exit 2, nothing written; without --methods it leaves them out and runs the rest."""
    table, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    lab = [*LAB, "run", "--table", str(table), "--procs", "1"]
    out = subprocess.run([*lab, "--out", str(tmp_path / "bad"), "--methods", "ours-race", "tpe"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2 and not (tmp_path / "bad.json").exists()
    last = out.stderr.strip().splitlines()[-1]
    assert "ours-race need a table of 3 seeds" in last and "has 1" in last
    assert "python -m benchmarks.search_lab seeds" in last


@pytest.mark.parametrize("dim", [None, 0, 1])
def test_the_faster_syne_sort_is_syne_tunes_own(dim: int | None) -> None:
    """The lab's replacement of Syne Tune's non-dominated sort returns what Syne Tune's returns and leaves the global
    generator where Syne Tune's leaves it: points with duplicates and ties (small integers), random points, one
    point, three costs."""
    import numpy as np
    from syne_tune.optimizer.schedulers.multiobjective import non_dominated_priority as ndp

    gen = np.random.default_rng(7)
    cases = [gen.integers(0, 4, size=(n, 2)).astype(float) for n in (1, 2, 9, 40, 120)]
    cases += [gen.random((n, 2)) for n in (5, 60, 200)] + [gen.integers(0, 3, size=(30, 3)).astype(float)]
    cases.append(np.array([[0.1, 0.5], [0.1, 0.5], [0.2, 0.2], [np.nan, 0.0], [0.3, 0.1]]))
    for x in cases:
        np.testing.assert_array_equal(syne_adapter.pareto_efficient(x), ndp.pareto_efficient(x))
        np.random.seed(11)
        expected = ndp.nondominated_sort(x, dim=dim)
        after_theirs = np.random.random()
        np.random.seed(11)
        with syne_adapter.faster_syne_sort():
            got = ndp.nondominated_sort(x, dim=dim)
        assert got == expected, x
        assert np.random.random() == after_theirs  # the same draws, so a seeded run goes on the same way
        assert ndp.compute_epsilon_net is not syne_adapter.compute_epsilon_net  # restored on leaving
        np.testing.assert_array_equal(syne_adapter.compute_epsilon_net(x, dim=0), ndp.compute_epsilon_net(x, dim=0))
    infinite = np.array([[np.inf, 0.0], [np.inf, 0.0], [0.0, np.inf], [-np.inf, 1.0], [1.0, 1.0], [-np.inf, 1.0]])
    np.testing.assert_array_equal(syne_adapter.pareto_efficient(infinite), ndp.pareto_efficient(infinite))


def test_a_moasha_run_uses_the_faster_sort_and_gets_syne_tunes_own_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's MOASHA runs through syne_adapter.faster_syne_sort (its sort is called), and the curve is the one
    Syne Tune's own sort gives: the speed-up changes how long the lab takes, never what it reports."""
    import contextlib

    table, t = make_table(tmp_path, _study(tmp_path, "sort"))
    moasha = next(m for m in search_lab.methods() if m.name == "syne-moasha")
    calls = []
    own = syne_adapter.pareto_efficient

    def counted(x: Any) -> Any:
        calls.append(len(x))
        return own(x)

    def run() -> list[tuple[int, float, float]]:
        return lab_runs.run(str(table), search_lab.base_config(t), moasha, 3, lab_runs.RunSettings(3, 80)).points

    with monkeypatch.context() as m:
        m.setattr(syne_adapter, "pareto_efficient", counted)
        faster = run()
    assert calls, "the lab's MOASHA run did not use the faster sort"
    monkeypatch.setattr(syne_adapter, "faster_syne_sort", contextlib.nullcontext)  # Syne Tune's own sort
    assert faster and run() == faster
