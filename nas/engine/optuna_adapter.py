"""The one place that relies on Optuna internals (everything else uses Optuna's public API only).

``MultiObjectiveTPE`` works around optuna#5260: TPE ranks PRUNED trials by their last intermediate value through
``study.direction``, which raises on a multi-objective study — and the engine stores learning curves as
intermediate values so that optuna-dashboard can draw them. It overrides ``TPESampler._sample`` and hands it a
view of the study whose ``_get_trials`` hides pruned trials' intermediate values. Both are private members;
tests/test_pruners.py pins their signatures for the supported Optuna range (pyproject: optuna>=4.5,<6), so an
Optuna release that changes them fails the suite instead of failing a study.
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


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
        if len(study.directions) > 1:
            study = _PrunedWithoutCurves(study)  # type: ignore[assignment]
        return super()._sample(study, trial, search_space)
