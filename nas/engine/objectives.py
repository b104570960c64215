"""A trial's objective vector, read from what the engine stores (docs/storage.md): accuracy from the ``curve`` at
a given epoch, throughput/latency from the ``throughput`` measurement, params/flops from the trial's attributes.

The one place that maps objective names to stored values; the driver (final values), the pruners (values at a
rung) and the replay of a tabulated benchmark all read objectives through it.
"""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial

from nas.trial_record import TrialRecord


def curve_at(trial: FrozenTrial, epoch: int) -> float | None:
    """The trial's validation accuracy at ``epoch`` (None if that epoch was not recorded)."""
    for row in TrialRecord.of(trial).curve_rows:
        if row.get("epoch") == epoch:
            return float(row["val_acc"])
    return None


def objective_vector(trial: FrozenTrial, objectives: list[str], epoch: int) -> list[float] | None:
    """The trial's objectives with accuracy taken at ``epoch``; None when something is not measured yet."""
    attrs = TrialRecord.of(trial)
    tp = attrs.throughput or {}
    out = []
    for name in objectives:
        if name == "accuracy":
            v = curve_at(trial, epoch)
        elif name == "throughput":
            v = tp.get("median")
        elif name == "latency":
            v = tp.get("latency_ms_b1")
        else:
            v = getattr(attrs, name, None)  # params, flops
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        out.append(float(v))
    return out
