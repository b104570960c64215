"""The study's sampler: Optuna's samplers, configured from the study file, with a TPE made safe for the learning
curves the engine stores on PRUNED trials of a multi-objective study (optuna#5260)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.engine.config import StudyConfig


class _PrunedWithoutCurves:
    """A read-only view of a study whose PRUNED trials show no intermediate values (see MultiObjectiveTPE)."""

    def __init__(self, study: Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        out = []
        for t in self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache):
            if t.state == TrialState.PRUNED and t.intermediate_values:
                t = copy.copy(t)  # shallow: the stored trial is not touched
                t.intermediate_values = {}
            out.append(t)
        return out


class MultiObjectiveTPE(optuna.samplers.TPESampler):
    """Optuna's TPE (Bergstra et al., NeurIPS 2011; MOTPE, Ozaki et al., GECCO 2020) made safe for the curves we
    store: TPE ranks PRUNED trials by their last intermediate value through ``study.direction``, which raises on a
    multi-objective study (optuna#5260). MOTPE does not use pruned trials' steps anyway, so it sees them without
    intermediate values (all ranked alike, after the COMPLETE ones)."""

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if study._is_multi_objective():
            study = _PrunedWithoutCurves(study)  # type: ignore[assignment]
        return super()._sample(study, trial, search_space)


def make_sampler(cfg: StudyConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, reseeded by the number of trials already stored so a resumed run does not re-propose
    the points of the first run (optuna#3255)."""
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
        return optuna.samplers.RandomSampler(**kw)
