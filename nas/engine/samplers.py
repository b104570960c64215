"""The study's sampler: Optuna's samplers, configured from the study file, with a TPE made safe for the learning
curves the engine stores on PRUNED trials of a multi-objective study (optuna#5260)."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from nas.engine.config import StudyConfig
from nas.engine.optuna_adapter import MultiObjectiveTPE
from nas.errors import ConfigError
from nas.space import SearchSpace


def make_sampler(cfg: StudyConfig, n_existing: int, space: SearchSpace | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler, reseeded by the number of trials already stored so a resumed run does not re-propose
    the points of the first run (optuna#3255). ``grid`` needs the space (its full parameter grid)."""
    seed = cfg.seed + n_existing
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
            return optuna.samplers.GridSampler(grid, **kw)
        return optuna.samplers.RandomSampler(**kw)
