"""``nas search``: load and validate a study file, open (or continue) its study, run trials on Ray, report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from nas.engine.config import StudyConfig, load_study
from nas.engine.progress import Progress
from nas.engine.pruners import make_pruner, make_sampler
from nas.engine.store import StudyStore, make_storage
from nas.errors import ConfigError
from nas.space import SearchSpace


@dataclass
class RunSummary:
    study: str
    storage: str
    added: int
    counts: dict[str, int]
    front: list[dict[str, Any]]
    seconds: float
    recovered: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)


def dataset_shape(cfg: StudyConfig, space: SearchSpace, where: str) -> tuple[int, dict[str, list[float]]]:
    """Load the dataset once on the driver: number of classes and normalisation statistics (exports carry them),
    and a clear error if the channel count disagrees with the space."""
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
    return data.num_classes, {"mean": list(data.mean), "std": list(data.std)}


def run_study(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    progress: Progress | None = None,
    scheduler_factory: Any = None,
) -> RunSummary:
    """Run (or continue) the study a file describes. Everything is validated before the storage is touched."""
    from nas.engine.driver import Driver
    from nas.engine.tune import init_ray, local_lock_dir, run_tune

    cfg, space = load_study(path, overrides)
    num_classes, data_stats = dataset_shape(cfg, space, str(path))
    progress = progress or Progress()
    storage = make_storage(cfg.storage_url(base_dir))
    n_existing = _count_existing(storage, cfg.name)
    store = StudyStore(cfg, space, make_sampler(cfg, n_existing), make_pruner(cfg), base_dir)
    store.study.set_user_attr("data_stats", data_stats)
    recovered = store.recover_stale()
    store.start()
    progress.begin(cfg, store, recovered)
    driver = Driver(
        cfg,
        space,
        store,
        store.study.pruner,
        num_classes,
        cfg.budget.n_trials,
        lock_dir=local_lock_dir(store.study_dir),
        log=progress.event,
    )
    t0 = time.time()
    interrupted: list[int] = []
    try:
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
        scheduler = scheduler_factory(driver) if scheduler_factory else None
        run_tune(driver, scheduler=scheduler, wall_time_s=cfg.budget.wall_time_s)
    finally:
        interrupted = driver.finish()
        store.close()
    summary = summarize(store, cfg, driver.added, time.time() - t0, recovered, interrupted)
    progress.end(summary)
    return summary


def _count_existing(storage: Any, name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        return 0


def summarize(
    store: StudyStore, cfg: StudyConfig, added: int, seconds: float, recovered: list[int], interrupted: list[int]
) -> RunSummary:
    from nas.pareto import pareto_front

    trials = store.study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("full_fidelity")]
    front = []
    if done:
        idx = pareto_front([t.values for t in done], cfg.directions)
        for i in sorted(idx, key=lambda i: -done[i].values[0]):
            t = done[i]
            front.append(
                {
                    "number": t.number,
                    "placement": t.user_attrs.get("placement"),
                    **dict(zip(cfg.objective_names, t.values, strict=True)),
                    "params": t.user_attrs.get("params"),
                }
            )
    return RunSummary(cfg.name, store.url, added, counts, front, seconds, recovered, interrupted)
