"""Driver + StudyStore on a real SQLite study, without Ray: the Tune calls are simulated in the order Tune makes
them (searcher.suggest -> next_config; scheduler.on_trial_result -> on_result + should_stop; searcher
on_trial_complete -> on_result again + on_complete), with the EpochReport a worker would send."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.pruners import BasePruner, NopPruner
from optuna.trial import TrialState

from nas import results
from nas.engine import stops as stops_mod
from nas.engine.config import StudyConfig
from nas.engine.driver import FINISHED, Driver
from nas.engine.messages import EpochReport, TrialPayload
from nas.engine.pruners import make_pruner
from nas.engine.samplers import make_sampler
from nas.engine.store import THROUGHPUT_TABLE, StudyStore
from nas.errors import StudyError
from nas.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = 3
DEVICE = "cpu:test"
TWO_ARCHS = {  # s0.mixer is the only searched parameter: two architectures
    "name": "two",
    "input": {"img_size": 16, "in_chans": 1},
    "stem": {"kernel": 3, "stride": 2},
    "mlp_ratio": 2,
    "knobs": {"mhsa": {"head_dim": 16}},
    "stages": [{"depth": 1, "dim": 16, "mixers": ["dwconv", "mhsa"]}],
}
ONE_ARCH = {**TWO_ARCHS, "name": "one", "stages": [{"depth": 1, "dim": 16, "mixers": ["dwconv"]}]}
# cska heads=3 divides 48 but not 32: the space is valid, the sample (dim 32, heads 3) is not
SOMETIMES_INFEASIBLE = {
    **TWO_ARCHS,
    "name": "some",
    "knobs": {"cska": {"heads": [2, 3]}},
    "stages": [{"depth": 1, "dim": [32, 48], "mixers": ["dwconv", "cska"]}],
}


class PruneNumbers(BasePruner):
    """Prunes exactly the listed trial numbers (the driver's bookkeeping is under test, not a pruning rule)."""

    def __init__(self, numbers: set[int]) -> None:
        self.numbers = numbers

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number in self.numbers


@pytest.fixture
def make(tmp_path: Path):
    stores: list[StudyStore] = []

    def _make(
        space: dict[str, Any] = TWO_ARCHS,
        n_trials: int | None = 10,
        pruner: BasePruner | None = None,
        name: str = "drv",
        pruner_cfg: dict[str, Any] | None = None,
        **cfg: Any,
    ) -> Driver:
        config = StudyConfig.model_validate(
            {
                "name": name,
                "space": "inline.yaml",
                "train": {"epochs": EPOCHS},
                "fidelity": {"rungs": [1, 2]},
                "sampler": {"name": "random"},
                **({"pruner": pruner_cfg} if pruner_cfg else {}),
                **cfg,
            }
        )
        sp = SearchSpace.from_dict(space)
        pr = pruner if pruner is not None else NopPruner()
        store = StudyStore(config, sp, make_sampler(config, 0), pr, base_dir=tmp_path)
        stores.append(store)
        return Driver(config, sp, store, pr, num_classes=4, n_trials=n_trials)

    yield _make
    for s in stores:
        s.close()


def _payload(config: dict[str, Any] | str) -> TrialPayload:
    assert isinstance(config, dict), config
    return TrialPayload.from_config(config)


def _result(payload: TrialPayload, epoch: int, acc: float, tp: float = 1000.0) -> dict[str, Any]:
    """What nas.engine.trainable reports for one epoch: the cached throughput when the payload carries it."""
    key = f"{payload.arch_id}|{DEVICE}|b64|16x16|fp32|none"
    hit = payload.cached_throughput.get(key)
    tp_dict = {**hit, "cached": True} if hit else {"key": key, "median": tp, "device": DEVICE, "cached": False}
    report = EpochReport(
        epoch=epoch,
        val_acc=acc,
        val_loss=1 - acc,
        train_loss=1.1 - acc,
        seconds=0.5,
        images_per_s=64.0,
        throughput=tp_dict,
    )
    return report.to_result()


def _run(driver: Driver, tid: str, accs: list[float], tp: float = 1000.0) -> TrialPayload:
    payload = _payload(driver.next_config(tid))
    last = None
    for epoch, acc in enumerate(accs, 1):
        last = _result(payload, epoch, acc, tp)
        driver.on_result(tid, last)  # scheduler.on_trial_result
        driver.on_result(tid, last)  # the callback sees it too: must be idempotent
        if driver.should_stop(tid, last):
            break
    driver.on_result(tid, last)  # searcher.on_trial_complete(result=last)
    driver.on_complete(tid)
    return payload


def _trial(driver: Driver, number: int) -> optuna.trial.FrozenTrial:
    return driver.store.frozen(number)


def _rows(driver: Driver) -> list[Any]:
    with driver.store.engine.connect() as c:
        return c.execute(sa.select(THROUGHPUT_TABLE)).fetchall()


# ---------------------------------------------------------------------------------------------- states
def test_complete_only_at_full_fidelity_pruned_at_rung_keeps_curve(make) -> None:
    d = make(pruner=PruneNumbers({1}))
    a = _run(d, "a", [0.5, 0.6, 0.7], tp=900.0)
    b = _run(d, "b", [0.95, 0.97, 0.99], tp=5000.0)  # would dominate everything, but is pruned at rung 1
    ta, tb = _trial(d, a.number), _trial(d, b.number)
    assert ta.state == TrialState.COMPLETE and ta.values == [0.7, 900.0]
    assert ta.user_attrs["full_fidelity"] is True and ta.user_attrs["fidelity"] == EPOCHS
    assert [r["epoch"] for r in ta.user_attrs["curve"]] == [1, 2, 3]  # duplicated deliveries recorded once
    assert ta.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    assert tb.state == TrialState.PRUNED and tb.values is None
    assert tb.user_attrs["pruned_at"] == 1 and tb.user_attrs["fidelity"] == 1
    assert tb.user_attrs["full_fidelity"] is False
    sent = _result(b, 1, 0.95)
    assert tb.user_attrs["curve"] == [
        {k: sent[k] for k in ("epoch", "val_acc", "val_loss", "train_loss", "seconds", "images_per_s")}
    ]
    assert tb.intermediate_values == {1: 0.95}
    assert tb.user_attrs["throughput"]["median"] == 5000.0
    # the front (COMPLETE at full fidelity only) has trial a, never the better-looking pruned b
    front = results.front(results.records(d.store.study), results.objectives_of(d.store.study))
    assert [r.number for r in front] == [a.number]
    from nas.engine.run import run_summary

    summary = run_summary(d.store, d.cfg, d.added, 1.0, [], [])
    assert [row["number"] for row in summary.front] == [a.number]
    assert summary.counts == {"COMPLETE": 1, "PRUNED": 1}


def test_failed_report_and_dead_worker_are_fail_with_reason(make) -> None:
    d = make()
    p = _payload(d.next_config("x"))
    d.on_result("x", _result(p, 1, 0.4))
    d.should_stop("x", _result(p, 1, 0.4))
    bad = {"epoch": 1, "failed": "RuntimeError: loss is NaN at step 12"}
    d.on_result("x", bad)
    assert d.should_stop("x", bad)
    d.on_complete("x")
    t = _trial(d, p.number)
    assert t.state == TrialState.FAIL and t.user_attrs["failure"] == "RuntimeError: loss is NaN at step 12"
    assert [r["epoch"] for r in t.user_attrs["curve"]] == [1]  # what it learned before failing is kept

    q = _payload(d.next_config("y"))
    d.on_result("y", _result(q, 1, 0.4))
    d.on_complete("y", error=True)
    t = _trial(d, q.number)
    assert t.state == TrialState.FAIL and "worker process died" in t.user_attrs["failure"]

    r = _payload(d.next_config("z"))
    d.on_error("z", "worker failed: OutOfMemoryError")
    d.on_complete("z", error=True)
    assert _trial(d, r.number).user_attrs["failure"] == "worker failed: OutOfMemoryError"
    d.on_complete("z", error=True)  # told once; a second completion changes nothing
    assert _trial(d, r.number).user_attrs["failure"] == "worker failed: OutOfMemoryError"


def test_missing_objective_at_full_fidelity_is_fail(make) -> None:
    d = make()
    p = _payload(d.next_config("n"))
    for e in range(1, EPOCHS + 1):
        row = {k: v for k, v in _result(p, e, 0.5).items() if not k.startswith("throughput/")}  # never measured
        d.on_result("n", row)
    d.on_complete("n")
    t = _trial(d, p.number)
    assert t.state == TrialState.FAIL and "objective was not measured" in t.user_attrs["failure"]


# ---------------------------------------------------------------------------------------------- reuse
def test_same_arch_twice_is_reused_not_retrained(make) -> None:
    d = make(space=ONE_ARCH, n_trials=3)
    first = _run(d, "a", [0.3, 0.4, 0.5], tp=777.0)
    assert d.next_config("b") == FINISHED  # trials 1 and 2 were the same arch: reused, the budget is spent
    trials = d.store.study.trials
    assert len(trials) == 3 and d.added == 3
    for t in trials[1:]:
        assert t.state == TrialState.COMPLETE and t.values == [0.5, 777.0]
        assert t.user_attrs["reused_from"] == first.number
        assert t.user_attrs["arch_id"] == first.arch_id
        assert t.user_attrs["curve"] == trials[0].user_attrs["curve"]
    assert "b" not in d.running


def test_reuse_then_the_next_new_arch(make) -> None:
    d = make(space=TWO_ARCHS, n_trials=5, pruner=PruneNumbers({0}))
    study = d.store.study
    study.enqueue_trial({"s0.mixer": "dwconv"})
    first = _run(d, "a", [0.2, 0.3, 0.4])  # pruned at rung 1
    assert _trial(d, first.number).state == TrialState.PRUNED
    study.enqueue_trial({"s0.mixer": "dwconv"})  # proposed again
    study.enqueue_trial({"s0.mixer": "mhsa"})
    nxt = _payload(d.next_config("b"))
    assert nxt.number == 2 and nxt.arch["stages"][0]["mixer"] == "mhsa"
    copy = _trial(d, 1)
    assert copy.state == TrialState.PRUNED and copy.user_attrs["reused_from"] == 0
    assert copy.user_attrs["pruned_at"] == 1 and copy.user_attrs["arch_id"] == first.arch_id
    assert d.added == 3


# ---------------------------------------------------------------------------------------------- infeasible
def test_infeasible_samples_fail_and_do_not_count(make) -> None:
    d = make(space=SOMETIMES_INFEASIBLE, n_trials=1)
    study = d.store.study
    study.enqueue_trial({"s0.mixer": "cska", "s0.dim": 32, "s0.cska.heads": 3})
    study.enqueue_trial({"s0.mixer": "cska", "s0.dim": 48, "s0.cska.heads": 3})
    p = _payload(d.next_config("a"))
    assert p.number == 1 and p.arch["stages"][0]["dim"] == 48
    bad = _trial(d, 0)
    assert bad.state == TrialState.FAIL and bad.user_attrs["infeasible"] is True
    assert bad.user_attrs["failure"].startswith("infeasible: ") and "heads 3" in bad.user_attrs["failure"]
    assert d.added == 1
    assert d.next_config("b") == FINISHED and len(study.trials) == 2  # budget used: nothing more asked


def test_consecutive_infeasible_samples_stop_the_run_with_a_reason(make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops_mod, "MAX_CONSECUTIVE_REJECTS", 4)
    tiny = {**TWO_ARCHS, "name": "tiny", "constraints": {"max_params": 10}}
    d = make(space=tiny, n_trials=None)
    assert d.next_config("a") == FINISHED and d.stop_is_error and d.added == 0
    assert "the last 4 proposals were all infeasible" in d.stop_reason and "relax constraints" in d.stop_reason
    assert d.next_config("b") == FINISHED  # stays stopped: no more FAIL rows
    trials = d.store.study.trials
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert all(" > max_params 10" in t.user_attrs["failure"] for t in trials)


def test_rejections_are_counted_across_calls_and_reset_by_a_trial(make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops_mod, "MAX_CONSECUTIVE_REJECTS", 3)
    d = make(space=SOMETIMES_INFEASIBLE, n_trials=None)
    study = d.store.study
    bad, good = {"s0.mixer": "cska", "s0.dim": 32, "s0.cska.heads": 3}, {"s0.mixer": "dwconv", "s0.dim": 32}
    for params in (bad, bad, good, bad, bad, {**good, "s0.dim": 48}):
        study.enqueue_trial(params)
    assert _payload(d.next_config("a")).number == 2  # two rejects, then a trial: the count starts again
    assert _payload(d.next_config("b")).number == 5 and d.stop_reason is None
    for _ in range(3):
        study.enqueue_trial(bad)
    assert d.next_config("c") == FINISHED and d.stop_is_error


def test_an_architecture_in_training_is_waited_for_not_trained_twice(make) -> None:
    d = make(space=ONE_ARCH, n_trials=3)
    first = _payload(d.next_config("a"))
    assert d.next_config("b") == FINISHED  # the 2 later proposals are the same arch: they wait, budget spent
    waiting = [t for t in d.store.study.trials if t.number != first.number]
    assert [t.state for t in waiting] == [TrialState.RUNNING] * 2
    assert all(t.user_attrs["waiting_for"] == first.number for t in waiting)
    assert list(d.running) == ["a"]  # only one trial was handed to Tune
    for epoch, acc in enumerate([0.3, 0.4, 0.5], 1):
        d.on_result("a", _result(first, epoch, acc, tp=321.0))
    d.on_complete("a")
    for t in d.store.study.trials:
        assert t.state == TrialState.COMPLETE and t.values == [0.5, 321.0]
    assert [t.user_attrs.get("reused_from") for t in d.store.study.trials] == [None, 0, 0]


def test_waiters_of_an_unfinished_trial_fail_without_a_second_retry(make) -> None:
    d = make(space=ONE_ARCH, n_trials=2)
    first = _payload(d.next_config("a"))
    assert d.next_config("b") == FINISHED
    assert sorted(d.finish()) == [0, 1]
    states = {t.number: (t.state, t.user_attrs.get("failure", "")) for t in d.store.study.trials}
    assert states[first.number][0] == TrialState.FAIL and "queued again" in states[first.number][1]
    assert states[1][0] == TrialState.FAIL and "waited for trial 0" in states[1][1]
    queued = d.store.study.get_trials(states=(TrialState.WAITING,))
    assert [w.user_attrs["retry_of"] for w in queued] == [first.number]  # one retry, not one per waiter


def test_an_exhausted_space_stops_sampling_without_error(make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops_mod, "MAX_CONSECUTIVE_REUSES", 3)
    d = make(space=ONE_ARCH, n_trials=None)
    _run(d, "a", [0.3, 0.4, 0.5])
    assert d.next_config("b") == FINISHED and not d.stop_is_error
    assert "having tried 1 distinct architectures: the space looks exhausted" in d.stop_reason and d.added == 4
    assert [t.user_attrs.get("reused_from") for t in d.store.study.trials] == [None, 0, 0, 0]


# ---------------------------------------------------------------------------------------------- recovery
def test_recover_stale_fails_and_requeues_once(make) -> None:
    old = make(name="rec")
    live = make(name="rec")
    stale = _payload(old.next_config("s"))
    running = _payload(live.next_config("l"))
    study = old.store.study
    study.set_user_attr(f"heartbeat:{old.store.driver_id}", time.time() - 3600)  # stopped beating an hour ago
    live.store._write_heartbeat()

    new = make(name="rec")
    assert new.store.recover_stale() == [stale.number]
    t = _trial(new, stale.number)
    assert t.state == TrialState.FAIL and t.user_attrs["failure"].startswith("interrupted")
    assert _trial(new, running.number).state == TrialState.RUNNING  # a live driver's trial is left alone
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == stale.number
    assert waiting[0].system_attrs["fixed_params"] == t.params
    assert new.store.recover_stale() == []  # idempotent
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1

    retry = _payload(new.next_config("r"))  # the retry is the next trial and has the same architecture
    assert retry.arch_id == stale.arch_id
    assert _trial(new, retry.number).user_attrs["retry_of"] == stale.number
    # a retry that is interrupted again (its driver never beat) is failed but not queued a third time
    later = make(name="rec")
    assert later.store.recover_stale() == [retry.number]
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_a_planned_trial_killed_before_its_arch_was_recorded_is_not_planned_twice(make) -> None:
    """The kill can land between the driver taking a planned trial off the queue and recording its arch_id (a
    validation killed right after it started its next architecture): the retry must still count as that plan."""
    from nas.engine.lifecycle import enqueue_missing

    old = make(name="plan")
    wanted = [("arch-a", {"s0.mixer": "dwconv"}, {}), ("arch-b", {"s0.mixer": "mhsa"}, {})]
    assert enqueue_missing(old.store.study, wanted) == 2
    taken = old.store.life.start()  # off the queue, RUNNING, arch_id not recorded yet
    assert "arch_id" not in taken.user_attrs and taken.user_attrs["planned_arch"] == "arch-a"
    old.store.study.set_user_attr(f"heartbeat:{old.store.driver_id}", time.time() - 3600)

    new = make(name="plan")
    assert new.store.recover_stale() == [taken.number]
    assert enqueue_missing(new.store.study, wanted) == 2, "the retry and the other plan: nothing queued again"
    waiting = new.store.study.get_trials(states=(TrialState.WAITING,))
    assert sorted(w.user_attrs["planned_arch"] for w in waiting) == ["arch-a", "arch-b"]


def test_recover_stale_trial_of_a_dead_local_process(make) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{int(proc.stdout)}:cafe00"
    d = make(name="dead")
    d.store.driver_id = dead
    p = _payload(d.next_config("a"))
    d.store._write_heartbeat()  # a fresh heartbeat, but its process is gone
    other = make(name="dead")
    assert other.store.recover_stale() == [p.number]


def test_finish_fails_and_requeues_unfinished(make) -> None:
    d = make(space=SOMETIMES_INFEASIBLE, n_trials=5)
    for params in ({"s0.dim": 32}, {"s0.dim": 48}, {"s0.mixer": "cska", "s0.dim": 48, "s0.cska.heads": 2}):
        d.store.study.enqueue_trial({"s0.mixer": "dwconv", **params})  # three different architectures
    done = _run(d, "a", [0.1, 0.2, 0.3])
    b = _payload(d.next_config("b"))
    c = _payload(d.next_config("c"))
    d.on_result("c", _result(c, 1, 0.2))
    assert sorted(d.finish()) == [b.number, c.number]
    assert _trial(d, done.number).state == TrialState.COMPLETE
    study = d.store.study
    for n in (b.number, c.number):
        t = _trial(d, n)
        assert t.state == TrialState.FAIL and "queued again" in t.user_attrs["failure"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(w.user_attrs["retry_of"] for w in waiting) == [b.number, c.number]
    assert d.finish() == []  # everything is told now


# ---------------------------------------------------------------------------------------------- cache
def test_throughput_cached_once_per_arch_and_offered_to_later_trials(make) -> None:
    d = make(n_trials=10)
    study = d.store.study
    study.enqueue_trial({"s0.mixer": "dwconv"})
    a = _payload(d.next_config("a"))
    assert a.cached_throughput == {}
    for e in (1, 2):
        d.on_result("a", _result(a, e, 0.3, tp=1234.5))
    d.on_result("a", {"epoch": 2, "failed": "killed"})
    d.on_complete("a")
    rows = _rows(d)
    assert len(rows) == 1 and rows[0].arch_id == a.arch_id and rows[0].device == DEVICE
    # the same architecture again (its first trial failed, so nothing to reuse): measured value offered
    study.enqueue_trial({"s0.mixer": "dwconv"})
    b = _payload(d.next_config("b"))
    key = f"{a.arch_id}|{DEVICE}|b64|16x16|fp32|none"
    assert b.arch_id == a.arch_id and b.cached_throughput[key]["median"] == 1234.5
    assert "cached" not in b.cached_throughput[key]
    for e in (1, 2, 3):
        d.on_result("b", _result(b, e, 0.5))
    d.on_complete("b")
    assert _trial(d, b.number).values == [0.5, 1234.5]
    assert len(_rows(d)) == 1  # a cached hit is not stored again
    study.enqueue_trial({"s0.mixer": "mhsa"})
    _run(d, "c", [0.1, 0.2, 0.3], tp=400.0)
    assert sorted(r.arch_id for r in _rows(d)) == sorted([a.arch_id, d.store.frozen(2).user_attrs["arch_id"]])


# ---------------------------------------------------------------------------------------------- store
def test_existing_study_with_other_directions_is_refused(make) -> None:
    d = make(name="dirs")
    _run(d, "a", [0.1, 0.2, 0.3])
    again = make(name="dirs")  # same objectives: continues the same study
    assert len(again.store.study.trials) == 1
    with pytest.raises(StudyError, match=r"study 'dirs' already exists .* directions \['maximize', 'maximize'\]"):
        make(name="dirs", objectives=[{"name": "accuracy"}, {"name": "params"}])


def test_study_attributes_follow_storage_doc(make) -> None:
    d = make(name="attrs")
    attrs = d.store.study.user_attrs
    assert attrs["nas_version"] == 1
    assert attrs["objectives"] == [
        {"name": "accuracy", "direction": "maximize"},
        {"name": "throughput", "direction": "maximize"},
    ]
    assert attrs["space"]["name"] == "two" and attrs["space_hash"] == d.space.space_hash()
    assert attrs["config"]["name"] == "attrs" and {"torch", "optuna"} <= set(attrs["versions"])
    p = _run(d, "a", [0.1, 0.2, 0.3])
    t = _trial(d, p.number)
    for key in ("arch", "arch_id", "placement", "curve", "fidelity", "full_fidelity", "throughput", "params", "flops"):
        assert key in t.user_attrs, key
    assert t.user_attrs["params"] > 0 and t.user_attrs["flops"] > 0


def test_make_pruner_pareto_in_the_loop(make) -> None:
    """The real MO-ASHA pruner through the driver: a trial dominated at rung 1 is stopped there."""
    d = make(name="asha", pruner_cfg={"name": "pareto", "eta": 3, "min_trials": 1})
    d.pruner = make_pruner(d.cfg)
    assert d.cfg.pruner.name == "pareto"
    d.store.study.enqueue_trial({"s0.mixer": "dwconv"})
    d.store.study.enqueue_trial({"s0.mixer": "mhsa"})
    good = _run(d, "a", [0.6, 0.7, 0.8], tp=2000.0)
    bad = _run(d, "b", [0.3, 0.4, 0.5], tp=1000.0)  # dominated at rung 1 by the good one; max(1, 2 // 3) kept
    assert _trial(d, good.number).state == TrialState.COMPLETE
    tb = _trial(d, bad.number)
    assert tb.state == TrialState.PRUNED and tb.user_attrs["pruned_at"] == 1


def test_epoch_report_reads_back_from_tunes_flat_and_nested_forms() -> None:
    """Tune hands schedulers/searchers a flattened result ('throughput/median') and callbacks the nested one."""
    from ray.tune.utils import flatten_dict

    tp = {"key": "k", "median": 12.5, "values": [12.0, 13.0], "resolution": [28, 28], "cached": False}
    ph = {"start_s": 1.5, "measure_s": 0.25, "epochs_s": 4.0, "worker_trial": 2}
    sent = EpochReport(epoch=2, val_acc=0.5, val_loss=1.0, train_loss=1.1, seconds=2.0, images_per_s=9.0, throughput=tp,
                       phases=ph)  # fmt: skip
    wire = sent.to_result()
    assert all(not isinstance(v, dict) for v in wire.values())  # nothing for Tune to flatten
    nested = {k: v for k, v in wire.items() if not k.startswith(("throughput/", "phases/"))}
    nested |= {"throughput": tp, "phases": ph}
    for form in (wire, flatten_dict(dict(wire)), nested, {**wire, "done": True, "time_this_iter_s": 0.1}):
        assert EpochReport.from_result(form) == sent
    assert EpochReport.from_result({"done": True, "time_this_iter_s": 0.1}) is None
    payload = TrialPayload(1, {"a": 1}, "id", {}, {}, {}, "ckpt", 1.0)
    assert TrialPayload.from_config(payload.to_config()) == payload


def test_the_checkpoint_tune_persisted_is_recorded_on_the_complete_trial(make) -> None:
    d = make(n_trials=2)
    p = _payload(d.next_config("a"))
    for epoch in range(1, EPOCHS + 1):
        d.on_result("a", _result(p, epoch, 0.5))
    d.on_checkpoint("a", "s3://bucket/studies/drv/trial_a/checkpoint_000000")
    d.on_complete("a")
    assert _trial(d, p.number).user_attrs["checkpoint"] == "s3://bucket/studies/drv/trial_a/checkpoint_000000"
    assert "checkpoint_path" not in p.__dict__  # the worker decides nothing about where weights go


# ---------------------------------------------------------------------------------------------- several drivers
def test_an_architecture_another_driver_trains_is_waited_for_then_reused(make) -> None:
    a = make(space=ONE_ARCH, name="two_drivers", n_trials=1)
    b = make(space=ONE_ARCH, name="two_drivers", n_trials=1)
    first = _payload(a.next_config("a"))
    assert b.next_config("b") == FINISHED  # the same architecture: b waits instead of training it a second time
    waiter = next(t for t in b.store.study.trials if t.number != first.number)
    assert waiter.state == TrialState.RUNNING and waiter.user_attrs["waiting_for"] == first.number
    assert b.running == {} and list(b.foreign) == [first.number]
    for epoch, acc in enumerate([0.3, 0.4, 0.5], 1):
        a.on_result("a", _result(first, epoch, acc, tp=321.0))
    a.on_complete("a")
    b.settle()
    t = _trial(b, waiter.number)
    assert t.state == TrialState.COMPLETE and t.values == [0.5, 321.0] and t.user_attrs["reused_from"] == first.number
    assert b.foreign == {}


def test_a_waiter_on_a_killed_drivers_trial_is_failed_once_and_the_retry_trains(make) -> None:
    a = make(space=ONE_ARCH, name="killed", n_trials=1)
    b = make(space=ONE_ARCH, name="killed", n_trials=2)
    first = _payload(a.next_config("a"))
    assert b.next_config("b") == FINISHED
    a.store.study.set_user_attr(f"heartbeat:{a.store.driver_id}", time.time() - 3600)  # a stopped beating
    b.store._write_heartbeat()
    assert b.store.recover_stale() == [first.number]  # what b's heartbeat thread does at each beat
    b.finish()  # resolves the waiter: its source was interrupted, the source's retry covers the architecture
    states = {t.number: (t.state, t.user_attrs.get("failure", "")) for t in b.store.study.trials}
    assert states[first.number][0] == TrialState.FAIL and states[first.number][1].startswith("interrupted")
    assert next(s for n, s in states.items() if n != first.number and s[0] == TrialState.FAIL)[1].startswith(
        "interrupted: the trial it waited for"
    )
    retries = b.store.study.get_trials(states=(TrialState.WAITING,))
    assert [r.user_attrs["retry_of"] for r in retries] == [first.number]  # one retry, not one per waiter
    c = make(space=ONE_ARCH, name="killed", n_trials=1)
    retry = _payload(c.next_config("c"))  # the retry claims the architecture over from the failed trial: trains it
    assert retry.arch_id == first.arch_id and list(c.running) == ["c"]


def test_the_heartbeat_thread_recovers_while_the_driver_runs(make, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.engine import store as store_mod

    monkeypatch.setattr(store_mod, "HEARTBEAT_S", 0.05)
    a = make(name="live_recovery", n_trials=1)
    first = _payload(a.next_config("a"))
    a.store.study.set_user_attr(f"heartbeat:{a.store.driver_id}", time.time() - 3600)
    b = make(name="live_recovery", n_trials=1)
    b.store._beat = store_mod.threading.Thread(target=b.store._heartbeat_loop, daemon=True)
    b.store.start()
    deadline = time.time() + 20
    while _trial(b, first.number).state == TrialState.RUNNING and time.time() < deadline:
        time.sleep(0.05)
    assert _trial(b, first.number).state == TrialState.FAIL  # recovered without b restarting
    deadline = time.time() + 5
    while not b.store.recovered and time.time() < deadline:
        time.sleep(0.05)
    assert b.store.take_recovered() == [first.number] and b.store.take_recovered() == []


def test_an_interrupted_run_does_not_wait_for_another_drivers_trial(make) -> None:
    a = make(space=ONE_ARCH, name="ctrl_c", n_trials=1)
    b = make(space=ONE_ARCH, name="ctrl_c", n_trials=1)
    first = _payload(a.next_config("a"))
    assert b.next_config("b") == FINISHED
    waiter = next(t.number for t in b.store.study.trials if t.number != first.number)
    assert b.finish(wait_for_others=False) == [waiter]  # Ctrl-C: returns at once, a's trial still runs
    t = _trial(b, waiter)
    assert t.state == TrialState.FAIL and t.user_attrs["failure"].startswith("interrupted: the run ended while it")
    assert b.store.study.get_trials(states=(TrialState.WAITING,)) == []  # a's trial covers the architecture
    assert _trial(a, first.number).state == TrialState.RUNNING
