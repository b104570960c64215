"""The executor seam: what runs a study's trials, behind one small interface the driver does not see past.

The driver (:class:`nas.engine.driver.Driver`) decides and records: which architecture to train next
(``next_config``), what an epoch means for the study (``on_result``), whether a trial stops at a rung
(``should_stop``), how it ends (``on_complete``, ``on_error``). An *executor* only runs what the driver hands it.
Three implementations ship:

* :class:`nas.engine.tune.RayExecutor` — proxy training on Ray Tune workers (local runtime or a cluster); Ray's
  own loop calls the driver through a Tune searcher, scheduler and callback.
* :class:`nas.engine.replay.ReplayExecutor` — epochs read from a tabulated benchmark in simulated time (the search
  lab), an in-process loop built on :class:`TrialFeed`.
* :class:`nas.engine.pool.PoolExecutor` — local worker processes without Ray (``nas search --pool N``), a loop
  built on :class:`TrialFeed` like the replay's.

``run_config`` (what ``nas search``, ``nas calibrate``, ``nas validate`` and the search lab all call) has one path:
``executor.prepare`` checks what the executor needs before any storage is touched, the driver is built with
``executor.clock`` as its clock, then ``executor.run(driver, scheduler)`` runs trials until the driver says
``FINISHED``.

**A third executor** (a process pool, Slurm, Kubernetes jobs) is a new module with a class that implements
:class:`Executor`:

1. ``prepare(cfg, space, where)`` — check the study can run here (data readable, resources placeable, ...) and
   return :class:`Prepared`: the number of classes and the study attributes to record. Raise
   :class:`~nas.errors.ConfigError` in one line naming the field; nothing has been written yet.
2. ``clock()`` — seconds, the time base of the trials' ``wall_time_s`` (wall time, or a simulation's).
3. ``run(driver, scheduler)`` — loop: take trials with :meth:`TrialFeed.next_trial` while workers are free (each
   config is a :class:`~nas.engine.messages.TrialPayload`; ``nas.engine.trainable.guarded_reports`` is the whole
   trial without Ray, its failures turned into reports), pass every epoch's
   :class:`~nas.engine.messages.EpochReport` — and the weights a full-fidelity epoch comes with — to
   :meth:`TrialFeed.report` and stop the trial when it returns True, end each trial with :meth:`TrialFeed.end`
   (with the error if the worker died). Return when ``next_trial`` gives None and nothing runs. Trials still
   running when ``run`` returns or raises are failed and queued again by the driver.

Optional: ``close()``, called by ``run_config`` however the run ends (before ``run`` too), to release what
``prepare`` started; an attribute ``measures_here`` (True when its trials measure throughput on this machine's
device): the search then settles its front's throughput order at its end (nas.settle, ``budget.settle_rounds``).

The schedulers see one kind of trial object: Ray's own ``Trial`` inside Ray, :class:`ExecTrial` (the same
``trial_id``/``config`` attributes) everywhere else, so a Ray Tune ``TrialScheduler`` such as ASHA can make the
stop decisions under any executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nas.engine.messages import EpochReport, TrialPayload
from nas.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from nas.engine.config import StudyConfig
    from nas.engine.driver import Driver
    from nas.space import SearchSpace


@dataclass(frozen=True)
class Prepared:
    """What an executor found while preparing a study: the dataset's number of classes, and the study attributes
    that say where the trials come from (``data_stats`` and ``val_set`` of a dataset, or the ``replay`` table's
    provenance)."""

    num_classes: int
    study_attrs: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """Runs the trials a driver hands out (see the module docstring for what an implementation must do)."""

    def prepare(self, cfg: StudyConfig, space: SearchSpace, where: str) -> Prepared:
        """Check, before any storage exists, that the study can run on this executor.

        Raises:
            ConfigError: it cannot (one line naming ``where``, the field and the fix).
        """
        ...

    def clock(self) -> float:
        """Seconds: the time base of the driver's trial durations."""
        ...

    def run(self, driver: Driver, scheduler: Any = None) -> None:
        """Run trials until the driver is finished; ``scheduler``: a Ray Tune ``TrialScheduler`` that may stop
        trials besides the study's pruner."""
        ...


@dataclass
class ExecTrial:
    """One trial as an in-process executor and a Ray Tune scheduler see it (Ray's ``Trial`` has the same
    ``trial_id`` and ``config``)."""

    trial_id: str
    config: dict[str, Any]
    last: dict[str, Any] = field(default_factory=dict)  # the last result reported, as a Tune scheduler saw it

    @property
    def payload(self) -> TrialPayload:
        """The trial's :class:`~nas.engine.messages.TrialPayload` (what a worker needs to run it)."""
        return TrialPayload.from_config(self.config)


class TrialFeed:
    """The one copy of an in-process executor's dialogue with the driver and an optional Ray Tune scheduler:
    every executor but Ray's (whose own loop calls the same driver methods through ``nas.engine.tune``) uses it."""

    def __init__(self, driver: Driver, scheduler: Any = None) -> None:
        self.driver, self.scheduler = driver, scheduler

    def next_trial(self, trial_id: str) -> ExecTrial | None:
        """The next trial to run under the executor's id ``trial_id``, or None: the driver is finished."""
        from nas.engine.driver import FINISHED

        config = self.driver.next_config(trial_id)
        if config == FINISHED:
            return None
        trial = ExecTrial(trial_id, config)
        if self.scheduler is not None:
            self.scheduler.on_trial_add(None, trial)
        return trial

    def report(self, trial: ExecTrial, report: EpochReport, weights: dict[str, Any] | None = None) -> bool:
        """Record one epoch (and the weights a full-fidelity epoch comes with, :func:`~nas.engine.trainable.
        guarded_reports`' second item: saved beside the study, so ``nas export --weights`` reads them as it reads a
        Ray checkpoint); True if the trial must stop now (a failure, the pruner at a rung, or the scheduler)."""
        if weights is not None:
            self.driver.on_checkpoint(trial.trial_id, self._save(trial, weights))
        result = report.to_result()
        trial.last = {**result, "training_iteration": report.epoch}  # what Tune adds before its schedulers look
        self.driver.on_result(trial.trial_id, result)
        stop = self.driver.should_stop(trial.trial_id, result)
        if self.scheduler is not None and not stop and report.failed is None:
            from ray.tune.schedulers import TrialScheduler

            stop = self.scheduler.on_trial_result(None, trial, trial.last) == TrialScheduler.STOP
        return stop

    def _save(self, trial: ExecTrial, weights: dict[str, Any]) -> str:
        """Write a trial's weights to ``<study folder>/weights/trial_<number>/`` (the layout of a Tune checkpoint
        folder); its ``file://`` URI."""
        from safetensors.torch import save_file

        from nas.engine.trainable import WEIGHTS_FILE

        folder = (self.driver.store.study_dir / "weights" / f"trial_{trial.payload.number}").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(folder / WEIGHTS_FILE))
        return folder.as_uri()

    def end(self, trial: ExecTrial, error: str | None = None) -> FrozenTrial:
        """The trial stopped, finished its epochs, or its worker died (``error``): the driver tells the study.
        Returns the trial as stored now."""
        if self.scheduler is not None:
            if error is None:
                self.scheduler.on_trial_complete(None, trial, trial.last)
            else:
                self.scheduler.on_trial_error(None, trial)
        if error is not None:
            self.driver.on_error(trial.trial_id, error)
        self.driver.on_complete(trial.trial_id, error=error is not None)
        return self.driver.store.frozen(trial.payload.number)


def prepare_dataset(cfg: StudyConfig, space: SearchSpace, where: str) -> Prepared:
    """Load the dataset once on the driver: its number of classes, and the study attributes ``data_stats``
    (normalisation statistics: exports carry them) and ``val_set`` (how many validation images, and their
    fingerprint: every trial's correctness bitmap is of these images); a clear error if the channel count
    disagrees with the space.

    Raises:
        ConfigError: the dataset cannot be read, or its channels disagree with ``input.in_chans``.
    """
    from trainers.data import load_dataset
    from trainers.errors import TrainerError

    try:
        data = load_dataset(cfg.dataset)
    except TrainerError as e:
        raise ConfigError(f"{where}: dataset: {e}") from None
    if data.in_chans != space.input.in_chans:
        raise ConfigError(
            f"{where}: dataset '{cfg.dataset.name}' has {data.in_chans} input channel(s) but the search space "
            f"'{space.name}' says input.in_chans = {space.input.in_chans}; make them agree"
        )
    attrs = {
        "data_stats": {"mean": list(data.mean), "std": list(data.std)},
        "val_set": {"images": len(data.val_y), "fingerprint": data.val_fingerprint},
    }
    return Prepared(data.num_classes, attrs)
