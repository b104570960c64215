"""nas.settle: interleaved, paired re-measurement resolves a known throughput order on a synthetic device whose load
drifts — where one measurement per candidate at different times gets it wrong — and leaves a true tie unresolved."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.settle import paired_ratio, settle_order, t_975


class DriftingDevice:
    """A device whose speed falls as load builds up (a ramp to -40 % over 60 timings) with 3 % noise per timing:
    what a shared CPU or a GPU packing other trials does to a measurement."""

    def __init__(self, true: list[float], seed: int = 0) -> None:
        self.true, self.t, self.log = true, 0, []
        self.rng = np.random.default_rng(seed)

    def measure(self, i: int) -> float:
        load = 1.0 - 0.4 * min(self.t, 60) / 60
        self.t += 1
        self.log.append(i)
        return self.true[i] * load * math.exp(self.rng.normal(0.0, 0.03))


def test_paired_rounds_resolve_the_true_order_that_drift_inverts_between_separate_measurements() -> None:
    true = [1000.0, 1060.0, 1200.0]  # 6 % and 13 % apart
    once = DriftingDevice(true)
    separate = [np.median([once.measure(i) for _ in range(5)]) for i in range(3)]  # each measured once, in turn
    once.t = 40  # ... the later ones under more load, as trials measured minutes apart are
    separate[2] = np.median([once.measure(2) for _ in range(5)])
    assert sorted(range(3), key=lambda i: -separate[i]) != [2, 1, 0]  # the drift got the order wrong
    dev = DriftingDevice(true, seed=1)
    out = settle_order(dev.measure, 3, max_rounds=15)
    assert out.order == [2, 1, 0] and out.resolved and out.rounds < 15
    assert dev.log[:6] == [0, 1, 2, 2, 1, 0]  # interleaved: forwards, then backwards
    for p in out.pairs:  # each neighbour's interval holds its true ratio
        assert p.low <= true[p.faster] / true[p.slower] <= p.high and p.low > 1.0


def test_a_true_tie_stays_unresolved_at_the_cap() -> None:
    dev = DriftingDevice([1000.0, 1000.0], seed=3)
    out = settle_order(dev.measure, 2, max_rounds=8)
    assert out.rounds == 8 and not out.resolved
    (p,) = out.pairs
    assert p.low <= 1.0 <= p.high and len(out.values[0]) == len(out.values[1]) == 8


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval() -> None:
    a, b = [110.0, 220.0, 330.0], [100.0, 200.0, 300.0]  # exactly 1.1 in every round: no spread
    assert paired_ratio(a, b) == pytest.approx((1.1, 1.1, 1.1))
    a2 = [110.0, 240.0, 300.0]
    d = np.log(np.array(a2) / np.array(b))
    half = t_975(2) * d.std(ddof=1) / math.sqrt(3)
    r, lo, hi = paired_ratio(a2, b)
    assert r == pytest.approx(math.exp(d.mean())) and lo == pytest.approx(math.exp(d.mean() - half))
    assert hi == pytest.approx(math.exp(d.mean() + half)) and t_975(2) == 4.303 and t_975(100) == 1.96


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_rounds"):
        settle_order(lambda i: 1.0, 2, min_rounds=1)


def test_nas_settle_re_measures_a_real_studys_front_and_stores_the_order(tmp_path, monkeypatch) -> None:
    """The command on a real study (real training, real SQLite): every front member re-measured each round on this
    CPU, the outcome stored in the study and printed one line per neighbour pair."""
    import optuna
    from typer.testing import CliRunner

    from nas import results
    from nas.cli import app
    from tests.test_executor import InlineExecutor, _run

    _, study = _run(tmp_path, "settle", InlineExecutor(), budget={"n_trials": 6, "max_concurrent": 1},
                    pruner={"name": "none"})  # fmt: skip
    front = results.front(results.records(study), results.objectives_of(study))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["settle", "settle", "--device", "cpu", "--rounds", "3"])
    if len(front) < 2:  # the front of real training and real timings: one member is possible, and refused
        assert out.exit_code == 2 and "nothing to order" in out.output  # pragma: no cover
        return  # pragma: no cover
    assert out.exit_code == 0, out.output
    stored = optuna.load_study(study_name="settle", storage=f"sqlite:///{tmp_path / 'studies' / 'settle' / 'study.db'}")
    s = stored.user_attrs["throughput_settled"]
    assert sorted(s["trials"]) == sorted(r.number for r in front) and s["rounds"] == 3
    assert len(s["pairs"]) == len(front) - 1 and out.output.count(" faster than trial ") == len(front) - 1
    assert all(m > 0 for m in s["medians"])


def _study_measured(cvs: list[float], cached: int = 0):
    """A real (in-memory) Optuna study whose trials carry throughput measurements of spread ``cvs``, and ``cached``
    more trials whose throughput came from the cache (not a measurement of their own)."""
    import optuna

    study = optuna.create_study(study_name="load", directions=["maximize", "maximize"])
    for i, cv in enumerate(cvs + [0.9] * cached):
        tp = {"median": 1000.0, "cv": cv, "device": "cpu", "cached": i >= len(cvs)}
        study.add_trial(
            optuna.trial.create_trial(values=[0.8, 1000.0], user_attrs={"arch_id": f"a{i}", "throughput": tp})
        )
    return study


def test_a_loaded_device_is_said_in_one_line_and_an_idle_one_is_not() -> None:
    from nas import settle, trust

    idle = _study_measured([0.04, 0.06, 0.07, 0.05], cached=3)  # cached copies of a loaded time do not count
    assert settle.device_load(idle) == {"median_cv": 0.055, "measurements": 4, "loaded": False, "threshold": 0.10}
    assert settle.load_line(idle) is None and trust.trust_lines(idle) == []
    loaded = _study_measured([0.18, 0.25, 0.06, 0.21])
    line = settle.load_line(loaded)
    assert line and line.startswith("throughput measured on a loaded device: median spread (CV) 20 % over 4")
    assert "nas settle load" in line and line in trust.trust_lines(loaded)
    assert settle.device_load(_study_measured([])) is None


@pytest.mark.parametrize(
    ("step", "rounds", "here", "settles"),
    [(2.0, 3, True, True), (500.0, 3, True, False), (2.0, 0, True, False), (2.0, 3, False, False)],
    ids=["overlapping", "apart", "switched-off", "measured-elsewhere"],
)
def test_a_search_settles_its_front_at_the_end_only_where_the_order_is_in_doubt(
    tmp_path, step: float, rounds: int, here: bool, settles: bool
) -> None:
    """Issue 30: at the end of a search whose trials measured on this machine's device, the front's throughput order
    is re-measured paired when neighbours' intervals overlap (planted: 2 img/s apart at CV 0.1 %), at most
    ``budget.settle_rounds`` rounds, stored and said in the summary; not when every neighbour is far apart, not with
    0 rounds, and not when the executor's trials measured elsewhere (a Ray cluster)."""
    import optuna

    from nas import settle
    from nas.engine.config import read_study_file
    from nas.engine.progress import Progress
    from nas.engine.run import run_config
    from nas.study_record import StudyRecord
    from tests.engine_fixtures import PlantedExecutor, write_study

    ex = PlantedExecutor(lambda i: (0.60 + 0.03 * i, 5000.0 - step * i), seed_sd=0.0)
    ex.measures_here = here
    cfg, space = read_study_file(write_study(tmp_path, "ends", budget={"n_trials": 4, "max_concurrent": 1,
                                             "settle_rounds": rounds}, pruner={"name": "none"}))  # fmt: skip
    summary = run_config(cfg, space, "ends", tmp_path / "studies", Progress(quiet=True), executor=ex)
    study = optuna.load_study(study_name="ends", storage=f"sqlite:///{tmp_path / 'studies' / 'ends' / 'study.db'}")
    s = StudyRecord.of(study).throughput_settled
    assert bool(s) == settles
    if settles:
        assert 1 <= s["rounds"] <= rounds and len(s["trials"]) == 4 and s["device"] not in ("", "auto")
        assert settle.settled_line(study) in summary.warnings
    else:
        assert not any("paired re-measurement" in w for w in summary.warnings)
