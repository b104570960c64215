"""Pruning a multi-objective study — the piece Optuna refuses (``Trial.should_prune`` raises for >1 objective)
and Ray's OptunaSearch ignores (landscape.md, traps 1, 3, 4).

Every decision is made by one kind of object, an ``optuna.pruners.BasePruner``, that reads the curves the engine
stores in trial user attributes; the Tune scheduler only asks it at each rung.

* :class:`ParetoPruner` — asynchronous successive halving on several objectives, as Syne Tune's MO-ASHA
  (Schmucker et al., "Multi-objective Asynchronous Successive Halving", 2021): the trials that reached a rung are
  ranked by non-dominated sorting on (accuracy at that rung, the other objectives), ties broken by crowding
  distance; a trial continues only if it is in the top ``max(1, n // eta)``.
* :class:`AccuracyPruner` — wraps any of Optuna's single-objective pruners (median, hyperband) and applies it to
  the accuracy curve, by asking it on an in-memory single-objective mirror of the study.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.engine.config import PrunerConfig, StudyConfig
from nas.engine.objectives import objective_vector
from nas.pareto import rank_for_pruning
from nas.trial_record import TrialRecord


class ParetoPruner(BasePruner):
    """MO-ASHA pruner over stored curves (see module docstring)."""

    def __init__(
        self, rungs: list[int], objectives: list[str], directions: list[str], eta: int = 3, min_trials: int = 1
    ) -> None:
        self.rungs, self.objectives, self.directions = sorted(rungs), objectives, directions
        self.eta, self.min_trials = eta, min_trials

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` stops at this rung: not in the top ``1/eta`` of the rung's trials by non-dominated rank
        (once the rung has ``min_trials``)."""
        curve = TrialRecord.of(trial).curve_rows
        if not curve or curve[-1]["epoch"] not in self.rungs:
            return False
        rung = curve[-1]["epoch"]
        me = self.vector(trial, rung)
        if me is None:
            return False
        points, numbers = [me], [trial.number]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if t.number == trial.number or TrialRecord.of(t).is_copy:
                continue  # a reused result is a copy: counting it twice would skew the rung
            v = self.vector(t, rung)
            if v is not None:
                points.append(v)
                numbers.append(t.number)
        if len(points) < self.min_trials:
            return False
        keep = max(1, len(points) // self.eta)
        order = rank_for_pruning(points, self.directions)
        return order.index(0) >= keep

    def vector(self, trial: FrozenTrial, rung: int) -> list[float] | None:
        """What a trial is ranked on at ``rung``: its objectives with the accuracy of that epoch."""
        return objective_vector(trial, self.objectives, rung)


class AccuracyPruner(BasePruner):
    """Apply an Optuna single-objective pruner to the accuracy curve of a multi-objective study.

    The inner pruner is asked on an in-memory single-objective mirror of the study (trial numbers aligned, curves
    as intermediate values, a reused copy counted once). What it records about a trial in the mirror (successive
    halving's ``completed_rung_*`` system attributes) is written back to the real trial through ``storage``, so
    its state persists as it would on its own study.
    """

    def __init__(self, inner: BasePruner, storage: optuna.storages.BaseStorage | None = None) -> None:
        self.inner, self.storage = inner, storage

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` stops at this rung, judged on accuracy alone by the wrapped Optuna pruner."""
        mirror_storage = optuna.storages.InMemoryStorage()
        mirror = optuna.create_study(
            study_name=study.study_name, direction=StudyDirection.MAXIMIZE, storage=mirror_storage, pruner=self.inner
        )
        mirror_id = mirror_storage.get_study_id_from_name(study.study_name)
        target_attrs: dict[str, Any] | None = None
        for t in study.get_trials(deepcopy=False):
            attrs = TrialRecord.of(t)
            curve = {int(r["epoch"]): float(r["val_acc"]) for r in attrs.curve_rows}
            # keep trial numbers aligned (hyperband assigns brackets by study name + number)
            state = t.state if t.state != TrialState.WAITING else TrialState.FAIL
            if attrs.is_copy and t.number != trial.number:
                curve, state = {}, TrialState.FAIL  # a copy of another trial's curve: count that curve once
            value = max(curve.values()) if state == TrialState.COMPLETE and curve else None
            if state == TrialState.COMPLETE and value is None:
                state = TrialState.FAIL
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # system attrs carry the inner pruner's own state (successive halving's completed_rung_*):
                # without them every rung would look empty and hyperband would never prune
                mirror.add_trial(
                    optuna.trial.create_trial(
                        state=state,
                        value=value,
                        params={},
                        distributions={},
                        intermediate_values=curve,
                        system_attrs=dict(t.system_attrs),
                    )
                )
            if t.number == trial.number:
                target_attrs = dict(t.system_attrs)
        if target_attrs is None:
            return False
        target_id = mirror_storage.get_trial_id_from_study_id_trial_number(mirror_id, trial.number)
        decision = self.inner.prune(mirror, mirror_storage.get_trial(target_id))
        if self.storage is not None:
            real_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.storage.get_study_id_from_name(study.study_name), trial.number
            )
            for k, v in mirror_storage.get_trial_system_attrs(target_id).items():
                if target_attrs.get(k) != v:  # persist what the inner pruner recorded
                    self.storage.set_trial_system_attr(real_id, k, v)
        return decision


def make_pruner(cfg: StudyConfig, storage: optuna.storages.BaseStorage | None = None) -> BasePruner:
    """The study's pruner; ``storage`` is where Optuna's own pruners keep their per-trial state."""
    p: PrunerConfig = cfg.pruner
    if p.name == "pareto":
        return ParetoPruner(cfg.fidelity.rungs, cfg.objective_names, cfg.directions, p.eta, p.min_trials)
    if p.name == "median":
        return AccuracyPruner(optuna.pruners.MedianPruner(n_startup_trials=p.min_trials, n_warmup_steps=0), storage)
    if p.name == "hyperband":
        return AccuracyPruner(
            optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.train.epochs, reduction_factor=p.eta),
            storage,
        )
    return optuna.pruners.NopPruner()
