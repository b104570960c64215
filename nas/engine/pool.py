"""A third executor: trials in a pool of local worker processes, no Ray (``nas search --pool N``).

Ray Tune is the engine's default executor (nas.engine.tune): it places trials on a cluster's GPUs and CPUs and
survives a lost node. On one machine that has no Ray — a lent GPU box with torch and a few wheels, a laptop, a CI
runner — the same study runs on ``N`` worker processes started here (``spawn``). They start in ``prepare`` and warm
up (import torch, timm and the model code, decode the dataset: :func:`nas.engine.trainable.warm`) while the driver
opens the study, then train trial after trial: no trial pays a worker's start (what it still waits for, if the
warm-up is slower than the set-up, is in its ``start_s``; the warm-up seconds are ``PoolExecutor.warm_s``).
Everything else is the engine's: the driver samples, prunes, races and records (through
:class:`~nas.engine.executor.TrialFeed`), a worker runs the same trial code Ray's workers run
(:func:`nas.engine.trainable.guarded_reports`: a trial's failure is its result), the device lock keeps throughput
measurements exclusive, weights of finished trials land beside the study (sent as safetensors bytes).

The protocol, per worker: the driver puts a trial's payload in the worker's inbox; the worker sends one message per
epoch (``("epoch", trial_id, report, weights)``) and waits for the driver's answer, ``"go"`` or ``"stop"`` (the
pruner, or a Ray scheduler, stopped the trial at this epoch), before it trains the next one — so a stopped trial
trains not one step more (a flag read between epochs let a pruned trial train a whole epoch nobody used: 26 s of a
7-minute demo) — and sends ``("done", trial_id)`` when the trial's reports end. A worker that dies (killed, out of
memory, a crash in native code) fails its trial with the exit code — the driver queues no retry for a failure, as
for a Ray worker error — and a new worker takes its place.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.engine.executor import ExecTrial, Prepared, TrialFeed, prepare_dataset

if TYPE_CHECKING:
    from nas.engine.config import StudyConfig
    from nas.engine.driver import Driver
    from nas.space import SearchSpace

POLL_S = 0.2  # how often the driver looks at a silent pool (a dead worker is noticed within this)


def work(inbox: Any, outbox: Any, dataset: dict[str, Any] | None = None) -> None:
    """A worker process: warm up (imports, the study's ``dataset`` decoded; ``("warm", seconds)``), then run each
    payload that arrives (None ends it), one message per epoch and the driver's answer to it, then ``done``."""
    from safetensors.torch import save

    from nas.engine.messages import TrialPayload
    from nas.engine.trainable import guarded_reports, warm

    if dataset is not None:
        outbox.put(("warm", None, warm(dataset), None))

    while (config := inbox.get()) is not None:
        trial_id = config["_trial_id"]
        reports = guarded_reports(TrialPayload.from_config(config["payload"]))
        for report, weights in reports:
            outbox.put(("epoch", trial_id, report, None if weights is None else save(weights)))
            if inbox.get() == "stop" or report.failed:
                reports.close()
                break
        outbox.put(("done", trial_id, None, None))


@dataclass
class _Slot:
    """One worker process and the trial it runs (None: idle)."""

    proc: Any
    inbox: Any
    trial: ExecTrial | None = None


class PoolExecutor:
    """The :class:`~nas.engine.executor.Executor` of ``workers`` local processes (default: the study's
    ``budget.max_concurrent``); see the module docstring. ``target`` is what a worker process runs (tests give one
    that dies)."""

    def __init__(self, workers: int | None = None, target: Callable[..., None] = work) -> None:
        self.workers, self.target = workers, target
        self.measures_here = True  # its trials measure on this machine's device (nas.settle can re-measure)
        self.ctx = mp.get_context("spawn")
        self.outbox: Any = None
        self.slots: list[_Slot] = []
        self.warm_s: list[float] = []  # each worker's warm-up seconds (off the trials' clock: during the set-up)

    def prepare(self, cfg: StudyConfig, space: SearchSpace, where: str) -> Prepared:
        """Read the dataset once here (classes, statistics, the validation images' fingerprint), then start the
        workers: they import and decode the data while the driver opens the study, so no trial waits for that."""
        prepared = prepare_dataset(cfg, space, where)
        self.dataset = cfg.dataset.model_dump(mode="json")  # what every payload carries: the workers' cache key
        self.outbox = self.ctx.Queue()
        self.slots = [self._start(self.outbox) for _ in range(self.workers or cfg.budget.max_concurrent)]
        return prepared

    def clock(self) -> float:
        return time.time()

    def _start(self, outbox: Any) -> _Slot:
        inbox = self.ctx.Queue()
        proc = self.ctx.Process(target=self.target, args=(inbox, outbox, self.dataset), daemon=True)
        proc.start()
        return _Slot(proc, inbox)

    def run(self, driver: Driver, scheduler: Any = None) -> None:
        """Keep every worker busy until the driver is finished and no trial runs; trials still running when this
        raises (Ctrl-C) are the driver's to fail and queue again."""
        if not self.slots:
            raise RuntimeError("PoolExecutor.run before prepare: the workers start in prepare()")
        feed, outbox, slots = TrialFeed(driver, scheduler), self.outbox, self.slots
        ids, finished = iter(range(1 << 62)), False
        while True:  # the workers stop in close(), which run_config calls however the run ends
            for slot in slots:
                if slot.trial is None and not finished:
                    trial = feed.next_trial(f"pool_{next(ids):06d}")
                    if trial is None:
                        finished = True
                        break
                    slot.trial = trial
                    slot.inbox.put({"_trial_id": trial.trial_id, "payload": trial.config})
            if all(s.trial is None for s in slots) and finished:
                return
            self._step(feed, slots, outbox)

    def close(self) -> None:
        """Stop the workers (``run_config`` calls it however the run ends, also when it ends before ``run``)."""
        for slot in self.slots:
            if slot.proc.is_alive():
                slot.proc.terminate()
            slot.proc.join(timeout=10)
        self.slots = []

    def _step(self, feed: TrialFeed, slots: list[_Slot], outbox: Any) -> None:
        """Take one message (or notice a dead worker): record the epoch and answer it, end the trial when done."""
        by_id = {s.trial.trial_id: s for s in slots if s.trial is not None}
        try:
            kind, trial_id, report, weights = outbox.get(timeout=POLL_S)
        except queue.Empty:
            for i, slot in enumerate(slots):
                if slot.trial is not None and not slot.proc.is_alive():
                    code = slot.proc.exitcode
                    feed.end(slot.trial, error=f"pool worker died (exit code {code}) while training the trial")
                    slots[i] = self._start(outbox)
            return
        if kind == "warm":
            self.warm_s.append(report)
            return
        slot = by_id.get(trial_id)
        if slot is None:  # a message of a trial already ended (its worker died after sending it)
            return
        if kind == "epoch":
            from safetensors.torch import load

            stop = feed.report(slot.trial, report, None if weights is None else load(weights))
            slot.inbox.put("stop" if stop else "go")
        else:
            feed.end(slot.trial)
            slot.trial = None
