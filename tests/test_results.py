"""nas.results against a real Optuna SQLite study (tests/conftest_study.py) and plain reference maths."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nas import layout, results
from nas.errors import StudyError
from nas.evaluation import accuracy_interval

pytest.register_assert_rewrite("tests.conftest_study")  # before the import below
from tests.conftest_study import EPOCHS, PLAN, T0, VAL_IMAGES, StudyFixture  # noqa: E402

pytest_plugins = ("tests.conftest_study",)  # the study_env fixture


def brute_front(points: list[tuple[float, float]]) -> list[int]:
    """Both objectives maximised: i is on the front when no j is >= in both and > in one."""
    out = []
    for i, p in enumerate(points):
        dominated = any(
            q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for j, q in enumerate(points) if j != i
        )
        if not dominated:
            out.append(i)
    return out


def hv2d_max(points: list[tuple[float, float]]) -> float:
    """Area dominated by ``points`` above the origin (both maximised): sweep x descending."""
    area, best_y = 0.0, 0.0
    for x, y in sorted(points, key=lambda p: -p[0]):
        if y > best_y:
            area += x * (y - best_y)
            best_y = y
    return area


@pytest.fixture
def loaded(study_env: StudyFixture):
    st = results.open_study("demo")
    return st, results.records(st), results.objectives_of(st)


def test_records_carry_the_storage_attributes(loaded) -> None:
    _, recs, objs = loaded
    assert [o.name for o in objs] == ["accuracy", "throughput"]
    assert [r.number for r in recs] == list(range(len(PLAN)))
    by = {r.number: r for r in recs}
    assert by[1].values == {"accuracy": 0.85, "throughput": 3000.0}
    assert by[1].checkpoint == "checkpoints/trial_1.safetensors" and by[1].full_fidelity
    assert by[1].arch["stages"][1]["mixer"] == PLAN[1][4][1]["mixer"]
    assert by[1].duration == 30.0 * EPOCHS and by[1].datetime_start == T0.replace(minute=1)
    assert by[3].state == "PRUNED" and by[3].pruned_at == 1 and len(by[3].curve) == 1 and not by[3].values
    assert by[5].state == "FAIL" and "out of memory" in by[5].failure
    assert by[1].search_params["stage1.mixer"] == by[1].arch["stages"][1]["mixer"]
    assert by[1].throughput["iqr"] == pytest.approx(60.0)


def test_front_matches_brute_force_and_ignores_partial_fidelity(loaded, study_env: StudyFixture) -> None:
    _, recs, objs = loaded
    fr = results.front(recs, objs)
    assert [r.number for r in fr] == study_env.expected_front
    full = [r for r in recs if r.state == "COMPLETE" and r.full_fidelity]
    ref = brute_front([(r.values["accuracy"], r.values["throughput"]) for r in full])
    assert sorted(r.number for r in fr) == sorted(full[i].number for i in ref)
    # trial 7 dominates everything but is below full fidelity: never on the front
    assert 7 not in [r.number for r in fr]
    assert 7 in [r.number for r in recs if r.state == "COMPLETE"]


def test_hypervolume_history_matches_plain_sweep(loaded) -> None:
    _, recs, objs = loaded
    hist = results.hypervolume_history(recs, objs, by="number")
    done = sorted((r for r in recs if r.state == "COMPLETE" and r.full_fidelity), key=lambda r: r.number)
    assert [x for x, _ in hist] == [r.number for r in done]
    # normalised: each objective min-max scaled over all complete trials (worst 0, best 1)
    tps, accs = [r.values["throughput"] for r in done], [r.values["accuracy"] for r in done]
    scale = lambda v, vs: (v - min(vs)) / (max(vs) - min(vs))  # noqa: E731
    for k, (_, hv) in enumerate(hist):
        pts = [(scale(r.values["throughput"], tps), scale(r.values["accuracy"], accs)) for r in done[: k + 1]]
        assert hv == pytest.approx(hv2d_max(pts))
    assert 0 < hist[-1][1] < 1
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(hist))
    by_t = results.hypervolume_history(recs, objs, by="time")
    # x = seconds from the first start to each completion (start n*60 s, wall time 90 s)
    assert [x for x, _ in by_t] == [60.0 * r.number + 90.0 for r in done]
    assert by_t[-1][1] == pytest.approx(hist[-1][1])
    assert results.hv_bounds(done, objs) == ([min(accs), min(tps)], [max(accs), max(tps)])


def _knee_reference(points: list[tuple[float, float]]) -> int:
    """Farthest point from the chord joining the two extremes, on the ideal side (min-max normalised)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    nx = [(max(xs) - x) / (max(xs) - min(xs)) for x in xs]  # 0 = best, both maximised
    ny = [(max(ys) - y) / (max(ys) - min(ys)) for y in ys]
    a = min(range(len(points)), key=lambda i: (nx[i], ny[i]))
    b = min(range(len(points)), key=lambda i: (ny[i], nx[i]))
    dx, dy = nx[b] - nx[a], ny[b] - ny[a]

    def cross(px: float, py: float) -> float:
        return dx * (py - ny[a]) - dy * (px - nx[a])

    side = 1.0 if cross(0.0, 0.0) > 0 else -1.0  # the ideal point (0, 0) is on the positive side
    return max(range(len(points)), key=lambda i: side * cross(nx[i], ny[i]))


def test_pick_knee_max_accuracy_and_constraints(loaded) -> None:
    _, recs, objs = loaded
    fr = results.front(recs, objs)
    knee = fr[_knee_reference([(r.values["accuracy"], r.values["throughput"]) for r in fr])]
    assert knee.number == 0  # by hand: (0.80, 5000) sits farthest inside the chord (0.9,1500)-(0.7,6000)
    assert results.pick(recs, "knee", objectives=objs).number == knee.number
    assert results.pick(recs, "knee").number == knee.number  # directions inferred from the names
    assert results.pick(recs, "max-accuracy").number == 4
    assert results.pick(recs, "max-accuracy", min_throughput=2000).number == 1
    assert results.pick(recs, "max-accuracy", min_throughput=5500).number == 6
    small = min(r.params for r in recs if r.state == "COMPLETE" and r.full_fidelity)
    got = results.pick(recs, "max-accuracy", max_params=small)
    assert got.params == small
    with pytest.raises(StudyError, match=r"throughput >= 1e\+06"):
        results.pick(recs, "knee", min_throughput=1e6)
    with pytest.raises(StudyError, match="unknown --pick"):
        results.pick(recs, "best")


def test_summary_counts_and_compute(loaded) -> None:
    st, recs, _ = loaded
    s = results.summarize(st)
    assert s.counts == {"COMPLETE": 6, "PRUNED": 1, "FAIL": 1} and s.n_trials == 8
    assert s.trial_seconds == pytest.approx(sum(r.duration for r in recs))
    assert s.trial_epochs == 6 * EPOCHS + 1
    assert s.elapsed_seconds == pytest.approx(7 * 60 + 90)
    assert [r.number for r in s.front] == [4, 1, 0, 6]
    assert s.storage == "sqlite:///studies/demo/study.db"
    rows = results.front_rows(s.front, s.objectives)
    assert list(rows[0])[:6] == ["trial", "accuracy", "accuracy_lo", "accuracy_hi", "seeds", "throughput"]
    assert all(row["seeds"] == 1 for row in rows) and "p_front" not in rows[0]
    # P(front) of every complete architecture; the front's rows carry theirs
    assert set(s.p_front) == {r.number for r in results.eligible(recs, s.objectives)}
    assert all(0.0 <= p <= 1.0 for p in s.p_front.values())
    with_p = results.front_rows(s.front, s.objectives, s.p_front)
    assert [row["p_front"] for row in with_p] == [s.p_front[r.number] for r in s.front]
    assert rows[0]["placement"]
    for row in rows:  # the Wilson interval of the trial's correct images (tests/conftest_study.py: 1,000 of them)
        right = round(row["accuracy"] * VAL_IMAGES)
        assert (row["accuracy_lo"], row["accuracy_hi"]) == pytest.approx(accuracy_interval(right, VAL_IMAGES))
        assert row["accuracy_lo"] < row["accuracy"] < row["accuracy_hi"]


def test_open_errors_are_one_line(study_env: StudyFixture, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"unknown study 'nope'.*studies under studies/: demo, other") as e:
        results.open_study("nope")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "studies" / "nope").exists()  # reading never creates a database
    with pytest.raises(StudyError, match="studies there: demo"):
        results.open_study("other", study_env.url)
    with pytest.raises(StudyError, match="cannot open") as e:
        results.open_study("demo", "postgresql://me:hunter2@127.0.0.1:1/nas")
    assert "hunter2" not in str(e.value)
    with pytest.raises(StudyError, match="cannot open"):
        results.open_study("demo", "not a url")
    with pytest.raises(StudyError, match="no database file"):
        results.open_study("demo", "sqlite:///missing/study.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StudyError):
        results.open_study("demo", "sqlite:///junk.db")
    st = results.open_study("demo")
    with pytest.raises(StudyError, match=r"no trial 99; trials are numbered 0\.\.7"):
        results.get_record(st, 99)


def test_list_studies(study_env: StudyFixture) -> None:
    rows = results.list_studies()
    assert [(r["study"], r["trials"], r["complete"], r["pruned"], r["failed"]) for r in rows] == [
        ("demo", 8, 6, 1, 1),
        ("other", 1, 1, 0, 0),
    ]
    assert rows[0]["objectives"] == ["accuracy:max", "throughput:max"]
    assert [r["study"] for r in results.list_studies(study_env.url)] == ["demo"]


def test_safe_url_drops_password() -> None:
    assert layout.safe_url("postgresql+psycopg2://u:pw@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
    assert layout.safe_url("sqlite:///studies/x/study.db") == "sqlite:///studies/x/study.db"


def test_a_reused_architecture_is_one_point_with_its_reuses_listed_beside(tmp_path: Path, monkeypatch) -> None:
    from nas import dashboard
    from tests.conftest_study import EXPECTED_FRONT, make_study

    state, acc, thr, full, stages, _ = PLAN[4]  # the most accurate front member, proposed again twice
    plan = [
        *PLAN,
        (state, acc, thr, full, stages, {"reused_from": 4}),
        (state, acc, thr, full, stages, {"reused_from": 4}),
    ]
    make_study(tmp_path, "dup", plan=plan)
    monkeypatch.chdir(tmp_path)
    study = results.open_study("dup")
    recs, objs = results.records(study), results.objectives_of(study)
    assert [r.number for r in results.front(recs, objs)] == EXPECTED_FRONT  # not 4 three times
    assert next(r for r in recs if r.number == 4).reused_by == [8, 9]
    rows = results.front_rows(results.front(recs, objs), objs)
    assert rows[0]["trial"] == 4 and rows[0]["reused_by"] == [8, 9]
    assert results.pick(recs, "max-accuracy", objectives=objs).number == 4
    s = results.summarize(study)
    assert s.reused == 2 and s.counts["COMPLETE"] == 8  # the copies stay in the study's record
    drawn = [int(c[0]) for trace in dashboard.figures(recs, objs)["pareto"].data for c in (trace.customdata or [])]
    assert 4 in drawn and 8 not in drawn and 9 not in drawn
    assert any(
        "also proposed as trial(s) 8, 9" in str(c)
        for t in dashboard.figures(recs, objs)["pareto"].data
        for c in (t.customdata or [])
    )
