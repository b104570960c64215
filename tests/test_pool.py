"""The pool executor (nas.engine.pool): ``nas search --pool N`` trains a real study in local worker processes with
no Ray anywhere (real Fashion-MNIST slices, real training, real SQLite); the pruner stops trials in the workers; a
finished trial's weights export; a worker that dies fails its trial with the exit code and the study goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas.engine.config import read_study_file
from nas.engine.messages import TrialPayload
from nas.engine.pool import PoolExecutor, work
from nas.engine.progress import Progress
from nas.engine.run import run_config
from nas.trial_record import TrialRecord
from tests.engine_fixtures import write_study

REPO = Path(__file__).resolve().parents[1]
NO_RAY = """
import sys
from nas.cli import main
sys.argv = ["nas", "search", sys.argv[1], "--pool", "2", "--quiet"]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
print("RAY_IMPORTED" if any(m == "ray" or m.startswith("ray.") for m in sys.modules) else "NO_RAY", code)
"""


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")


def test_nas_search_pool_trains_a_real_study_without_ray(tmp_path: Path) -> None:
    path = write_study(tmp_path, "pooled", budget={"n_trials": 4, "max_concurrent": 2})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", NO_RAY, str(path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "NO_RAY 0", out.stdout[-2000:] + out.stderr[-3000:]
    study = _study(tmp_path, "pooled")
    trained = [t for t in study.trials if not TrialRecord.of(t).is_copy]
    assert len(study.trials) == 4 and {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trained:
        a = TrialRecord.of(t)
        assert a.fidelity == len(a.curve) == (2 if t.state == TrialState.COMPLETE else a.pruned_at)
        assert a.throughput["median"] > 0 and a.phases["epochs_s"] > 0
        assert (a.checkpoint is not None) == (t.state == TrialState.COMPLETE)  # weights of finished trials only
    ranks = sorted(TrialRecord.of(t).phases["worker_trial"] for t in trained)
    assert ranks.count(1) == min(2, len(trained))  # two workers, each started once: warm after their first trial
    assert len(trained) <= 2 or ranks[-1] >= 2
    done = next(t for t in trained if t.state == TrialState.COMPLETE)
    exported = subprocess.run([sys.executable, "-m", "nas.cli", "export", "pooled", "--trial", str(done.number),
                               "--weights", "--out", "exported"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert exported.returncode == 0, exported.stdout[-1500:] + exported.stderr[-1500:]
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["config.json", "model.safetensors"]


def die_on_trial_one(inbox, outbox, dataset=None) -> None:
    """A worker that dies (exit code 3, no message) when handed trial 1 (the driver's answers to its epochs pass
    through); otherwise the real one."""

    class Peek:
        def get(self):
            config = inbox.get()
            if isinstance(config, dict) and TrialPayload.from_config(config["payload"]).number == 1:
                os._exit(3)
            return config

    work(Peek(), outbox, dataset)


def test_a_dead_pool_worker_fails_its_trial_and_another_takes_its_place(tmp_path: Path) -> None:
    cfg, space = read_study_file(write_study(tmp_path, "dies", budget={"n_trials": 3, "max_concurrent": 1},
                                             pruner={"name": "none"}))  # fmt: skip
    summary = run_config(cfg, space, "dies", tmp_path / "studies", Progress(quiet=True),
                         executor=PoolExecutor(1, target=die_on_trial_one))  # fmt: skip
    study = _study(tmp_path, "dies")
    by = {t.number: t for t in study.trials}
    assert by[1].state == TrialState.FAIL
    assert TrialRecord.of(by[1]).failure.startswith("pool worker died (exit code 3)")
    assert summary.added == 3 and by[0].state == by[2].state == TrialState.COMPLETE  # the study went on
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_workers_stop_when_the_run_ends_before_it_starts(tmp_path: Path, monkeypatch) -> None:
    """The workers start in ``prepare``; a run refused after it (here: the space cannot reach the classes) still
    stops them (``run_config`` closes the executor however the run ends), and nothing is written."""
    import pytest

    from nas.errors import ConfigError
    from nas.space import SearchSpace

    def refuse(self, num_classes: int) -> None:
        raise ConfigError("refused after prepare")

    monkeypatch.setattr(SearchSpace, "check_reachable", refuse)
    cfg, space = read_study_file(write_study(tmp_path, "refused"))
    pool, started = PoolExecutor(2), []
    start = pool._start
    monkeypatch.setattr(pool, "_start", lambda outbox: started.append(start(outbox)) or started[-1])
    with pytest.raises(ConfigError, match="refused after prepare"):
        run_config(cfg, space, "refused", tmp_path / "studies", Progress(quiet=True), executor=pool)
    assert len(started) == 2 and not any(s.proc.is_alive() for s in started) and pool.slots == []
    assert not (tmp_path / "studies" / "refused").exists()
