"""Predictors of a pruned trial's final accuracy: the seam racing asks when it decides which pruned architecture to
promote (nas.engine.racing, ``replicates.promote_pruned``).

A pruned trial stopped at a rung; whether it may still belong on the front depends on what its accuracy *would*
have been at full fidelity. Racing asks a predictor, and a predictor is anything with these two methods:

* ``fit(finished)`` — called before each decision with the study's architectures trained to full fidelity (their
  first evaluations: ``nas.results.TrialRecord``, each with its whole ``curve``, one row per epoch, and
  ``values["accuracy"]`` the final accuracy). Learn here (a line, a learning-curve model, a Bayesian fit).
* ``predict(curve, rung)`` — a pruned trial's curve (its rows up to and including epoch ``rung``, where it was
  stopped) -> ``(predicted final accuracy, SD of that prediction)``, or None when it cannot say (too few finished
  trials, an unknown rung). The SD matters as much as the mean: racing draws the prediction from a normal of that SD
  when it estimates P(front), so an honest, wide SD keeps a close call open and a narrow one closes it.

A study names its predictor in ``replicates.predictor``: ``rung_line`` (the default, :class:`RungLine`) or
``module:attribute`` of a class with a no-argument constructor (importable where the driver runs), so the
learning-curve work that comes later plugs in without touching racing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nas.errors import ConfigError
from nas.replicates import rung_extrapolation


class Predictor(Protocol):
    """What racing needs of a predictor (see the module docstring)."""

    def fit(self, finished: Sequence[Any]) -> None: ...

    def predict(self, curve: Sequence[dict[str, Any]], rung: int) -> tuple[float, float] | None: ...


def accuracy_at(curve: Sequence[dict[str, Any]], epoch: int | None) -> float | None:
    """The validation accuracy at ``epoch`` of a stored curve, or None."""
    return next((float(row["val_acc"]) for row in curve if row.get("epoch") == epoch), None)


class RungLine:
    """The default: the least-squares line from the accuracy at the rung to the final accuracy over the finished
    architectures, with the textbook prediction interval (:func:`nas.replicates.rung_extrapolation`); one line
    per rung, fitted when first asked."""

    def __init__(self) -> None:
        self.finished: Sequence[Any] = ()
        self.lines: dict[int, Callable[[float], tuple[float, float]] | None] = {}

    def fit(self, finished: Sequence[Any]) -> None:
        self.finished, self.lines = finished, {}

    def predict(self, curve: Sequence[dict[str, Any]], rung: int) -> tuple[float, float] | None:
        if rung not in self.lines:
            pairs = [
                (acc, r.values["accuracy"]) for r in self.finished if (acc := accuracy_at(r.curve, rung)) is not None
            ]
            self.lines[rung] = rung_extrapolation(pairs)
        x = accuracy_at(curve, rung)
        line = self.lines[rung]
        return None if line is None or x is None else line(x)


BUILT_IN = {"rung_line": RungLine}


def load(spec: str, built_in: dict[str, Any], field: str) -> Any:
    """What a study's plug-in setting names: a built-in (by name) or ``module:attribute`` (imported).

    Raises:
        ConfigError: neither a built-in name nor an importable ``module:attribute`` (one line, with the fix).
    """
    if spec in built_in:
        return built_in[spec]
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"{field}: cannot load {spec!r} ({e}); use {', '.join(built_in)} or module:attribute"
        ) from None


def make_predictor(spec: str) -> Predictor:
    """The predictor ``replicates.predictor`` names (see the module docstring).

    Raises:
        ConfigError: neither a built-in name nor an importable ``module:attribute`` (one line, with the fix).
    """
    return load(spec, BUILT_IN, "replicates.predictor")()
