"""Where a study's worker time went: every trial's phase times (:data:`nas.engine.messages.PHASES`) summed.

A trial is charged from the moment its driver hands it out to the moment it ends (``wall_s``). Of that, only the
epochs (``epochs_s``: training and evaluation) buy accuracy; the rest is the *fixed cost* every trial pays whether
it is pruned after one epoch or not — the worker's start, the throughput measurement (during which the device is
held exclusively, so other trials on it stand still), decoding the data, building the model, copying the weights,
the driver's writes, and whatever is left (``other``: Ray's scheduling and reporting, the executor's own time). A
search method that starts many short trials pays it many times; the lab charges it from these figures
(benchmarks/lab_costs.py). Standard library only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nas.trial_record import TrialRecord

FIXED = ("start_s", "measure_s", "data_s", "build_s", "weights_s", "storage_s")  # summed; exclusive_s is in measure_s
LABELS = {"start_s": "start", "measure_s": "measure", "data_s": "data", "build_s": "build", "weights_s": "weights",
          "storage_s": "storage", "other_s": "other"}  # fmt: skip


@dataclass
class WorkTime:
    """A study's worker time by phase (seconds, summed over the trials that carry phase times)."""

    trials: int = 0
    wall_s: float = 0.0
    epochs_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # FIXED phases and ``other_s``
    exclusive_s: float = 0.0  # inside measure_s: the device held by one trial
    fixed_per_trial: list[float] = field(default_factory=list)  # each trial's wall - epochs, in trial order
    without: int = 0  # trained trials without phase times (older engine, replay, a failure before any epoch)

    @property
    def fixed_s(self) -> float:
        """Worker time that bought no epoch."""
        return self.wall_s - self.epochs_s

    @property
    def fixed_share(self) -> float | None:
        return self.fixed_s / self.wall_s if self.wall_s > 0 else None


def of_phases(rows: Iterable[dict[str, Any]]) -> WorkTime:
    """Sum the phase times of trials (each a ``phases`` dict as stored)."""
    w = WorkTime(phases={k: 0.0 for k in (*FIXED, "other_s")})
    for ph in rows:
        wall, epochs = float(ph.get("wall_s", 0.0)), float(ph.get("epochs_s", 0.0))
        known = sum(float(ph.get(k, 0.0)) for k in FIXED)
        w.trials += 1
        w.wall_s += wall
        w.epochs_s += epochs
        w.exclusive_s += float(ph.get("exclusive_s", 0.0))
        for k in FIXED:
            w.phases[k] += float(ph.get(k, 0.0))
        w.phases["other_s"] += max(0.0, wall - epochs - known)
        w.fixed_per_trial.append(wall - epochs)
    return w


def of_study(study: Any) -> WorkTime:
    """The worker time of a study's trials that trained (copies cost nothing and carry none)."""
    rows, without = [], 0
    for t in study.get_trials(deepcopy=False):
        a = TrialRecord.of(t)
        if a.is_copy or a.arch_id is None or not t.state.is_finished():
            continue
        if a.phases and "wall_s" in a.phases:
            rows.append(a.phases)
        elif a.infeasible is None:
            without += 1
    w = of_phases(rows)
    w.without = without
    return w


def lines(w: WorkTime) -> list[str]:
    """``nas status``'s block: one line of totals, one of the fixed cost's parts (empty without phase times)."""
    if not w.trials or w.wall_s <= 0:
        return []
    share = w.fixed_share or 0.0
    med = statistics.median(w.fixed_per_trial)
    parts = ", ".join(f"{LABELS[k]} {v:.1f}" for k, v in sorted(w.phases.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    note = f"; {w.without} trial(s) without phase times" if w.without else ""
    return [
        f"worker time {w.wall_s:.1f} s over {w.trials} trials: epochs {w.epochs_s:.1f} s, fixed {w.fixed_s:.1f} s "
        f"({100 * share:.1f} %; median {med:.1f} s a trial){note}",
        f"  fixed by phase (s): {parts}; device held exclusively {w.exclusive_s:.1f} s (the other trials on it "
        "wait meanwhile)",
    ]


def fixed_cost_model(rows: Sequence[dict[str, Any]], workers_per_device: int) -> dict[str, float]:
    """The fixed costs a replay charges per trial, from real trials' phases (medians, seconds):

    * ``trial_s``: what every trial pays besides its epochs and a throughput measurement (a worker's later trials);
    * ``first_extra_s``: what a worker's first trial pays on top (process start, decoding the data);
    * ``measure_s``: a throughput measurement (a new architecture on the device; a cached one costs nothing), plus
      the time the other ``workers_per_device - 1`` trials on the device stood still while it held the device.
    """

    def fixed(r: dict[str, Any]) -> float:
        return float(r["wall_s"]) - float(r.get("epochs_s", 0.0)) - float(r.get("measure_s", 0.0))

    first = [fixed(r) for r in rows if int(r.get("worker_trial", 1)) == 1]
    later = [fixed(r) for r in rows if int(r.get("worker_trial", 1)) > 1]
    measured = [r for r in rows if float(r.get("exclusive_s", 0.0)) > 0]
    trial_s = statistics.median(later) if later else (statistics.median(first) if first else 0.0)
    stall = (workers_per_device - 1) * statistics.median([float(r["exclusive_s"]) for r in measured]) if measured else 0
    return {
        "trial_s": round(trial_s, 3),
        "first_extra_s": round(max(0.0, statistics.median(first) - trial_s), 3) if first else 0.0,
        "measure_s": round(
            (statistics.median([float(r["measure_s"]) for r in measured]) if measured else 0.0) + stall, 3
        ),
    }


def figure(w: WorkTime) -> Any:
    """The dashboard's panel: the study's worker time by phase (one horizontal bar each), or None without phase
    times."""
    if not w.trials or w.wall_s <= 0:
        return None
    import plotly.graph_objects as go

    parts = {"epochs": w.epochs_s, **{LABELS[k]: v for k, v in w.phases.items()}}
    names = sorted(parts, key=lambda k: parts[k])
    text = [f"{100 * parts[k] / w.wall_s:.1f} %" for k in names]
    fig = go.Figure(go.Bar(x=[parts[k] for k in names], y=names, orientation="h", text=text, textposition="outside"))
    fig.update_layout(
        title=f"Where the worker time went: {w.wall_s:.0f} s over {w.trials} trials, fixed cost "
        f"{100 * (w.fixed_share or 0):.1f} % (device held exclusively {w.exclusive_s:.0f} s, inside 'measure')",
        xaxis_title="worker-seconds", template="plotly_white", height=320,
    )  # fmt: skip
    return fig
