"""The one place that relies on Optuna internals (everything else uses Optuna's public API only).

``MultiObjectiveTPE`` works around optuna#5260: TPE ranks PRUNED trials by their last intermediate value through
``study.direction``, which raises on a multi-objective study — and the engine stores learning curves as
intermediate values so that optuna-dashboard can draw them. It overrides ``TPESampler._sample`` and hands it a
view of the study whose ``_get_trials`` hides pruned trials' intermediate values. Both are private members;
tests/test_pruners.py pins their signatures for the supported Optuna range (pyproject: optuna>=4.5,<6), so an
Optuna release that changes them fails the suite instead of failing a study.

``OwnedStorage`` makes a trial owned from the moment it exists (several drivers on one PostgreSQL study): Optuna's
``Study.ask`` stores a RUNNING trial — created, or claimed from the WAITING queue — and only then could a driver
write who runs it, a window in which another driver's stale-trial recovery saw an ownerless RUNNING trial and failed
it. Here the owner attributes are written in the same database transaction as the trial's creation (a template
trial, through ``_create_new_trial``, the method ``_CachedStorage`` calls) and as the WAITING -> RUNNING claim (the
same row-locked check as ``RDBStorage.set_trial_state_values``, plus the attribute rows). Private members used:
``RDBStorage._create_new_trial``, ``_set_trial_attr_without_commit``, ``optuna.storages._rdb.storage.
_create_scoped_session`` and ``optuna.storages._rdb.models.TrialModel``/``TrialUserAttributeModel``; pinned by
tests/test_lifecycle.py.
"""

from __future__ import annotations

import copy
from datetime import datetime
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


class OwnedStorage(optuna.storages.RDBStorage):
    """An RDB storage whose new and claimed trials carry ``owner`` attributes from birth (see the module docstring).

    ``owner`` is set by the driver that uses this storage (``None``: plain ``RDBStorage`` behaviour); a queued trial
    (``enqueue_trial``: a template in state WAITING) is not owned until it is claimed.
    """

    owner: dict[str, Any] | None = None

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is None and self.owner:
            template_trial = FrozenTrial(
                number=-1,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs=dict(self.owner),
                system_attrs={},
                intermediate_values={},
                trial_id=-1,
            )
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Optuna's state change; a WAITING -> RUNNING claim by a driver also writes its owner, in the same
        transaction (no other driver can ever see the claimed trial without an owner)."""
        if state != TrialState.RUNNING or not self.owner:
            return super().set_trial_state_values(trial_id, state, values)
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            self.check_trial_is_updatable(trial_id, trial.state)
            if trial.state != TrialState.WAITING:
                return False  # another driver claimed it first
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
            for key, value in self.owner.items():
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
        return True
