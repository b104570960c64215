"""The study engine: a study file in, trials on Ray Tune, every result in an Optuna RDB study.

Public names are re-exported here (Optuna's habit); the Ray adapters (``nas.engine.tune``) are imported only by
:func:`run_study`, after it has decided how the local Ray runtime must bind (see ``local_ray_on_loopback``).
"""

from nas.engine.config import StudyConfig, load_study
from nas.engine.driver import Driver, RunningTrial
from nas.engine.messages import EpochReport, TrialPayload
from nas.engine.objectives import objective_vector
from nas.engine.optuna_adapter import MultiObjectiveTPE
from nas.engine.pruners import AccuracyPruner, ParetoPruner, make_pruner
from nas.engine.run import RunSummary, run_study
from nas.engine.samplers import make_sampler
from nas.engine.store import StudyStore

__all__ = [
    "AccuracyPruner",
    "Driver",
    "EpochReport",
    "MultiObjectiveTPE",
    "ParetoPruner",
    "RunSummary",
    "RunningTrial",
    "StudyConfig",
    "StudyStore",
    "TrialPayload",
    "load_study",
    "make_pruner",
    "make_sampler",
    "objective_vector",
    "run_study",
]
