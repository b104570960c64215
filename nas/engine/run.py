"""``nas search``: load and validate a study file, open (or continue) its study, run its trials on an executor (Ray
Tune, or a table's replay: nas.engine.executor), report."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas import layout
from nas.engine.config import StudyConfig, read_study_file
from nas.engine.lifecycle import requeue_grid_holes
from nas.engine.optuna_adapter import OwnedStorage
from nas.engine.progress import Progress
from nas.engine.pruners import make_pruner
from nas.engine.samplers import make_sampler
from nas.engine.store import StudyStore, single_driver
from nas.errors import ConfigError, StudyError
from nas.space import SearchSpace
from nas.study_record import StudyRecord, write

if TYPE_CHECKING:
    import optuna

    from nas.engine.executor import Executor


@dataclass
class RunSummary:
    """What one ``nas search`` run did: trials it added, the study's trials by state, its front, the seconds it
    took, the trials it recovered (left RUNNING by dead drivers) or interrupted, and why sampling stopped early."""

    study: str
    storage: str
    added: int
    counts: dict[str, int]
    front: list[dict[str, Any]]
    seconds: float
    recovered: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    warnings: list[str] = field(default_factory=list)  # what the user must know about the results (one line each)


def run_study(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    progress: Progress | None = None,
    scheduler_factory: Any = None,
    replay: str | Path | None = None,
    pool: int | None = None,
) -> RunSummary:
    """Run (or continue) the study a file describes; with ``replay`` (a table file, see nas.engine.replay) its trials
    come from the table in simulated time instead of training on Ray; with ``pool`` they train in that many local
    processes without Ray (nas.engine.pool).

    Everything a user can get wrong is checked before the storage is touched (nothing written, one-line error):
    the files, the sampler and pruner, the dataset (or that the table matches the study), that some architecture
    of the space meets its constraints, and that the Ray cluster can place the trials it asks for.

    Args:
        path: the study file (``studies/*.yaml``).
        overrides: dotted keys replacing the file's values (``{"budget.n_trials": 4, "storage": URL}``).
        base_dir: where ``studies/<name>/`` lives (default: ``studies`` under the working directory).
        progress: where events go (default: a terminal live view, or one line per event).
        scheduler_factory: ``f(driver) -> TrialScheduler`` to let a Ray Tune scheduler (ASHA) stop trials.
        replay: a table file; trials come from it instead of Ray.
        pool: local worker processes to train in, instead of Ray.

    Returns:
        The :class:`RunSummary` of this run.

    Raises:
        ConfigError: something the user wrote cannot run (one line naming the file, the field and the fix).
        StudyError: the storage cannot be opened, the study exists with other objectives, a SQLite study already
            has a driver, or sampling stopped on an error (e.g. the last 50 proposals were all infeasible).
    """
    cfg, space = read_study_file(path, overrides)
    executor = None
    if replay is not None:
        from nas.engine.replay import ReplayExecutor, Table

        executor = ReplayExecutor(Table.load(replay))
    elif pool is not None:
        from nas.engine.pool import PoolExecutor

        executor = PoolExecutor(pool)
    return run_config(cfg, space, str(path), base_dir, progress, scheduler_factory, executor)


def run_config(
    cfg: StudyConfig,
    space: SearchSpace,
    where: str,
    base_dir: Path | None = None,
    progress: Progress | None = None,
    scheduler_factory: Callable[[Any], Any] | None = None,
    executor: Executor | None = None,
    plan: Callable[[optuna.Study], int] | None = None,
    storage: Any = None,
    wrap_pruner: Callable[[Any], Any] | None = None,
) -> RunSummary:
    """:func:`run_study` for a configuration already in hand: the one entry point of every run (``nas search``,
    the sub-studies of ``nas calibrate``/``nas validate``, the search lab), on any executor.

    Args:
        cfg, space, where: the validated study, its space, and the name errors start with (the study file).
        base_dir, progress, scheduler_factory: as for :func:`run_study`.
        executor: what runs the trials (nas.engine.executor); default Ray Tune (:class:`nas.engine.tune.RayExecutor`).
        plan: ``plan(study) -> n_trials`` enqueues the trials a sub-study still needs once its storage is open and
            returns how many to run (0: nothing left); default ``budget.n_trials``.
        storage: an Optuna storage to use instead of the study's URL (the search lab's in-memory one).
        wrap_pruner: ``f(pruner) -> pruner`` replacing the study's pruner (the lab's oracle bound).

    Raises:
        ConfigError, StudyError: as for :func:`run_study`.
    """
    local_ray_on_loopback(cfg.ray.address)
    make_sampler(cfg, 0, space), make_pruner(cfg)  # configuration errors surface here, before any storage exists
    if executor is None:
        from nas.engine.tune import RayExecutor  # imports Ray: after local_ray_on_loopback

        executor = RayExecutor()
    prepared = executor.prepare(cfg, space, where)
    try:
        space.check_reachable(prepared.num_classes)
        progress = progress or Progress()
        with single_driver(cfg.storage_url(base_dir), cfg.name):
            storage = storage or layout.create_storage(cfg.storage_url(base_dir), OwnedStorage)
            _check_same_images(storage, cfg.name, prepared.study_attrs.get("val_set"), where)
            pruner = make_pruner(cfg, storage)
            store = _open(cfg, space, base_dir, storage, wrap_pruner(pruner) if wrap_pruner else pruner)
            write(store.study, **prepared.study_attrs)
            return _drive(cfg, space, store, progress, scheduler_factory, executor, prepared.num_classes, plan)
    finally:
        close = getattr(executor, "close", None)  # what prepare started (the pool's workers), however the run ends
        if close is not None:
            close()


def _check_same_images(storage: Any, name: str, val_set: dict[str, Any] | None, where: str) -> None:
    """A study's accuracies, paired comparisons and replicates are all on its validation images: a run of the study
    whose dataset settings give other images is refused before anything is written.

    Raises:
        ConfigError: the study exists and its trials were evaluated on other validation images.
    """
    if not val_set:
        return
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return  # a new study
    before = StudyRecord.from_attrs(storage.get_study_user_attrs(study_id)).val_set
    if before and before.get("fingerprint") != val_set["fingerprint"]:
        raise ConfigError(
            f"{where}: dataset: the validation images are not those study '{name}' was evaluated on ("
            f"{before.get('images')} images, fingerprint {before.get('fingerprint')}; now {val_set['images']}, "
            f"{val_set['fingerprint']}); restore dataset.val_fraction / split_seed / root, or give the study a new name"
        )


def _open(cfg: StudyConfig, space: SearchSpace, base_dir: Path | None, storage: Any, pruner: Any) -> StudyStore:
    """Open the study as one of its drivers: the sampler's stream is this driver's number in the study."""
    n_existing = _count_existing(storage, cfg.name)
    sampler = lambda slot: make_sampler(cfg, n_existing, space, stream=slot)  # noqa: E731
    return StudyStore(cfg, space, sampler, pruner, base_dir, storage)


def _drive(
    cfg: StudyConfig,
    space: SearchSpace,
    store: StudyStore,
    progress: Progress,
    scheduler_factory: Callable[[Any], Any] | None,
    executor: Executor,
    num_classes: int,
    plan: Callable[[optuna.Study], int] | None,
) -> RunSummary:
    """Run the study's trials on the executor as one of its drivers, report."""
    from nas import settle
    from nas.engine.driver import Driver

    recovered = store.recover_stale()
    if cfg.sampler.name == "grid" and plan is None:
        requeue_grid_holes(store.study)
    n_trials = plan(store.study) if plan is not None else cfg.budget.n_trials
    store.start()
    progress.begin(cfg, store, recovered)
    lock_dir, resume_dir = local_lock_dir(store.study_dir), local_dir(store.study_dir, "resume")
    driver = Driver(
        cfg, space, store, store.study.pruner, num_classes, n_trials, lock_dir, progress.event, executor.clock,
        resume_dir,
    )  # fmt: skip
    t0 = time.time()
    interrupted: list[int] = []
    ended = False
    settled = None
    try:
        executor.run(driver, scheduler_factory(driver) if scheduler_factory else None)
        ended = True
    finally:
        interrupted = driver.finish(wait_for_others=ended)
        load = settle.device_load(store.study)
        if load is not None:  # recorded with the study: how loaded its device was while it measured
            write(store.study, device_load=load)
        if ended and not interrupted and getattr(executor, "measures_here", False):  # the device is free now
            settled = settle.settle_at_end(store.study, cfg.budget.settle_rounds, progress.event)
        store.close()
    summary = run_summary(store, cfg, driver.added, time.time() - t0, recovered, interrupted, driver.stop_reason)
    if settled:
        summary.warnings.append(settled)
    progress.end(summary)
    if driver.stop_is_error:
        raise StudyError(f"study '{cfg.name}': stopped early: {driver.stop_reason}")
    return summary


def local_lock_dir(study_dir: Path) -> str:
    """Device locks live beside the study (one folder per node when the filesystem is not shared)."""
    return local_dir(study_dir, "locks")


def local_dir(study_dir: Path, name: str) -> str:
    """A folder beside the study (``locks``, ``resume``: the trials' checkpoints), made now, as an absolute path."""
    path = (study_dir / name).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_on_loopback(address: str | None) -> None:
    """Keep a local Ray runtime on 127.0.0.1. Ray 2.x turns 127.0.0.1 into this host's network address and listens
    on every interface unless its single-machine switch is off (the switch Ray itself uses to keep macOS/Windows
    runtimes local). It is read when ``ray`` is imported, so it is set before the engine imports it, and only for a
    local runtime: joining a cluster (``address``) needs the real addresses. A value the user set is kept."""
    if address is None:
        os.environ.setdefault(LOOPBACK_SWITCH, "0")


def _count_existing(storage: Any, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def run_summary(
    store: StudyStore,
    cfg: StudyConfig,
    added: int,
    seconds: float,
    recovered: list[int],
    interrupted: list[int],
    stop_reason: str | None = None,
) -> RunSummary:
    """What this run did, and the study's front as nas.results reads it (one architecture, one point; accuracy
    with its 95 % interval, the seeds it averages and its P(front))."""
    from nas import results, settle
    from nas.replicates import study_front_probability

    recs = results.records(store.study)
    objs = results.objectives_of(store.study)
    counts = dict(Counter(r.state for r in recs))
    p_front = study_front_probability(store.study, results.eligible(recs, objs), objs)
    front = []
    for r in results.front(recs, objs):
        iv = r.accuracy_interval  # None for an evaluation without its correct images (a table without bitmaps)
        noise: dict[str, Any] = {"accuracy 95 %": f"{iv[0]:.4f}–{iv[1]:.4f}" if iv else None}
        if p_front:
            noise.update(seeds=r.seeds, p_front=p_front[r.number])
        front.append({"number": r.number, "placement": r.placement, **r.values, **noise, "params": r.params})
    load = settle.load_line(store.study)
    return RunSummary(cfg.name, store.url, added, counts, front, seconds, recovered, interrupted, stop_reason,
                      [load] if load else [])  # fmt: skip
