"""The driver's bookkeeping between Ray Tune and the Optuna study (no Ray imports: testable on its own).

* ``next_config`` asks Optuna (define-by-run from the space), rejects infeasible or over-budget samples before any
  training (stored as FAIL with the reason, not counted against the budget), and never trains an architecture
  twice: one already evaluated under the same training (same arch_id and training key) is reused, and one that is
  training right now — by this driver or by another one sharing the study — is waited for and then reused (the new
  trial stays RUNNING until its source finishes). Across drivers, one trainer per architecture is a claim in the
  database (``Lifecycle.claim_arch``), so drivers that start together never train the same architecture twice.
* When sampling stops is :class:`~nas.engine.stops.StopRules`' (``self.stops``): the trial budget, the wall time
  on the executor's clock, an exhausted grid, too many infeasible or already-evaluated proposals in a row.
* ``on_result`` stores each epoch (user attrs + intermediate values) and the throughput (cached per device).
* ``should_stop`` asks the pruner at every rung (one BasePruner makes every decision).
* ``on_complete`` tells Optuna the truth: COMPLETE only at full fidelity, PRUNED for a trial stopped early (never
  COMPLETE with low-fidelity values — landscape.md trap 4), FAIL with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.cost import arch_cost
from nas.engine.config import StudyConfig
from nas.engine.lifecycle import INTERRUPTED
from nas.engine.messages import EpochReport, TrialPayload
from nas.engine.objectives import objective_vector
from nas.engine.racing import Racer
from nas.engine.stops import StopRules
from nas.engine.store import StudyStore
from nas.errors import ConfigError
from nas.space import SearchSpace
from nas.trial_record import TrialRecord

FINISHED = "FINISHED"
FOREIGN_POLL_S = 0.5  # how often a driver with nothing else to do looks whether another driver's trial finished


@dataclass
class RunningTrial:
    """A trial this driver handed to Tune and has not told Optuna about yet."""

    number: int
    tune_id: str
    arch_id: str
    started: float
    train_key: str = ""  # the training it runs (a seed replicate's differs from the first evaluation's)
    replicate: int = 0  # a seed replicate (k > 0) is never pruned: it exists to measure the full-fidelity result
    curve: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None  # reported by the trainable
    error: str | None = None  # worker error captured by the scheduler
    pruned_at: int | None = None
    checkpoint: str | None = None  # URI of the weights Tune persisted (full fidelity)
    measured: bool = False  # throughput recorded
    waiters: dict[int, TrialRecord] = field(default_factory=dict)  # later trials of this arch -> their description
    phases: dict[str, float] = field(default_factory=dict)  # the worker's phase times, last reported
    storage_s: float = 0.0  # this driver's time writing the trial


class Driver:
    """State shared by the Tune searcher and scheduler on the driver (see module docstring)."""

    def __init__(
        self,
        cfg: StudyConfig,
        space: SearchSpace,
        store: StudyStore,
        pruner: optuna.pruners.BasePruner,
        num_classes: int,
        n_trials: int | None,
        lock_dir: str | None = None,
        log: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        resume_dir: str | None = None,
    ) -> None:
        self.cfg, self.space, self.store, self.pruner = cfg, space, store, pruner
        self.num_classes, self.n_trials, self.lock_dir = num_classes, n_trials, lock_dir
        self.log = log or (lambda kind, info: None)
        self.clock = clock  # seconds; a replay of a tabulated benchmark passes its simulated time
        self.resume_dir = resume_dir  # per-architecture checkpoints of trials in training (kept when interrupted)
        self.train_key = self.cfg.train_key(0)
        self.racer = Racer(cfg, store) if cfg.replicates is not None else None
        self.running: dict[str, RunningTrial] = {}  # by Tune trial id
        self.foreign: dict[int, dict[int, TrialRecord]] = {}  # another driver's trial -> our trials waiting for it
        self.stops = StopRules(n_trials, cfg.budget.wall_time_s)  # when this run stops sampling (nas.engine.stops)

    @property
    def added(self) -> int:
        """Trials this run added (infeasible samples not counted)."""
        return self.stops.added

    @property
    def stop_reason(self) -> str | None:
        """Why sampling stopped before the budget was spent (None: it was not)."""
        return self.stops.reason

    @property
    def stop_is_error(self) -> bool:
        return self.stops.is_error

    # ------------------------------------------------------------------------------------------ sampling
    def next_config(self, tune_id: str) -> dict[str, Any] | str:
        """The next trial to train, for the executor's trial ``tune_id``: a :class:`TrialPayload` config, or
        ``FINISHED`` when the budget is spent or sampling stopped (``stop_reason`` says why).

        Asks Optuna until a proposal needs training: infeasible ones are rejected (FAIL, not counted), and an
        architecture already evaluated or in training (here or by another driver) is reused or waited for.
        Raises :class:`~nas.errors.StudyError` if the architecture claim cannot be taken (database trouble).
        """
        self.settle()
        self.stops.start(self.clock())
        while self.stops.trials_left() and not self.stops.time_up(self.clock()):
            if not self._racing():  # a queued replicate goes first, even after sampling stopped
                if self.stops.reason is not None:
                    break
                exhausted = getattr(self.store.study.sampler, "is_exhausted", None)  # a grid sampler's own test
                if exhausted is not None and exhausted(self.store.study):
                    self._stop("every architecture of the grid has been proposed")
                    break
            trial = self.store.life.start()
            try:
                config = self._propose(trial, tune_id)
            except BaseException:  # Ctrl-C or an error between its birth and a worker: never left RUNNING
                self._abandon(trial.number, tune_id)
                raise
            if config is not None:
                return config
        return FINISHED

    def _abandon(self, number: int, tune_id: str) -> None:
        """A trial this driver created is left behind by an exception before a worker got it (the run ends): fail
        it and queue its one retry, unless it is already handled (rejected, reused, waiting, or handed out — then
        ``finish`` interrupts it)."""
        if tune_id in self.running and self.running[tune_id].number == number:
            return
        t = self.store.frozen(number)
        if t.state == TrialState.RUNNING and TrialRecord.of(t).waiting_for is None:  # a waiter is finish()'s
            self.store.life.interrupt(number, "the run ended before this trial reached a worker; it is queued again")

    def _propose(self, trial: optuna.Trial, tune_id: str) -> dict[str, Any] | None:
        """Describe a started trial: its payload config when it must be trained, None when it was rejected,
        reused or left waiting for another trial of its architecture."""
        replicate = TrialRecord.from_mapping(trial.user_attrs).replicate or 0
        try:
            arch = self.space.sample(trial.suggest_categorical, self.num_classes)
            reasons = self.space.check_constraints(arch)
        except ConfigError as e:
            arch, reasons = None, [str(e)]
        if reasons:
            self._reject(trial.number, "; ".join(reasons))
            return None
        args = arch.to_model_args()
        cost = arch_cost(args)
        desc = TrialRecord(
            arch=args,
            arch_id=arch.arch_id,
            placement=arch.placement(),
            train_key=self.cfg.train_key(replicate),
            params=cost.params,
            flops=cost.flops,
        )
        self.stops.sampled()
        if self._reuse_or_wait(trial.number, desc):
            return None
        self.stops.trained()
        self.running[tune_id] = RunningTrial(
            trial.number, tune_id, arch.arch_id, started=self.clock(), train_key=desc.train_key, replicate=replicate
        )
        self.log("start", {"number": trial.number, "placement": desc.placement, "params": cost.params,
                           "replicate": replicate or None})  # fmt: skip
        return self._payload(trial.number, desc, replicate).to_config()

    def _racing(self) -> bool:
        """Whether a seed replicate is due (racing, ``replicates:``): if so it is queued, and the next trial Optuna
        hands out is that replicate (queued trials come first)."""
        if self.racer is None:
            return False
        if any(t.state == TrialState.WAITING for t in self.store.study.get_trials(deepcopy=False)):
            return True  # a queued trial (a replicate or a retry) is next
        due = self.racer.next_replicate()
        if due is None:
            return False
        source, k = due
        if not self.store.life.enqueue_replicate(source, k):  # another driver queued it: it is next for someone
            self.racer.queued_elsewhere(source, k)
            return False
        p = self.racer.last_p.get(source.number)
        self.log("replicate", {"number": source.number, "replicate": k, "p_front": p})
        return True

    def _reject(self, number: int, reason: str) -> None:
        self.store.life.reject(number, reason)
        self.log("infeasible", {"number": number, "reason": reason})
        before = self.stops.reason
        self.stops.rejected(reason, self.space.name)
        if self.stops.reason != before:
            self.log("stopped", {"reason": self.stops.reason})

    def _reuse_or_wait(self, number: int, desc: TrialRecord) -> bool:
        """Reuse a finished trial of the same architecture, or wait for the one training it now (ours or another
        driver's). False, with the architecture described and claimed for this trial, if it is to be trained."""
        arch_id, key = desc.arch_id, desc.train_key
        source = self.store.life.find_reusable(arch_id, key)
        training = next((r for r in self.running.values() if r.arch_id == arch_id and r.train_key == key), None)
        if source is None and training is None:
            self.store.life.describe(number, desc)
            source = self.store.life.claim_arch(arch_id, key, number)  # None: this trial trains it
            if source is None:
                return False
        if source is not None and source.state == TrialState.RUNNING:  # another driver trains it now
            self.foreign.setdefault(source.number, {})[number] = desc
            self._wait(number, desc, source.number)
        elif source is not None:
            self._reuse(number, desc, source)
        else:
            training.waiters[number] = desc
            self._wait(number, desc, training.number)
        before = self.stops.reason
        self.stops.reused(
            lambda: len({TrialRecord.of(t).arch_id for t in self.store.study.get_trials(deepcopy=False)} - {None})
        )
        if self.stops.reason != before:
            self.log("stopped", {"reason": self.stops.reason})
        return True

    def _wait(self, number: int, desc: TrialRecord, source: int) -> None:
        self.store.life.wait(number, desc, source)
        self.log("waiting", {"number": number, "source": source, "placement": desc.placement})

    def settle(self, block: bool = False) -> None:
        """Report trials the heartbeat recovered, and resolve our trials that wait for another driver's trial that
        has finished; with ``block``, until none is left (a killed driver's trial is recovered within the stale
        limit, so this ends)."""
        for number in self.store.take_recovered():
            self.log("recovered", {"number": number})
        while self.foreign:
            for source_number in list(self.foreign):
                source = self.store.frozen(source_number)
                if source.state.is_finished():
                    for number, desc in self.foreign.pop(source_number).items():
                        self._resolve_waiter(number, desc, source)
            if not block or not self.foreign:
                return
            time.sleep(FOREIGN_POLL_S)

    def _resolve_waiter(self, number: int, desc: TrialRecord, source: optuna.trial.FrozenTrial) -> None:
        failure = TrialRecord.of(source).failure or ""
        if source.state == TrialState.FAIL and failure.startswith(INTERRUPTED):
            why = f"the trial it waited for ({source.number}) was interrupted; that trial's retry covers it"
            self.store.life.interrupt(number, why, retry=False)
            self.log("fail", {"number": number, "failure": why})
        else:
            self._reuse(number, desc, source)

    def _stop(self, reason: str) -> None:
        self.stops.stop(reason)
        self.log("stopped", {"reason": reason})

    def _reuse(self, number: int, desc: TrialRecord, src: optuna.trial.FrozenTrial) -> None:
        self.store.life.reuse(number, desc, src)
        self.log(
            "reused", {"number": number, "source": src.number, "state": src.state.name, "placement": desc.placement}
        )

    def _payload(self, number: int, desc: TrialRecord, replicate: int) -> TrialPayload:
        return TrialPayload(
            number=number,
            arch=desc.arch,
            arch_id=desc.arch_id,
            train=self.cfg.train_for(replicate).model_dump(mode="json"),
            dataset=self.cfg.dataset.model_dump(mode="json"),
            throughput=self.cfg.throughput.model_dump(mode="json"),
            cpus=self.cfg.resources.cpus_per_trial,
            lock_dir=self.lock_dir,
            resume=self._resume_file(desc.arch_id, desc.train_key),
            cached_throughput=self.store.cached_throughput(desc.arch_id),
            sent_at=time.time(),
        )

    def _resume_file(self, arch_id: str, train_key: str) -> str | None:
        """Where a trial of ``arch_id`` under the training ``train_key`` checkpoints its epochs: a retry of an
        interrupted trial (same architecture, same training) continues from the last epoch saved there."""
        return None if self.resume_dir is None else os.path.join(self.resume_dir, f"{arch_id}-{train_key}.pt")

    # ------------------------------------------------------------------------------------------ results
    def on_result(self, tune_id: str, result: dict[str, Any]) -> None:
        """Store one epoch a worker reported (idempotent: the scheduler, the searcher and a callback may all pass
        the same result): the curve, and on the first epoch the throughput, cached per device."""
        run = self.running.get(tune_id)
        report = EpochReport.from_result(result)
        if run is None or report is None:
            return
        if report.failed:
            run.failure = str(report.failed)
            return
        if run.curve and run.curve[-1]["epoch"] == report.epoch:
            return  # already recorded (scheduler, searcher and callback all see each result)
        t0 = time.perf_counter()
        try:
            self._record(run, report)
        finally:
            run.storage_s += time.perf_counter() - t0

    def _record(self, run: RunningTrial, report: EpochReport) -> None:
        """Store one new epoch of a running trial (:meth:`on_result`)."""
        if report.phases:
            run.phases = dict(report.phases)
        if not run.measured and report.throughput:
            tp = dict(report.throughput)
            where = {"node": report.node, "device_lock": report.device_lock, "visible_gpus": report.visible_gpus}
            self.store.life.record(run.number, throughput=tp, device=tp.get("device"), **where)
            if not tp.pop("cached", False):
                self.store.put_throughput(tp["key"], run.arch_id, tp["device"], tp)
            run.measured = True
        if report.restored:
            self.store.life.record(run.number, resumed_epochs=report.epoch)
        if report.val_correct is not None:  # the full-fidelity evaluation, example by example
            self.store.life.record(run.number, val_correct=report.val_correct, val_set=report.val_set)
        row = report.curve_row()
        run.curve = [r for r in run.curve if r["epoch"] < row["epoch"]] + [row]  # a retried worker restarts
        self.store.life.record_epoch(run.number, run.curve)
        self.log("epoch", {"number": run.number, **row, "pid": report.pid})

    def on_checkpoint(self, tune_id: str, uri: str) -> None:
        """Tune persisted the trial's weights (a folder holding ``model.safetensors``) at ``uri``."""
        if tune_id in self.running:
            self.running[tune_id].checkpoint = uri

    def on_error(self, tune_id: str, message: str) -> None:
        """The scheduler saw the worker fail (its error text, or that the process died)."""
        if tune_id in self.running:
            self.running[tune_id].error = message

    def should_stop(self, tune_id: str, result: dict[str, Any]) -> bool:
        """Whether the executor must stop this trial now: it reported a failure, or the study's pruner says so
        at a rung (``fidelity.rungs``; never a seed replicate); a pruned trial records the rung in ``pruned_at``."""
        run = self.running.get(tune_id)
        if run is None:
            return False
        if run.failure is not None:
            return True
        epoch = int(result.get("epoch", 0))
        at_rung = epoch in self.cfg.fidelity.rungs and epoch < self.cfg.train.epochs and "val_acc" in result
        at_rung = at_rung and not run.replicate
        if at_rung and self.pruner.prune(self.store.study, self.store.frozen(run.number)):
            run.pruned_at = epoch
            return True
        return False

    def on_complete(self, tune_id: str, error: bool = False) -> None:
        """The executor ended the trial (``error``: its worker died): tell Optuna the truth — COMPLETE at full
        fidelity with its objective vector, PRUNED below it, FAIL with the reason — then resolve the trials of
        this driver that waited for it, and those waiting for other drivers' trials that have finished."""
        run = self.running.pop(tune_id, None)
        if run is None:
            return
        fidelity = run.curve[-1]["epoch"] if run.curve else 0
        full = fidelity >= self.cfg.train.epochs
        wall = self.clock() - run.started
        attrs: dict[str, Any] = dict(fidelity=fidelity, full_fidelity=full, wall_time_s=wall)
        if run.phases:  # a worker that reports them; the driver's writes before this last one, and its wall time
            attrs.update(phases={**run.phases, "storage_s": round(run.storage_s, 4), "wall_s": wall})
        if error or run.failure is not None:
            reason = run.failure or run.error or "worker process died (killed or crashed); see Ray logs"
            self._tell(run.number, TrialState.FAIL, None, dict(attrs, failure=reason))
        elif full:
            if run.checkpoint:
                attrs.update(checkpoint=run.checkpoint)
            values = objective_vector(self.store.frozen(run.number), self.cfg.objective_names, self.cfg.train.epochs)
            if values is None:
                self._tell(run.number, TrialState.FAIL, None, dict(attrs, failure="an objective was not measured"))
            else:
                self._tell(run.number, TrialState.COMPLETE, values, attrs)
        else:
            self._tell(run.number, TrialState.PRUNED, None, dict(attrs, pruned_at=run.pruned_at or fidelity))
        resume = self._resume_file(run.arch_id, run.train_key)
        if resume is not None:  # the trial is told: its checkpoint has served (an interrupted one keeps it)
            with contextlib.suppress(FileNotFoundError):
                os.remove(resume)
        source = self.store.frozen(run.number)
        for number, desc in run.waiters.items():
            self._reuse(number, desc, source)
        self.settle()

    def _tell(self, number: int, state: TrialState, values: list[float] | None, attrs: dict[str, Any]) -> None:
        self.store.life.finish(number, state, values, attrs)
        self.log(state.name.lower(), {"number": number, "values": values, **attrs})

    def finish(self, wait_for_others: bool = True) -> list[int]:
        """Trials this run started but never finished (wall-time budget, Ctrl-C, an error): FAIL now; the trained
        ones are queued again for the next run, the ones that waited for them are not (the retry covers them).
        Our trials that wait for another driver's trial are resolved once it finishes (``wait_for_others``: the run
        ended normally), else failed now (Ctrl-C, an error: the other driver's trial covers the architecture)."""
        left = []
        for run in list(self.running.values()):
            why = "the run ended before this trial finished"
            self.store.life.interrupt(run.number, f"{why}; it is queued again")
            self.log("fail", {"number": run.number, "failure": why})
            for number in run.waiters:
                self.store.life.interrupt(number, f"{why} (it waited for trial {run.number})", retry=False)
            left += [run.number, *run.waiters]
        self.running.clear()
        self.settle()
        if self.foreign and not wait_for_others:
            for source, waiters in self.foreign.items():
                for number in waiters:
                    self.store.life.interrupt(number, f"the run ended while it waited for trial {source}", retry=False)
                    left.append(number)
            self.foreign.clear()
        if self.foreign:
            waiting = sorted(n for w in self.foreign.values() for n in w)
            self.log("waiting_foreign", {"numbers": waiting, "sources": sorted(self.foreign)})
        self.settle(block=True)
        return left
