"""A trial's lifecycle: its states and transitions, the only code that writes a trial's state and attributes.

Optuna stores the state (WAITING, RUNNING, COMPLETE, PRUNED, FAIL); the engine's knowledge of a trial lives in its
user attributes, typed and named in :mod:`nas.trial_record`. Several drivers may share one study (PostgreSQL), so
every transition below states its precondition and is safe against the others:

====================  =========================  ==========================================================
transition            from -> to                 precondition / what makes it safe
====================  =========================  ==========================================================
``start``             (new) or WAITING -> RUNNING  created or claimed with its owner in one transaction
                                                   (:class:`~nas.engine.optuna_adapter.OwnedStorage`)
``describe``          RUNNING                    ours; the sampled architecture's description
``claim_arch``        RUNNING                    described; one trainer per (study, training, arch) — a
                                                   unique row in ``nas_arch_claims``, taken over only from a
                                                   trial that failed
``wait``              RUNNING                    described; another RUNNING trial trains the same arch
``reuse``             RUNNING -> source's state  described; the source finished (a copy, not an evaluation)
``record`` / ``record_epoch``  RUNNING           ours, training
``finish``            RUNNING -> COMPLETE/PRUNED/FAIL  ours
``reject``            RUNNING -> FAIL            ours; infeasible sample, never trained
``interrupt``         RUNNING -> FAIL (+ retry)  ours; the run ends before the trial does
``recover``           RUNNING -> FAIL (+ retry)  another driver's, whose heartbeat stopped; compare-and-set
                                                   on the state: exactly one driver fails it and queues its
                                                   one retry
``enqueue_retry``     (new) WAITING              never a retry of a retry; carries the architecture (and
                                                   a replicate's seed)
``enqueue_replicate`` (new) WAITING              a seed replicate of an evaluated architecture (racing);
                                                   queued once across drivers: a unique row in
                                                   ``nas_replicate_claims`` is taken first
``enqueue_missing``   (new) WAITING              a sub-study's plan: what is neither done nor queued
====================  =========================  ==========================================================

A write to one of *our* trials that another driver has already failed (its heartbeat looked stale) is dropped
with a warning instead of crashing the driver: the other driver's retry owns that work now.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.engine.optuna_adapter import OwnedStorage
from nas.errors import StudyError
from nas.trial_record import COPIED, DESCRIPTION, TrialRecord, encode, pick

INTERRUPTED = "interrupted"  # the first word of the failure of a trial whose run or driver ended under it
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
METADATA = sa.MetaData()  # the project's own tables (nas_*), beside Optuna's; more are defined in store.py
ARCH_CLAIMS = sa.Table(
    "nas_arch_claims",
    METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("train_key", sa.String(64), primary_key=True),
    sa.Column("arch_id", sa.String(64), primary_key=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
)
REPLICATE_CLAIMS = sa.Table(  # one row per seed replicate queued: several racing drivers queue it once
    "nas_replicate_claims",
    METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("arch_id", sa.String(64), primary_key=True),
    sa.Column("replicate", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
)


class Lifecycle:
    """The transitions of one study's trials, as one driver (``owner``) makes them (see the module docstring).

    ``lock`` serialises this process's writes (the driver's thread and its heartbeat thread).
    """

    def __init__(self, study: optuna.Study, storage: Any, engine: sa.engine.Engine, owner: str, lock: Any) -> None:
        if not isinstance(storage, (OwnedStorage, optuna.storages.InMemoryStorage)):
            raise TypeError(
                "Lifecycle needs an OwnedStorage (nas.engine.optuna_adapter: trials owned from birth) or, for one "
                f"process alone, an InMemoryStorage; got {type(storage).__name__}"
            )
        self.study, self.storage, self.engine, self.owner, self.lock = study, storage, engine, owner, lock
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self._owner_attrs = encode(dict(driver=owner))
        if isinstance(storage, OwnedStorage):
            storage.owner = self._owner_attrs

    # ------------------------------------------------------------------------------------------ reading
    def frozen(self, number: int) -> FrozenTrial:
        """The trial ``number`` of this study as stored now (read from the storage, not a cache)."""
        return self.storage.get_trial(self._id(number))

    def _id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def find_reusable(self, arch_id: str, train_key: str) -> FrozenTrial | None:
        """A finished trial (COMPLETE, or PRUNED at a rung) that trained this architecture under this training."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            a = TrialRecord.of(t)
            if a.arch_id == arch_id and a.train_key == train_key and not a.is_copy:
                return t
        return None

    # ------------------------------------------------------------------------------------------ our trials
    def start(self) -> optuna.Trial:
        """(new) or WAITING -> RUNNING, owned by us from the first moment (OwnedStorage); a queued trial first."""
        with self.lock:
            trial = self.study.ask()
        if not isinstance(self.storage, OwnedStorage):  # in memory: no other process can see it before this
            self._write(trial.number, self._owner_attrs)
        return trial

    def describe(self, number: int, description: TrialRecord, **more: Any) -> bool:
        """RUNNING, ours: the sampled architecture (``DESCRIPTION`` fields), plus ``more`` (e.g. ``waiting_for``)."""
        return self._write(number, {**pick(description.stored(), DESCRIPTION), **more})

    def wait(self, number: int, description: TrialRecord, source: int) -> bool:
        """RUNNING, ours: the same architecture is being trained by trial ``source``; this one copies it later."""
        return self.describe(number, description, waiting_for=source)

    def record(self, number: int, **attrs: Any) -> bool:
        """RUNNING, ours: measurements (throughput and where it was measured)."""
        return self._write(number, attrs)

    def record_epoch(self, number: int, curve: list[dict[str, Any]]) -> bool:
        """RUNNING, ours: the learning curve so far, also as intermediate values (optuna-dashboard draws them)."""
        if not self._write(number, dict(curve=curve, fidelity=curve[-1]["epoch"] if curve else 0)):
            return False
        if curve:
            with self.lock:
                self.storage.set_trial_intermediate_value(self._id(number), curve[-1]["epoch"], curve[-1]["val_acc"])
        return True

    def reject(self, number: int, reason: str) -> bool:
        """RUNNING -> FAIL: an infeasible sample, never trained (not counted against the budget)."""
        return self.finish(number, TrialState.FAIL, None, dict(failure="infeasible: " + reason, infeasible=True))

    def reuse(self, number: int, description: TrialRecord, source: FrozenTrial) -> bool:
        """RUNNING -> the source's state: a copy of a finished trial's result (``reused_from``), not an evaluation."""
        attrs = {**pick(description.stored(), DESCRIPTION), **pick(source.user_attrs, COPIED)}
        if source.state == TrialState.FAIL:
            why = TrialRecord.of(source).failure or "?"
            attrs.update(failure=f"same architecture as trial {source.number}, which failed: {why}")
        attrs.update(reused_from=source.number)
        return self.finish(number, source.state, source.values, attrs)

    def finish(self, number: int, state: TrialState, values: list[float] | None, attrs: dict[str, Any]) -> bool:
        """RUNNING -> COMPLETE (with ``values``), PRUNED or FAIL, with its final attributes. False if another
        driver had already failed it (stale heartbeat)."""
        if not self._write(number, attrs):
            return False
        with self.lock:
            try:
                self.study.tell(number, values if state == TrialState.COMPLETE else None, state=state)
            except (UpdateFinishedTrialError, ValueError) as e:  # Study.tell: ValueError for a finished trial
                if not self.frozen(number).state.is_finished():
                    raise
                _dropped(number, e)
                return False
        return True

    def interrupt(self, number: int, why: str, retry: bool = True) -> bool:
        """RUNNING -> FAIL because the run ends before the trial does; with ``retry``, its one retry is queued."""
        frozen = self.frozen(number)
        told = self.finish(number, TrialState.FAIL, None, dict(failure=f"{INTERRUPTED}: {why}"))
        if told and retry:
            self.enqueue_retry(frozen)
        return told

    def _write(self, number: int, attrs: dict[str, Any]) -> bool:
        trial_id = self._id(number)
        with self.lock:
            try:
                for k, v in encode(attrs).items():
                    self.storage.set_trial_user_attr(trial_id, k, v)
            except UpdateFinishedTrialError as e:
                _dropped(number, e)
                return False
        return True

    # ------------------------------------------------------------------------------------------ architectures
    def claim_arch(self, arch_id: str, train_key: str, number: int) -> FrozenTrial | None:
        """Make trial ``number`` the one trainer of ``arch_id`` in this study, across drivers. Returns None when it
        is (train it), else the trial that holds the architecture: RUNNING (wait for it) or finished (reuse it).
        A holder that FAILed is replaced, compare-and-set, so only one of several claimants trains it again."""
        key = (ARCH_CLAIMS.c.study_id == self.study_id) & (ARCH_CLAIMS.c.train_key == train_key)
        key &= ARCH_CLAIMS.c.arch_id == arch_id
        engine = self.engine
        for _ in range(20):
            try:
                with engine.begin() as c:
                    row = dict(study_id=self.study_id, train_key=train_key, arch_id=arch_id, trial_number=number)
                    c.execute(sa.insert(ARCH_CLAIMS).values(**row))
                return None
            except sa.exc.IntegrityError:
                pass
            with engine.connect() as c:
                holder = c.execute(sa.select(ARCH_CLAIMS.c.trial_number).where(key)).scalar()
            if holder is None or holder == number:
                continue
            held = self.frozen(holder)
            if held.state != TrialState.FAIL:
                return held
            with engine.begin() as c:
                taken = c.execute(sa.update(ARCH_CLAIMS).where(key & (ARCH_CLAIMS.c.trial_number == holder))
                                  .values(trial_number=number)).rowcount  # fmt: skip
            if taken == 1:
                return None
        raise StudyError(f"study '{self.study.study_name}': could not claim architecture {arch_id} (20 tries)")

    # ------------------------------------------------------------------------------------------ others' trials
    def recover(self, is_live: Callable[[str], bool], stale_after_s: float) -> list[int]:
        """Fail every RUNNING trial whose owner is not live (and an ownerless one older than ``stale_after_s``:
        a study written before owners were set at birth) and queue its one retry. Compare-and-set on the state:
        when several drivers recover at once, each trial is failed, and retried, by exactly one. ``is_live`` is
        asked after the trials are read, so a driver that started since is known. Returns the trials failed."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        failed = []
        for t in running:
            owner = TrialRecord.of(t).driver
            if owner == self.owner:
                continue
            if owner is None:
                started = t.datetime_start.timestamp() if t.datetime_start else 0.0
                if time.time() - started < stale_after_s:
                    continue
            elif is_live(owner):
                continue
            if self._fail_stale(t):
                failed.append(t.number)
        return failed

    def _fail_stale(self, t: FrozenTrial) -> bool:
        why = f"{INTERRUPTED}: its driver stopped (killed or crashed) while it ran"
        trial_id = self._id(t.number)
        with self.lock:
            try:
                for k, v in encode(dict(failure=why)).items():
                    self.storage.set_trial_user_attr(trial_id, k, v)
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                return False  # finished meanwhile: by its owner, or by another driver's recovery
        self.enqueue_retry(t)
        return True

    def enqueue_replicate(self, source: FrozenTrial, k: int) -> bool:
        """(new) -> WAITING: the ``k``-th seed replicate of the architecture ``source`` evaluated (same parameters,
        training seed ``train.seed + k``), unless another driver queued it already: the queueing is claimed by a
        unique row (study, architecture, k), so racing drivers that decide on the same replicate at once queue it
        once (before, each queued its own copy and all but one became reuses: 7-8 % of a 3-driver run's trials).
        A queued replicate that fails is retried once by the lifecycle (``enqueue_retry``), never re-queued here.
        Returns whether this driver queued it."""
        a = TrialRecord.of(source)
        row = dict(study_id=self.study_id, arch_id=a.arch_id, replicate=k, owner=self.owner)
        try:
            with self.engine.begin() as c:
                c.execute(sa.insert(REPLICATE_CLAIMS).values(**row))
        except sa.exc.IntegrityError:
            return False
        attrs = encode(dict(planned_arch=a.arch_id, replicate=k, replicate_of=a.replicate_of or source.number))
        with self.lock:
            self.study.enqueue_trial(dict(source.params), user_attrs=attrs, skip_if_exists=False)
        return True

    def enqueue_retry(self, t: FrozenTrial) -> None:
        """Queue one retry of an interrupted trial (never a retry of a retry); it carries the architecture it
        retrains (``planned_arch``), so a sub-study's plan does not queue that architecture a second time. A trial
        killed after it left the queue but before its ``arch_id`` was recorded still has its plan's
        ``planned_arch``: that one is carried over."""
        a = TrialRecord.of(t)
        if a.retry_of is None:
            attrs = encode(dict(retry_of=t.number, planned_arch=a.arch_id or a.planned_arch))
            if a.replicate is not None:  # a replicate's retry trains the same seed of the same architecture
                attrs.update(replicate=a.replicate, replicate_of=a.replicate_of)
            with self.lock:
                self.study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)


def _dropped(number: int, e: Exception) -> None:
    warnings.warn(
        f"trial {number} was already finished by another driver (its heartbeat looked stale): {e}; this driver's "
        "write was dropped",
        stacklevel=3,
    )


def create_tables(engine: sa.engine.Engine, metadata: sa.MetaData = METADATA) -> None:
    """Create the project's own tables; several drivers starting on an empty database race to create them (a
    unique violation in PostgreSQL's catalogue for all but one): the losers find them made and go on."""
    for attempt in range(5):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def enqueue_missing(study: optuna.Study, wanted: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> int:
    """(new) -> WAITING: queue each wanted ``(arch_id, params, attrs)`` that the study has neither COMPLETE nor
    queued (a resumed validation or calibration trains only what is left); returns the number of trials left. A
    wanted seed replicate (``replicate`` in its attrs) is another evaluation of the architecture than its first."""

    def key(a: TrialRecord) -> tuple[str | None, int]:
        return a.arch_id or a.planned_arch, a.replicate or 0

    done = {key(TrialRecord.of(t)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    queued = {(TrialRecord.of(t).planned_arch, TrialRecord.of(t).replicate or 0) for t in waiting}
    needed = [w for w in wanted if (w[0], w[2].get("replicate") or 0) not in done | queued]
    for arch_id, params, attrs in needed:
        study.enqueue_trial(params, user_attrs=encode({**attrs, **dict(planned_arch=arch_id)}), skip_if_exists=False)
    return len(needed) + len(waiting)


def requeue_grid_holes(study: optuna.Study) -> int:
    """A grid study (tabulating a space) rerun to finish it: the architectures that were tried but have no COMPLETE
    trial (failed, or interrupted twice, which the stale-trial recovery does not retry again) are queued once more,
    since the grid counts their points as visited. Infeasible proposals are not. Returns the trials left to run."""
    trials = study.get_trials(deepcopy=False)
    done = {TrialRecord.of(t).arch_id for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    holes: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for t in trials:
        a = TrialRecord.of(t)
        if t.state == TrialState.FAIL and t.params and a.arch_id and not a.infeasible:
            holes[a.arch_id] = (a.arch_id, dict(t.params), {})
    return enqueue_missing(study, [w for arch, w in holes.items() if arch not in done])
