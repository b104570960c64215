"""Many drivers, one study (PostgreSQL): three `nas search --replay` processes on the lab's real table, started
together on an empty database; then the same with one of them killed (-9) half-way. Race-free by construction:
every driver exits 0, no architecture is trained twice, a killed driver's trials are recovered by the live ones
while they run (no restart) and retried exactly once, and the killed driver restarted later continues the study.
A SQLite study refuses a second driver in one line. (Real processes, a real PostgreSQL that scripts/test.sh starts.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from nas.engine.store import single_driver
from nas.trial_record import TrialRecord

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "tables" / "fmnist_bench.json"
N_TRIALS = 120  # per driver: 360 proposals into 216 architectures, so drivers reuse and wait on each other
HEARTBEAT_S, STALE_S = 0.5, 5.0
ENV = {
    **os.environ,
    "NAS_HEARTBEAT_S": str(HEARTBEAT_S),
    "NAS_STALE_AFTER_S": str(STALE_S),
    "NAS_MAX_REUSES_IN_A_ROW": "100000",  # more proposals than architectures: keep proposing, reuse and wait
    "PYTHONUNBUFFERED": "1",
}


@pytest.fixture
def empty_database() -> Any:
    """A new, empty PostgreSQL database on the test server (dropped afterwards)."""
    url = os.environ.get("NAS_TEST_POSTGRES_URL")
    if not url:
        message = "NAS_TEST_POSTGRES_URL not set (scripts/test.sh starts a local PostgreSQL when run as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    name = f"nas_md_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    yield str(sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False))
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def _study_file(folder: Path, storage: str) -> Path:
    """The lab table's own training (studies/fmnist_bench_build.yaml), searched with random sampling and MO-ASHA."""
    raw = yaml.safe_load((REPO / "studies" / "fmnist_bench_build.yaml").read_text())
    raw.update(
        name="many",
        space=str(REPO / "search_spaces" / "fmnist_bench.yaml"),
        fidelity={"rungs": [2, 4]},
        sampler={"name": "random"},
        pruner={"name": "pareto", "eta": 2},
        budget={"n_trials": N_TRIALS, "max_concurrent": 2},
        storage=storage,
    )
    path = folder / "many.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _driver(study: Path, folder: Path, n_trials: int = N_TRIALS) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas.cli", "search", str(study), "--replay", str(TABLE), "--plain"]
    cmd += ["-n", str(n_trials)]
    return subprocess.Popen(cmd, cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="many", storage=url).get_trials(deepcopy=False)


def _real(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials the budget counts (an infeasible sample is rejected before training and not counted)."""
    return [t for t in trials if not TrialRecord.of(t).infeasible]


def _trainings(trials: list[optuna.trial.FrozenTrial], finished_only: bool) -> Counter:
    """Per architecture, the trials that trained it (not copies); ``finished_only``: those that ended it."""
    states = (TrialState.COMPLETE, TrialState.PRUNED) if finished_only else tuple(TrialState)
    return Counter(
        TrialRecord.of(t).arch_id
        for t in trials
        if t.state in states and TrialRecord.of(t).curve_rows and not TrialRecord.of(t).is_copy
    )


def test_three_drivers_started_together_on_an_empty_database(tmp_path: Path, empty_database: str) -> None:
    study = _study_file(tmp_path, empty_database)
    procs = [_driver(study, tmp_path) for _ in range(3)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[-2000:] for o in outs]
    trials = _trials(empty_database)
    assert len(_real(trials)) == 3 * N_TRIALS
    assert Counter(t.state for t in trials)[TrialState.RUNNING] == 0
    assert Counter(t.state for t in trials)[TrialState.WAITING] == 0
    twice = {a: n for a, n in _trainings(trials, finished_only=False).items() if n > 1}
    assert twice == {}, f"architectures trained more than once: {twice}"
    copies = sum(TrialRecord.of(t).is_copy for t in trials)
    assert copies > 0, "with 360 proposals into 216 architectures, most later ones are reuses"
    assert len({TrialRecord.of(t).driver for t in _real(trials)}) == 3
    engine = sa.create_engine(empty_database)
    with engine.connect() as c:
        slots = sorted(c.execute(sa.text("select slot from nas_drivers where study = 'many'")).scalars())
        assert slots == [0, 1, 2]  # each driver its own sampler stream
        assert {"nas_throughput", "nas_arch_claims"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_a_driver_killed_half_way_is_recovered_by_the_live_ones(tmp_path: Path, empty_database: str) -> None:
    study = _study_file(tmp_path, empty_database)
    procs = [_driver(study, tmp_path) for _ in range(3)]
    victim = procs[0]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if len(_real(_trials(empty_database))) >= 3 * N_TRIALS // 2:
                break
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    victim.communicate()
    outs = [p.communicate(timeout=900)[0] for p in procs[1:]]
    ended_at = time.time()
    assert [p.returncode for p in procs[1:]] == [0, 0], [o[-2000:] for o in outs]

    trials = _trials(empty_database)
    dead = f":{victim.pid}:"
    recovered = [t for t in trials if TrialRecord.of(t).driver and dead in TrialRecord.of(t).driver
                 and (TrialRecord.of(t).failure or "").startswith("interrupted: its driver stopped")]  # fmt: skip
    assert recovered, "the killed driver had trials running"
    for t in recovered:
        done = t.datetime_complete.timestamp()
        assert killed_at - 1 <= done <= min(ended_at, killed_at + STALE_S + HEARTBEAT_S + 5), (t.number, done)
        retries = [r for r in trials if TrialRecord.of(r).retry_of == t.number]
        assert len(retries) == 1, f"trial {t.number}: {len(retries)} retries"
    assert Counter(t.state for t in trials)[TrialState.RUNNING] == 0  # nothing left dangling, no restart needed
    twice = {a: n for a, n in _trainings(trials, finished_only=True).items() if n > 1}
    assert twice == {}, f"architectures trained to the end more than once: {twice}"

    restarted = _driver(study, tmp_path, n_trials=20)
    out = restarted.communicate(timeout=600)[0]
    assert restarted.returncode == 0, out[-2000:]
    trials = _trials(empty_database)
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0  # every retry was taken: 0 lost
    for t in recovered:
        (retry,) = [r for r in trials if TrialRecord.of(r).retry_of == t.number]
        assert retry.state.is_finished()
    twice = {a: n for a, n in _trainings(trials, finished_only=True).items() if n > 1}
    assert twice == {}, f"architectures trained to the end more than once: {twice}"


def test_a_second_driver_on_a_sqlite_study_is_refused_in_one_line(tmp_path: Path) -> None:
    study = _study_file(tmp_path, "sqlite:///studies/many/study.db")
    url = f"sqlite:///{tmp_path / 'studies' / 'many' / 'study.db'}"
    with single_driver(url, "many"):  # a first driver holds the study
        second = _driver(study, tmp_path, n_trials=5)
        out = second.communicate(timeout=300)[0]
    assert second.returncode == 2, out[-2000:]
    last = out.strip().splitlines()[-1]
    assert "a SQLite study has one driver at a time" in last and "postgresql" in last.lower()
    assert not (tmp_path / "studies" / "many" / "study.db").exists(), "nothing written"
    first = _driver(study, tmp_path, n_trials=5)  # once it is free, the study runs
    assert first.wait(timeout=300) == 0, first.stdout.read()[-2000:]
