"""The executor seam (nas.engine.executor): a third executor of a few lines, in-process and without Ray, runs a
real study end to end (real Fashion-MNIST slices, real training, real SQLite) through ``run_config``, the entry
point of ``nas search``; a worker that dies and an executor that raises leave nothing RUNNING."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from nas import results, worktime
from nas.engine.config import read_study_file
from nas.engine.executor import ExecTrial, Prepared, TrialFeed, prepare_dataset
from nas.engine.lifecycle import INTERRUPTED
from nas.engine.progress import Progress
from nas.engine.run import run_config
from nas.engine.trainable import guarded_reports
from nas.trial_record import TrialRecord
from tests.engine_fixtures import write_study
from trainers import bitmap


class InlineExecutor:
    """One trial at a time in this process: what a process pool or a batch scheduler would implement."""

    def __init__(self, die_on: int | None = None, raise_after: int | None = None, cut_at: int | None = None) -> None:
        self.die_on, self.raise_after, self.cut_at, self.started = die_on, raise_after, cut_at, 0
        self.seen: list[ExecTrial] = []

    def prepare(self, cfg, space, where) -> Prepared:
        return prepare_dataset(cfg, space, where)

    def clock(self) -> float:
        return time.time()

    def run(self, driver, scheduler=None) -> None:
        feed = TrialFeed(driver, scheduler)
        while (trial := feed.next_trial(f"inline_{self.started}")) is not None:
            self.started += 1
            self.seen.append(trial)
            if self.raise_after is not None and self.started > self.raise_after:
                raise KeyboardInterrupt  # the executor stops with a trial handed out and not ended
            if trial.payload.number == self.die_on:
                feed.end(trial, error="worker lost (node preempted)")
                continue
            for report, weights in guarded_reports(trial.payload):
                if feed.report(trial, report, weights):
                    break
                if report.epoch == self.cut_at:
                    raise KeyboardInterrupt  # Ctrl-C in the middle of a trial
            feed.end(trial)


def _run(tmp_path: Path, name: str, executor: InlineExecutor, **over) -> tuple[object, optuna.Study]:
    cfg, space = read_study_file(write_study(tmp_path, name, **over))
    summary = run_config(cfg, space, name, tmp_path / "studies", Progress(quiet=True), executor=executor)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")
    return summary, study


def test_a_third_executor_runs_a_real_study_end_to_end(tmp_path: Path) -> None:
    executor = InlineExecutor()
    summary, study = _run(tmp_path, "inline", executor, budget={"n_trials": 4, "max_concurrent": 1})
    trained = [t for t in study.trials if not TrialRecord.of(t).is_copy]
    assert len(executor.seen) == len(trained) and summary.added == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    for t in trained:
        a = TrialRecord.of(t)
        assert a.curve_rows and a.throughput["median"] > 0 and a.wall_time_s > 0
        assert len(a.curve_rows) == a.fidelity == (2 if t.state == TrialState.COMPLETE else a.pruned_at)
        assert [r["epoch"] for r in a.curve_rows] == list(range(1, a.fidelity + 1))
    assert study.user_attrs["data_stats"]["mean"]  # the executor's study attributes were recorded
    for t in trained:  # issue 30: where each trial's worker time went, and the parts add up to no more than it
        ph = TrialRecord.of(t).phases
        assert ph["epochs_s"] == pytest.approx(sum(r["seconds"] for r in TrialRecord.of(t).curve_rows), rel=1e-6)
        parts = sum(ph[k] for k in ("start_s", "measure_s", "data_s", "build_s", "epochs_s", "weights_s"))
        assert 0 < parts <= ph["wall_s"] + 1e-6 and ph["wall_s"] == pytest.approx(TrialRecord.of(t).wall_time_s)
        assert ph["exclusive_s"] > 0 and ph["exclusive_s"] <= ph["measure_s"]  # measured with the device held
        assert (ph["weights_s"] > 0) == (t.state == TrialState.COMPLETE)  # only a finished model's weights
    ranks = [TrialRecord.of(t).phases["worker_trial"] for t in trained]  # one worker (this process), in order
    assert ranks == list(range(ranks[0], ranks[0] + len(trained)))
    w = worktime.of_study(study)
    assert w.trials == len(trained) and w.epochs_s < w.wall_s and w.without == 0
    assert w.wall_s == pytest.approx(w.epochs_s + sum(w.phases.values()), rel=1e-9)  # nothing unaccounted
    block = worktime.lines(w)
    assert block[0].startswith(f"worker time {w.wall_s:.1f} s over {len(trained)} trials") and "measure" in block[1]
    front = results.front(results.records(study), results.objectives_of(study))
    assert front and [f["number"] for f in summary.front] == [r.number for r in front]
    for row, r in zip(summary.front, front, strict=True):  # what `nas search` prints at the end
        lo, hi = r.accuracy_interval
        assert row["accuracy 95 %"] == f"{lo:.4f}–{hi:.4f}" and row["seeds"] == 1 and 0 <= row["p_front"] <= 1
    # a full-fidelity evaluation keeps which validation images it got right (all under one validation set)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len({TrialRecord.of(t).val_set for t in complete}) == 1 and TrialRecord.of(complete[0]).val_set
    for t in complete:
        right, n = bitmap.count(TrialRecord.of(t).val_correct)
        assert right / n == pytest.approx(t.values[0], abs=1e-12)
    for t in study.trials:
        a = TrialRecord.of(t)
        if t.state == TrialState.PRUNED and not a.is_copy:
            assert a.val_correct is None  # below full fidelity: no evaluation to compare
    # issue 29: an executor other than Ray's keeps the weights too, and nas export reloads the very model it trained
    from safetensors.torch import load_file

    from nas import export

    done = next(t for t in complete if not TrialRecord.of(t).is_copy)
    out = export.export_trial(study, done.number, tmp_path / "exported", weights=True)
    uri = TrialRecord.of(done).checkpoint
    assert uri.startswith("file://") and sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    saved, exported = load_file(uri[len("file://") :] + "/model.safetensors"), load_file(out / "model.safetensors")
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)


def test_a_dead_worker_fails_its_trial_with_the_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    summary, study = _run(tmp_path, "dies", InlineExecutor(die_on=0), budget={"n_trials": 2, "max_concurrent": 1})
    first = study.trials[0]
    assert summary.counts.get("FAIL") == 1
    assert first.state == TrialState.FAIL and "worker lost (node preempted)" in TrialRecord.of(first).failure
    assert study.trials[-1].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_an_executor_that_raises_leaves_nothing_running_and_its_trial_queued_again(tmp_path: Path) -> None:
    executor = InlineExecutor(raise_after=1)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "raises", executor, budget={"n_trials": 3, "max_concurrent": 1})
    study = optuna.load_study(study_name="raises", storage=f"sqlite:///{tmp_path / 'studies' / 'raises' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.WAITING) == 1  # the interrupted trial's one retry
    cut = study.trials[executor.seen[-1].payload.number]
    assert cut.state == TrialState.FAIL and TrialRecord.of(cut).failure.startswith(INTERRUPTED)


def test_an_interrupted_trial_continues_from_its_last_epoch_and_ends_as_if_never_cut(tmp_path: Path) -> None:
    """The trainer checkpoints every epoch under ``<study>/resume``; the interrupted trial's retry (same architecture,
    same training) reads the epochs back, trains only the rest, and reaches the accuracy of an uncut run."""
    one = {"budget": {"n_trials": 1, "max_concurrent": 1}, "pruner": {"name": "none"}, "train": {"epochs": 3}}
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "cut", InlineExecutor(cut_at=2), **one)
    resume = tmp_path / "studies" / "cut" / "resume"
    assert len(list(resume.glob("*.pt"))) == 1  # kept for the retry
    _, study = _run(tmp_path, "cut", InlineExecutor(), **one)
    cut, retry = study.trials[0], study.trials[1]
    assert TrialRecord.of(retry).retry_of == 0 and retry.state == TrialState.COMPLETE
    assert TrialRecord.of(retry).resumed_epochs == 2
    assert [r["val_acc"] for r in TrialRecord.of(retry).curve_rows[:2]] == [
        r["val_acc"] for r in TrialRecord.of(cut).curve_rows
    ]
    assert not list(resume.glob("*.pt"))  # told: the checkpoint has served
    _, whole = _run(tmp_path, "whole", InlineExecutor(), **one)  # the same seed: the same architecture, never cut
    assert TrialRecord.of(whole.trials[0]).arch_id == TrialRecord.of(retry).arch_id
    assert TrialRecord.of(whole.trials[0]).resumed_epochs is None
    assert retry.values[0] == pytest.approx(whole.trials[0].values[0], abs=1e-6)
    # the final epoch came from training after the cut: its correct images are the uncut run's
    assert TrialRecord.of(retry).val_correct == TrialRecord.of(whole.trials[0]).val_correct


def test_ctrl_c_while_the_driver_samples_leaves_no_trial_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 30: Ctrl-C that lands between a trial's birth and a worker (the driver sampling or describing it) left
    that trial RUNNING until the next start. It is failed and queued again like any interrupted trial."""
    from nas.space import SearchSpace

    real, calls = SearchSpace.sample, []

    def sample(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # SIGINT while the second trial is sampled
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SearchSpace, "sample", sample)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "sigint", InlineExecutor(), budget={"n_trials": 3, "max_concurrent": 1})
    study = optuna.load_study(study_name="sigint", storage=f"sqlite:///{tmp_path / 'studies' / 'sigint' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and states[0] in (TrialState.COMPLETE, TrialState.PRUNED)
    cut = study.trials[1]
    assert cut.state == TrialState.FAIL and TrialRecord.of(cut).failure.startswith(INTERRUPTED)
    assert [TrialRecord.of(t).retry_of for t in study.trials if t.state == TrialState.WAITING] == [1]


def test_guarded_reports_turn_what_a_trial_raises_into_its_failed_last_report() -> None:
    """Issue 29: the conversion every executor needs (Ray's run_trial used to own it); and the engine's public
    names include the executor seam."""
    import nas.engine
    from nas.engine.messages import TrialPayload

    bad = TrialPayload(number=0, arch={}, arch_id="x", train={}, dataset={}, throughput={}, cpus=1.0)
    (report, weights), *rest = list(guarded_reports(bad))
    assert rest == [] and weights is None and report.epoch == 0 and report.failed
    assert report.failed.startswith(("KeyError", "ValidationError")) and " at " in report.failed
    for name in (
        "Executor",
        "TrialFeed",
        "Lifecycle",
        "ReplayExecutor",
        "PoolExecutor",
        "Racer",
        "Policy",
        "Predictor",
        "StopRules",
        "guarded_reports",
    ):
        assert name in nas.engine.__all__ and getattr(nas.engine, name) is not None
