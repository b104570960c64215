"""When a run of a study stops: the one place its stop rules live.

A run (one ``nas search``, one replay) adds trials until one of these says stop; the driver asks
:meth:`StopRules.may_add` before it samples, and records why sampling stopped (:attr:`StopRules.reason`):

* ``budget.n_trials`` — trials this run may add (infeasible samples are not counted: they never train);
* ``budget.wall_time_s`` — seconds of the *executor's* clock since the run started (wall time on Ray, simulated
  seconds in a replay). The driver samples nothing after the deadline; the executor ends the trials still running at
  :meth:`StopRules.deadline` (Ray Tune's ``time_budget_s``, the replay at that simulated time), and the driver fails
  them to be retried by the next run;
* the space: a grid sampler has proposed every point (its ``is_exhausted``);
* :data:`MAX_CONSECUTIVE_REJECTS` infeasible samples in a row stop the run as an **error** (the feasible part of the
  space is tiny: the user must relax constraints or narrow the space);
* :data:`MAX_CONSECUTIVE_REUSES` already-evaluated architectures in a row stop it as exhausted (the sampler keeps
  proposing what was evaluated).

Queued trials (a seed replicate racing asked for, a retry) still run after sampling stopped, within ``n_trials``.
What stops a *trial* early is the pruner's (nas.engine.pruners); how much racing may replicate is its budget
(``replicates.budget_share``, nas.engine.racing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONSECUTIVE_REJECTS = 50
# NAS_MAX_REUSES_IN_A_ROW: a larger value lets a run go on proposing into a nearly exhausted space (a stress test of
# several drivers on one small table does; a search would only burn proposals)
MAX_CONSECUTIVE_REUSES = int(os.environ.get("NAS_MAX_REUSES_IN_A_ROW", 50))


@dataclass
class StopRules:
    """The stop rules of one run and its counters (see the module docstring)."""

    n_trials: int | None = None  # trials this run may add (None: no limit but the other rules)
    wall_time_s: float | None = None  # seconds of the executor's clock from :meth:`start`
    max_rejects: int = field(default_factory=lambda: MAX_CONSECUTIVE_REJECTS)
    max_reuses: int = field(default_factory=lambda: MAX_CONSECUTIVE_REUSES)
    added: int = 0
    rejects_in_a_row: int = 0
    reuses_in_a_row: int = 0
    reason: str | None = None  # why sampling stopped before the budget was spent
    is_error: bool = False  # the reason is the user's to fix (the run exits non-zero)
    started_at: float | None = None

    def start(self, now: float) -> None:
        """The run starts at ``now`` (the executor's clock)."""
        if self.started_at is None:
            self.started_at = now

    @property
    def deadline(self) -> float | None:
        """The executor's clock at which the run ends (``budget.wall_time_s``), or None."""
        if self.wall_time_s is None or self.started_at is None:
            return None
        return self.started_at + self.wall_time_s

    def trials_left(self) -> bool:
        """Whether this run may still add a trial by ``n_trials``."""
        return self.n_trials is None or self.added < self.n_trials

    def time_up(self, now: float) -> bool:
        """Whether the deadline has passed (then sampling stops, with the reason)."""
        d = self.deadline
        if d is not None and now >= d and self.reason is None:
            self.stop(f"budget.wall_time_s ({self.wall_time_s:g} s) reached")
        return d is not None and now >= d

    def stop(self, reason: str, error: bool = False) -> None:
        self.reason, self.is_error = reason, error

    def rejected(self, reason: str, space_name: str) -> None:
        """A sample was infeasible: after :attr:`max_rejects` in a row the run stops as an error."""
        self.rejects_in_a_row += 1
        if self.rejects_in_a_row >= self.max_rejects:
            self.stop(
                f"the last {self.rejects_in_a_row} proposals were all infeasible (last: {reason}); only a tiny part "
                f"of space '{space_name}' meets its constraints: relax constraints or narrow the space",
                error=True,
            )

    def sampled(self) -> None:
        """A feasible sample: it counts against ``n_trials``."""
        self.rejects_in_a_row = 0
        self.added += 1

    def reused(self, distinct_tried: Callable[[], int]) -> None:
        """A sample was an architecture already evaluated (or in training): after :attr:`max_reuses` in a row the run
        stops as exhausted (``distinct_tried``: how many distinct architectures the study has, for the reason)."""
        self.reuses_in_a_row += 1
        if self.reuses_in_a_row >= self.max_reuses:
            self.stop(
                f"the sampler proposed {self.reuses_in_a_row} already-evaluated architectures in a row, having "
                f"tried {distinct_tried()} distinct architectures: the space looks exhausted, or the sampler has "
                "converged on what it has seen (sampler: random explores the rest; a pruned architecture is not "
                "trained again)"
            )

    def trained(self) -> None:
        """A sample goes to training."""
        self.reuses_in_a_row = 0
