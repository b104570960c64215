"""The study engine: a study file in, trials on Ray Tune, every result in an Optuna RDB study.

Public names are re-exported here (Optuna's habit) but imported on first use, so that the worker's own modules
(``nas.engine.trainable``, ``nas.engine.messages``) load without Optuna, SQLAlchemy or Ray — the GPU suite runs the
worker code on machines that have none of them. The Ray adapters (``nas.engine.tune``) are imported only by
:func:`run_study`, after it has decided how a local Ray runtime must bind (``local_ray_on_loopback``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccuracyPruner": "nas.engine.pruners",
    "Driver": "nas.engine.driver",
    "EpochReport": "nas.engine.messages",
    "ExecTrial": "nas.engine.executor",
    "Executor": "nas.engine.executor",
    "Lifecycle": "nas.engine.lifecycle",
    "Prepared": "nas.engine.executor",
    "Racer": "nas.engine.racing",
    "ReplayExecutor": "nas.engine.replay",
    "PoolExecutor": "nas.engine.pool",
    "Policy": "nas.engine.policies",
    "Predictor": "nas.engine.predictors",
    "RaceView": "nas.engine.policies",
    "StopRules": "nas.engine.stops",
    "Table": "nas.engine.replay",
    "TrialFeed": "nas.engine.executor",
    "guarded_reports": "nas.engine.trainable",
    "MultiObjectiveTPE": "nas.engine.optuna_adapter",
    "ParetoPruner": "nas.engine.pruners",
    "RunSummary": "nas.engine.run",
    "RunningTrial": "nas.engine.driver",
    "StudyConfig": "nas.engine.config",
    "StudyStore": "nas.engine.store",
    "TrialPayload": "nas.engine.messages",
    "read_study_file": "nas.engine.config",
    "make_pruner": "nas.engine.pruners",
    "make_sampler": "nas.engine.samplers",
    "objective_vector": "nas.engine.objectives",
    "run_study": "nas.engine.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nas.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
