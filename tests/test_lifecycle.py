"""nas.engine.lifecycle: each transition on its own, with two drivers (two storages, two study objects) on one real
SQLite study; the creation sequence interleaved with another driver's recovery at every storage call."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from nas import layout
from nas.engine import lifecycle as lc
from nas.engine.lifecycle import INTERRUPTED, Lifecycle, create_tables, enqueue_missing
from nas.engine.optuna_adapter import OwnedStorage
from nas.engine.samplers import sampler_seed
from nas.trial_record import ATTRS, TrialRecord, encode

optuna.logging.set_verbosity(optuna.logging.WARNING)
DESC = TrialRecord(arch={"a": 1}, arch_id="arch-x", placement="x", train_key="k", params=10, flops=20)


def _driver(url: str, owner: str) -> Lifecycle:
    storage = layout.create_storage(url, OwnedStorage)
    study = optuna.create_study(study_name="life", storage=storage, directions=["maximize"], load_if_exists=True)
    create_tables(storage.engine)
    return Lifecycle(study, storage, storage.engine, owner, threading.RLock())


@pytest.fixture
def two(tmp_path: Path) -> tuple[Lifecycle, Lifecycle]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return _driver(url, "host:1:a"), _driver(url, "host:2:b")


def _only(owner: str) -> Any:
    return lambda o: o == owner  # the drivers that are live


def test_the_private_optuna_members_owned_storage_relies_on_exist() -> None:
    """OwnedStorage overrides/uses these; an Optuna release that changes them fails here, not in a study."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    assert list(inspect.signature(optuna.storages.RDBStorage._create_new_trial).parameters) == [
        "self", "study_id", "template_trial"]  # fmt: skip
    params = inspect.signature(optuna.storages.RDBStorage._set_trial_attr_without_commit).parameters
    assert list(params) == ["self", "session", "model_cls", "trial_id", "key", "value"]
    assert callable(_create_scoped_session) and hasattr(models.TrialModel, "find_or_raise_by_id")


def test_a_new_trial_and_a_claimed_queued_trial_are_owned_from_birth(two) -> None:
    a, b = two
    new = a.start()
    assert TrialRecord.of(a.frozen(new.number)).driver == "host:1:a"
    a.study.enqueue_trial({}, user_attrs=encode(dict(retry_of=7, planned_arch="arch-q")))
    claimed = b.start()
    attrs = TrialRecord.of(b.frozen(claimed.number))
    assert attrs.driver == "host:2:b" and attrs.retry_of == 7 and attrs.planned_arch == "arch-q"
    assert b.frozen(claimed.number).state == TrialState.RUNNING


def test_a_queued_trial_is_claimed_by_exactly_one_of_two_drivers(two) -> None:
    a, b = two
    a.study.enqueue_trial({}, user_attrs=encode(dict(planned_arch="arch-q")))
    trial_id = a.storage.get_all_trials(a.study_id, states=(TrialState.WAITING,))[0]._trial_id
    assert a.storage.set_trial_state_values(trial_id, TrialState.RUNNING) is True
    assert b.storage.set_trial_state_values(trial_id, TrialState.RUNNING) is False
    assert TrialRecord.of(a.storage.get_trial(trial_id)).driver == "host:1:a"  # the loser wrote nothing


@pytest.mark.parametrize("queued", [False, True], ids=["created", "claimed-from-queue"])
def test_recovery_interleaved_at_every_point_of_creation_fails_no_live_trial(two, queued: bool) -> None:
    """Driver b recovers (treating every ownerless RUNNING trial as stale at once) before and after each storage
    call driver a makes while it creates or claims a trial, describes it and claims its architecture."""
    a, b = two
    if queued:
        a.study.enqueue_trial({}, user_attrs=encode(dict(planned_arch="arch-x")))
    points = _interleave(a.storage, lambda: b.recover(_only("host:1:a"), stale_after_s=0.0))
    trial = a.start()
    a.describe(trial.number, DESC)
    assert a.claim_arch("arch-x", "k", trial.number) is None
    points.stop()
    assert points.calls >= 4, "the interleaving reached the creation sequence"
    t = a.frozen(trial.number)
    assert t.state == TrialState.RUNNING and TrialRecord.of(t).failure is None
    assert a.study.get_trials(states=(TrialState.WAITING,)) == []  # no retry of a live trial was queued


def test_the_same_interleaving_catches_an_owner_written_after_creation(two) -> None:
    """The control: creating the trial and writing its owner in two steps (what the engine did before) lets the
    interleaved recovery fail a live trial — the test above can fail."""
    a, b = two
    a.storage.owner = None  # plain RDBStorage behaviour
    points = _interleave(a.storage, lambda: b.recover(_only("host:1:a"), stale_after_s=0.0))
    trial = a.study.ask()
    with pytest.raises(UpdateFinishedTrialError):  # the crash seen in CI: the live driver writes to a failed trial
        a.storage.set_trial_user_attr(trial._trial_id, "driver", "host:1:a")
    points.stop()
    assert a.frozen(trial.number).state == TrialState.FAIL


class _interleave:
    """Run ``hook`` before and after every public method call on ``storage`` (the driver's storage calls)."""

    def __init__(self, storage: Any, hook: Any) -> None:
        self.storage, self.calls, self.saved = storage, 0, {}
        busy = [False]
        for name in ("_create_new_trial", "set_trial_state_values", "set_trial_user_attr", "get_trial",
                     "get_all_trials", "set_trial_param", "get_trial_id_from_study_id_trial_number"):  # fmt: skip
            real = getattr(storage, name)
            self.saved[name] = real

            def wrapped(*args: Any, _real: Any = real, **kw: Any) -> Any:
                if busy[0]:
                    return _real(*args, **kw)
                busy[0] = True
                try:
                    self.calls += 1
                    hook()
                    out = _real(*args, **kw)
                    hook()
                    return out
                finally:
                    busy[0] = False

            setattr(storage, name, wrapped)

    def stop(self) -> None:
        for name, real in self.saved.items():
            setattr(self.storage, name, real)


def test_recovery_fails_a_dead_drivers_trial_once_and_queues_one_retry(two, tmp_path: Path) -> None:
    a, b = two
    trial = a.start()
    a.describe(trial.number, DESC)
    c = _driver(f"sqlite:///{tmp_path / 'study.db'}", "host:3:c")
    nobody_live = _only("nobody")
    assert b.recover(nobody_live, 60.0) == [trial.number]
    assert c.recover(nobody_live, 60.0) == []  # already failed: the second recoverer does nothing
    t = b.frozen(trial.number)
    assert t.state == TrialState.FAIL and TrialRecord.of(t).failure.startswith(INTERRUPTED)
    retries = b.study.get_trials(states=(TrialState.WAITING,))
    assert [TrialRecord.of(r).retry_of for r in retries] == [trial.number]
    assert TrialRecord.of(retries[0]).planned_arch == "arch-x"
    # the dead driver's late writes are dropped with a warning, not raised
    with pytest.warns(UserWarning, match="already finished by another driver"):
        assert a.record_epoch(trial.number, [{"epoch": 1, "val_acc": 0.5}]) is False
    with pytest.warns(UserWarning, match="already finished by another driver"):
        assert a.finish(trial.number, TrialState.COMPLETE, [0.5], {}) is False


def test_an_ownerless_running_trial_is_left_alone_while_young(two) -> None:
    a, b = two
    a.storage.owner = None
    trial = a.study.ask()  # as written by a version that set the owner afterwards
    assert b.recover(_only("nobody"), stale_after_s=60.0) == []
    assert b.recover(_only("nobody"), stale_after_s=0.0) == [trial.number]


def test_a_retry_is_never_retried_again(two) -> None:
    a, b = two
    trial = a.start()
    assert b.recover(_only("nobody"), 60.0) == [trial.number]
    retry = b.start()
    assert TrialRecord.of(b.frozen(retry.number)).retry_of == trial.number
    assert a.recover(_only("nobody"), 60.0) == [retry.number]
    assert a.study.get_trials(states=(TrialState.WAITING,)) == []


def test_claim_arch_one_trainer_then_wait_then_reuse_then_takeover_after_a_failure(two) -> None:
    a, b = two
    first, second = a.start(), b.start()
    assert a.claim_arch("arch-x", "k", first.number) is None  # a trains it
    holder = b.claim_arch("arch-x", "k", second.number)
    assert holder is not None and holder.number == first.number and holder.state == TrialState.RUNNING
    assert b.claim_arch("arch-x", "other-training", second.number) is None  # another training: another claim
    a.finish(first.number, TrialState.COMPLETE, [0.5], {})
    assert b.claim_arch("arch-x", "k", second.number).state == TrialState.COMPLETE  # reuse it
    third, fourth = a.start(), b.start()
    assert a.claim_arch("arch-y", "k", third.number) is None
    a.interrupt(third.number, "the run ended", retry=False)
    assert b.claim_arch("arch-y", "k", fourth.number) is None  # the holder failed: b takes the architecture over
    assert a.claim_arch("arch-y", "k", a.start().number).number == fourth.number


def test_interrupt_and_reject_and_reuse(two) -> None:
    a, _ = two
    source = a.start()
    a.describe(source.number, DESC)
    a.record_epoch(source.number, [{"epoch": 1, "val_acc": 0.4}, {"epoch": 2, "val_acc": 0.5}])
    a.finish(source.number, TrialState.COMPLETE, [0.5], dict(full_fidelity=True, fidelity=2))
    copy = a.start()
    a.wait(copy.number, DESC, source.number)
    assert TrialRecord.of(a.frozen(copy.number)).waiting_for == source.number
    a.reuse(copy.number, DESC, a.frozen(source.number))
    t = TrialRecord.of(a.frozen(copy.number))
    assert t.reused_from == source.number and t.is_copy and t.curve_rows[-1]["val_acc"] == 0.5
    assert a.frozen(copy.number).values == [0.5]
    rejected = a.start()
    a.reject(rejected.number, "too big")
    r = TrialRecord.of(a.frozen(rejected.number))
    assert r.infeasible and r.failure == "infeasible: too big"
    ended = a.start()
    a.interrupt(ended.number, "the run ended")
    assert [TrialRecord.of(w).retry_of for w in a.study.get_trials(states=(TrialState.WAITING,))] == [ended.number]


def test_three_drivers_deciding_on_the_same_replicate_at_once_queue_it_once(tmp_path: Path) -> None:
    """Issue 30: racing drivers that pick the same replicate at the same moment each queued a copy (7-8 % of a
    3-driver run's trials); the unique claim row lets exactly one queue it, and another replicate index is free."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    lives = [_driver(url, f"host:{i}:d") for i in range(3)]
    source = lives[0].start()
    lives[0].describe(source.number, DESC)
    lives[0].finish(source.number, TrialState.COMPLETE, [0.5], dict(full_fidelity=True, fidelity=2))
    frozen = lives[0].frozen(source.number)
    barrier, queued = threading.Barrier(3), []

    def decide(life: Lifecycle) -> None:
        barrier.wait()
        queued.append(life.enqueue_replicate(frozen, 1))

    threads = [threading.Thread(target=decide, args=(life,)) for life in lives]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(queued) == [False, False, True]
    waiting = lives[1].study.get_trials(states=(TrialState.WAITING,))
    assert [(TrialRecord.of(t).planned_arch, TrialRecord.of(t).replicate) for t in waiting] == [("arch-x", 1)]
    assert lives[2].enqueue_replicate(frozen, 2) is True  # the next seed is another replicate


def test_enqueue_missing_plans_only_what_is_neither_done_nor_queued(two) -> None:
    a, _ = two
    wanted = [("arch-a", {}, {}), ("arch-b", {}, dict(validates=3))]
    assert enqueue_missing(a.study, wanted) == 2
    assert enqueue_missing(a.study, wanted) == 2  # nothing queued twice
    plans = sorted((TrialRecord.of(t).planned_arch, TrialRecord.of(t).validates) for t in a.study.trials)
    assert plans == [("arch-a", None), ("arch-b", 3)]


def test_attribute_names_are_checked() -> None:
    assert "driver" in ATTRS and encode(dict(arch_id="x")) == {"arch_id": "x"}
    with pytest.raises(KeyError, match="not trial attributes"):
        encode({"arch-id": "x"})
    assert TrialRecord.from_mapping({"arch_id": "x", "unknown": 1}).arch_id == "x"


def test_lifecycle_refuses_a_storage_that_cannot_own_trials_at_birth(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'plain.db'}")
    study = optuna.create_study(study_name="p", storage=storage)
    with pytest.raises(TypeError, match="OwnedStorage"):
        Lifecycle(study, storage, storage.engine, "me", threading.RLock())


def test_each_driver_of_a_study_samples_its_own_stream() -> None:
    assert sampler_seed(5, 12) == 17  # the first driver: as a lone driver always was
    seeds = {sampler_seed(5, 0, stream) for stream in range(50)}
    assert len(seeds) == 50  # drivers that start together (same trials stored) differ
    assert sampler_seed(5, 0, 3) == sampler_seed(5, 0, 3)  # and each is reproducible


def test_create_tables_is_safe_when_drivers_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loser of the race sees the winner's tables half-made (an IntegrityError in PostgreSQL's catalogue): it
    retries and finds them there."""
    import sqlalchemy as sa

    engine = layout.create_engine(f"sqlite:///{tmp_path / 't.db'}")
    real, calls = lc.METADATA.create_all, []

    def racing(bind: Any, *args: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            real(bind, *args, **kw)  # the winner made them meanwhile
            raise sa.exc.IntegrityError("CREATE TABLE", {}, Exception("duplicate key value violates pg_type"))
        real(bind, *args, **kw)

    monkeypatch.setattr(lc.METADATA, "create_all", racing)
    create_tables(engine)
    assert len(calls) == 2 and "nas_arch_claims" in sa.inspect(engine).get_table_names()
