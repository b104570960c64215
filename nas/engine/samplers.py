"""The study's sampler: Optuna's samplers, configured from the study file, with a TPE made safe for the learning
curves the engine stores on PRUNED trials of a multi-objective study (optuna#5260).

Besides nas/engine/optuna_adapter.py, the one module that relies on an Optuna internal: the system attributes
Optuna's GridSampler writes on each trial it proposes, ``grid_id`` (the point's index in the sampler's numbering:
:func:`grid_numbering`) and ``search_space`` (the grid it belongs to); the sampler skips a point that a trial of the
same grid already has. Everyone else reads and writes them through :func:`grid_id_of`, :func:`grid_space_of` and
:func:`grid_point_attrs` (tests/test_house.py); tests/test_lab_seeds.py pins the names (a trial added with
``grid_point_attrs`` is a point the grid sampler skips) and tests/test_replay.py the numbering."""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.engine.config import StudyConfig
from nas.engine.optuna_adapter import MultiObjectiveTPE
from nas.errors import ConfigError
from nas.space import SearchSpace


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask/tell: its ``after_trial`` hook calls ``Study.stop()`` on the last point, which
    raises outside ``Study.optimize``, and its ``is_exhausted`` stays false while the last points run, so an
    ask/tell driver would keep asking (and get repeats). Here the driver stops on ``is_exhausted``: every grid
    point proposed (finished or running) and no queued retry still waiting."""

    def __init__(self, search_space: dict[str, list[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self.size = math.prod(len(v) for v in search_space.values())
        self.param_names, self.grid_points = grid_numbering(search_space, seed)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        """Nothing: Optuna's hook would call ``Study.stop()`` on the last point (see the class docstring)."""
        return None

    def is_exhausted(self, study: optuna.Study) -> bool:
        """Whether every point of the grid has been proposed in this study."""
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return False
        return len({grid_id_of(t) for t in trials} - {None}) >= self.size


# Optuna's names (optuna.samplers.GridSampler, 4.x): see the module docstring
_GRID_ID, _GRID_SPACE = "grid_id", "search_space"


def grid_id_of(trial: FrozenTrial) -> int | None:
    """Which grid point ``trial`` is (its index in :func:`grid_numbering`), or None: no grid sampler proposed it."""
    return trial.system_attrs.get(_GRID_ID)


def grid_space_of(trial: FrozenTrial) -> dict[str, list[Any]] | None:
    """The grid (parameter -> its values) a grid trial was proposed from, as the sampler recorded it, or None."""
    return trial.system_attrs.get(_GRID_SPACE)


def grid_point_attrs(grid_id: int, search_space: dict[str, list[Any]]) -> dict[str, Any]:
    """The system attributes that make a trial grid point ``grid_id`` of ``search_space``, as the grid sampler writes
    them on the trials it proposes: a trial stored with them (``create_trial(system_attrs=...)``) is a point the grid
    sampler of that search space does not propose again. The grid is stored as Optuna keeps it (parameters in sorted
    order, their values as lists), so it compares equal to the sampler's own."""
    return {_GRID_ID: grid_id, _GRID_SPACE: {k: list(v) for k, v in sorted(search_space.items())}}


def grid_numbering(search_space: dict[str, list[Any]], seed: int | None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """How a grid study numbers its points (the ``grid_id`` each trial records): the parameters in sorted order,
    every combination of their values (``itertools.product``), shuffled by ``numpy.random.RandomState(seed or 0)``.
    Ours, written down so the lab and the table builds number points without reading the sampler's private state;
    tests/test_replay.py checks that Optuna's GridSampler numbers them the same."""
    names = sorted(search_space)
    points = list(itertools.product(*[list(search_space[k]) for k in names]))
    np.random.RandomState(seed or 0).shuffle(points)
    return names, points


def sampler_seed(seed: int, n_existing: int, stream: int = 0) -> int:
    """The seed of one driver's sampler: the study's seed plus the trials already stored, so a resumed run does not
    re-propose the points of the first run (optuna#3255); a study's later drivers (``stream`` >= 1: its driver
    number, nas.engine.store.register_driver) each get their own stream, so drivers started together do not all
    propose the same architectures. The first driver of a study keeps ``seed + n_existing``: one driver alone
    reproduces the runs made before several drivers were supported."""
    if stream == 0:
        return seed + n_existing
    digest = hashlib.sha256(f"{seed}:{n_existing}:{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(
    cfg: StudyConfig, n_existing: int, space: SearchSpace | None = None, stream: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded by :func:`sampler_seed`; ``grid`` keeps the study's seed and needs the space
    (its full parameter grid)."""
    seed = sampler_seed(cfg.seed, n_existing, stream)
    s = cfg.sampler
    kw: dict[str, Any] = {"seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.name == "tpe":
            return MultiObjectiveTPE(
                n_startup_trials=s.n_startup_trials, multivariate=True, group=True, constant_liar=True, **kw
            )
        if s.name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=max(4, s.n_startup_trials), **kw)
        if s.name == "gp":  # needs scipy: a dependency of the search extra
            return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, **kw)
        if s.name == "grid":
            if space is None:
                raise ConfigError("sampler.name: 'grid' needs the search space; this caller passed none")
            grid = space.param_grid()
            if not grid:
                raise ConfigError("sampler.name: 'grid' on a space with a single architecture; use random")
            return GridSampler(grid, seed=cfg.seed)  # not reseeded: the seed shuffles the grid ids, which must
            # name the same points in every run of the study (a reseeded resume trained repeats and skipped points)
        return optuna.samplers.RandomSampler(**kw)
