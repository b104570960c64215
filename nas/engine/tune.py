"""Ray Tune runs the trials; Optuna (through :class:`nas.engine.driver.Driver`) decides and records.

* :class:`NasSearcher` — a Tune ``Searcher`` over the persistent Optuna study (ask/tell, define-by-run).
* :class:`RungScheduler` — a Tune scheduler that stores each epoch, then asks the study's pruner at every rung.
* :class:`RecordCallback` — records results even when another scheduler (Ray's ASHA, for the benchmark) stops a
  trial, so the study still learns the truth.
* :class:`RayExecutor` — the executor seam's Ray implementation (nas.engine.executor): local Ray started
  in-process by default, or ``ray.address`` to join a cluster.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

for _k, _v in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "4",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_k, _v)

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from nas.engine.driver import FINISHED, Driver  # noqa: E402
from nas.engine.executor import Prepared, prepare_dataset  # noqa: E402
from nas.engine.trainable import run_trial  # noqa: E402
from nas.errors import ConfigError, StudyError  # noqa: E402

_DRIVERS: dict[int, Driver] = {}


class _DriverRef:
    """Tune pickles its searcher, scheduler and callbacks into the experiment folder; the driver (database
    connections, locks) must not travel, so these hold a key into a process-local registry instead."""

    _key: int

    def _bind(self, driver: Driver) -> None:
        self._key = id(driver)
        _DRIVERS[self._key] = driver

    @property
    def driver(self) -> Driver:
        """The driver this adapter serves (from the process-local registry)."""
        return _DRIVERS[self._key]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_searcher"}


class NasSearcher(_DriverRef, Searcher):
    """Tune searcher backed by the Optuna study held by the driver."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(metric=None, mode=None)
        self._bind(driver)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna study in the database is the searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """See :meth:`save`."""

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Accept Tune's metric/mode: the study's objectives and pruner decide, not Tune's metric."""
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial's config from the driver, or ``Searcher.FINISHED`` when the driver is finished."""
        out = self.driver.next_config(trial_id)
        return Searcher.FINISHED if out == FINISHED else out

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Record one epoch (idempotent)."""
        self.driver.on_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the last result, then let the driver tell the study how the trial ended."""
        if result:
            self.driver.on_result(trial_id, result)
        self.driver.on_complete(trial_id, error=error)


class RungScheduler(_DriverRef, FIFOScheduler):
    """Stops a trial when the study's pruner says so at a rung; everything else runs first-in first-out."""

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self._bind(driver)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Record the epoch; STOP when the trial failed or the study's pruner prunes it at a rung."""
        self.driver.on_result(trial.trial_id, result)
        return TrialScheduler.STOP if self.driver.should_stop(trial.trial_id, result) else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Keep the worker's error as the trial's failure reason before Tune ends it."""
        _capture_error(self.driver, trial)
        super().on_trial_error(tune_controller, trial)


def _capture_error(driver: Driver, trial: Any) -> None:
    try:
        err = trial.get_error()
        msg = " ".join(str(err).split())[-400:] if err else None
    except Exception as e:  # Ray's error file unreadable: say so in the trial's failure instead of dropping it
        msg = f"(its error could not be read: {type(e).__name__}: {e})"
    driver.on_error(
        trial.trial_id, f"worker failed: {msg}" if msg else "worker process died (killed or crashed); see Ray logs"
    )


class RecordCallback(_DriverRef, tune.Callback):
    """Records every result (idempotent) — needed when a foreign scheduler (e.g. ASHA) makes the stop decision."""

    def __init__(self, driver: Driver) -> None:
        self._bind(driver)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Record one epoch (idempotent), whichever scheduler decides."""
        self.driver.on_result(trial.trial_id, result)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Remember where Tune persisted the trial's weights (the URI a COMPLETE trial stores)."""
        self.driver.on_checkpoint(trial.trial_id, checkpoint_uri(checkpoint))


def checkpoint_uri(checkpoint: Any) -> str:
    """Where a Tune checkpoint lives, as a URI any node (and ``nas export``) can open with pyarrow's filesystems."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    path = str(checkpoint.path)
    return Path(path).resolve().as_uri() if kind == "local" else f"{kind}://{path}"


def _quiet_ray_loggers() -> None:
    # the study database is the record; Ray's own result files and searcher checkpoints are not used
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _alive_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _fits(node: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials of (cpus, gpus) a node can hold at once (a small epsilon for fractional GPUs)."""
    by_cpu = int(node.get("CPU", 0.0) / cpus + 1e-9) if cpus > 0 else 10**9
    by_gpu = int(node.get("GPU", 0.0) / gpus + 1e-9) if gpus > 0 else 10**9
    return min(by_cpu, by_gpu)


def _describe(nodes: list[dict[str, float]]) -> str:
    parts = [f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes]
    return f"{len(nodes)} node(s): " + ", ".join(parts) if parts else "no alive node"


def check_resources(cfg: Any, where: str) -> None:
    """What the study asks of the cluster must be placeable, else one line naming the field (before anything
    is written): GPUs where there are none, more CPUs/GPUs per trial than the largest node, or more trials at once
    than the whole cluster can hold. Without this, Ray waits forever for resources that never come."""
    nodes = _alive_nodes()
    cpus, gpus = cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial
    has = _describe(nodes)
    if gpus > 0 and not any(n.get("GPU", 0) > 0 for n in nodes):
        raise ConfigError(
            f"{where}: resources.gpus_per_trial: {gpus:g} GPU per trial asked, but the Ray cluster has no GPU "
            f"({has}); set gpus_per_trial: 0 or join a cluster with GPUs (--address)"
        )
    if not any(_fits(n, cpus, gpus) for n in nodes):
        field, asked, most = (
            ("gpus_per_trial", gpus, max(n.get("GPU", 0) for n in nodes))
            if any(n.get("CPU", 0) >= cpus for n in nodes)
            else ("cpus_per_trial", cpus, max((n.get("CPU", 0) for n in nodes), default=0))
        )
        raise ConfigError(
            f"{where}: resources.{field}: {asked:g} per trial asked, but the largest node of the Ray cluster has "
            f"{most:g} ({has}); lower {field} or add a larger node"
        )
    capacity = sum(_fits(n, cpus, gpus) for n in nodes)
    if cfg.budget.max_concurrent > capacity:
        raise ConfigError(
            f"{where}: budget.max_concurrent: {cfg.budget.max_concurrent} trials at once asked, but the Ray cluster "
            f"({has}) holds at most {capacity} trial(s) of {cpus:g} CPU/{gpus:g} GPU; lower max_concurrent to "
            f"{capacity}, lower resources per trial, or add nodes"
        )


class PlacementWatchdog(tune.Callback):
    """Fails the study loudly when a trial has waited ``grace_s`` for resources that no alive node has (nodes lost
    mid-study), instead of letting Tune wait forever; a trial that merely queues behind others is left alone."""

    def __init__(self, cpus: float, gpus: float, grace_s: float | None = None) -> None:
        self.cpus, self.gpus = cpus, gpus
        self.grace_s = float(os.environ.get("NAS_PLACEMENT_GRACE_S", 120)) if grace_s is None else grace_s
        self._since: float | None = None
        self._checked = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Check, at most every few seconds while a trial is PENDING, that some alive node can still place it.

        Raises:
            StudyError: none could for ``grace_s``."""
        if not any(t.status == "PENDING" for t in trials):
            self._since = None
            return
        now = time.monotonic()
        if now - self._checked < min(5.0, self.grace_s / 2):
            return
        self._checked = now
        nodes = _alive_nodes()
        if any(_fits(n, self.cpus, self.gpus) for n in nodes):
            self._since = None
            return
        self._since = self._since or now
        if now - self._since >= self.grace_s:
            raise StudyError(
                f"no node of the Ray cluster can place a trial of {self.cpus:g} CPU/{self.gpus:g} GPU any more "
                f"({_describe(nodes)}) and one has waited {now - self._since:.0f} s; the study stops (trials that "
                "were running are queued again): restart the lost nodes and run the same command"
            )


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local runtime of ``num_cpus``/``num_gpus`` on 127.0.0.1
    (never another Ray instance found on the machine); nothing if Ray is already initialised in this process."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        # address="local": always start our own runtime, never join another Ray instance found on the machine
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",  # kept as loopback only with the switch of run.local_ray_on_loopback
        )


class RayExecutor:
    """The :class:`~nas.engine.executor.Executor` that proxy-trains trials on Ray Tune workers: a local runtime on
    127.0.0.1, or the cluster at ``ray.address``; Ray's own loop calls the driver (:class:`NasSearcher`,
    :class:`RungScheduler`, :class:`RecordCallback`) and ``budget.wall_time_s`` bounds the run."""

    def __init__(self) -> None:
        self.measures_here = True  # local Ray: its trials measured on this machine's device (nas.settle can too)

    def prepare(self, cfg: Any, space: Any, where: str) -> Prepared:
        """Read the dataset (classes, normalisation statistics, channels), start or join Ray, check the cluster can
        place the trials (:func:`check_resources`).

        Raises:
            ConfigError: the dataset is unreadable or disagrees with the space, or the resources cannot be placed.
        """
        prepared = prepare_dataset(cfg, space, where)
        self.measures_here = cfg.ray.address is None  # a cluster's trials measured on its nodes' devices
        init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.num_gpus)
        check_resources(cfg, where)
        return prepared

    def clock(self) -> float:
        """Wall time."""
        return time.time()

    def run(self, driver: Driver, scheduler: TrialScheduler | None = None) -> None:
        """Run trials on Ray Tune until the driver is finished or ``budget.wall_time_s`` has passed."""
        run_tune(driver, scheduler=scheduler, wall_time_s=driver.stops.wall_time_s)  # nas.engine.stops


def run_tune(
    driver: Driver,
    scheduler: TrialScheduler | None = None,
    wall_time_s: float | None = None,
    callbacks: list | None = None,
) -> float:
    """Run trials until the searcher's budget is spent; returns the seconds it took."""
    cfg = driver.cfg
    res = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    storage_path = storage_uri(cfg.ray.storage_path, driver.store.study_dir)
    t0 = time.time()
    _quiet_ray_loggers()
    tuner = tune.Tuner(
        tune.with_resources(run_trial, res),
        tune_config=tune.TuneConfig(
            search_alg=NasSearcher(driver),
            scheduler=scheduler or RungScheduler(driver),
            num_samples=-1,
            max_concurrent_trials=cfg.budget.max_concurrent,
            time_budget_s=wall_time_s,
            reuse_actors=True,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"run-{int(t0)}",
            storage_path=str(storage_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            callbacks=[RecordCallback(driver), PlacementWatchdog(res["cpu"], res["gpu"]), *(callbacks or [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        tuner.fit()
    finally:
        _DRIVERS.pop(id(driver), None)
    return time.time() - t0


def storage_uri(storage_path: str | None, study_dir: Path) -> str:
    """Ray Tune's storage (experiment state and trial checkpoints): a URI (``s3://...``) as given, a local path made
    absolute (relative paths would resolve differently on every node), by default ``<study_dir>/ray``."""
    if storage_path and "://" in storage_path:
        return storage_path
    return str(Path(storage_path or study_dir / "ray").resolve())
