"""nas.engine.stops: the one place a run's stop rules live — each rule stops sampling with its reason."""

from __future__ import annotations

from nas.engine.stops import StopRules


def test_the_trial_budget_and_the_deadline_on_the_executors_clock() -> None:
    s = StopRules(n_trials=2, wall_time_s=10.0)
    assert s.deadline is None  # not started
    s.start(100.0)
    s.start(150.0)  # a second start keeps the first
    assert s.deadline == 110.0 and not s.time_up(109.9) and s.reason is None
    s.sampled()
    s.sampled()
    assert not s.trials_left() and s.added == 2
    assert s.time_up(110.0) and s.reason == "budget.wall_time_s (10 s) reached" and not s.is_error
    assert StopRules(n_trials=None).trials_left() and not StopRules().time_up(1e12)


def test_infeasible_samples_in_a_row_stop_as_an_error_and_a_feasible_one_resets_them() -> None:
    s = StopRules(max_rejects=3)
    s.rejected("too big", "tiny")
    s.rejected("too big", "tiny")
    s.sampled()  # the count starts again
    s.rejected("too big", "tiny")
    s.rejected("too big", "tiny")
    assert s.reason is None and s.added == 1
    s.rejected("params 12 > max_params 10", "tiny")
    assert s.is_error and "the last 3 proposals were all infeasible (last: params 12 > max_params 10)" in s.reason
    assert "space 'tiny'" in s.reason


def test_already_evaluated_proposals_in_a_row_stop_as_exhausted() -> None:
    s = StopRules(max_reuses=2)
    s.reused(lambda: 7)
    s.trained()  # the count starts again
    s.reused(lambda: 7)
    assert s.reason is None
    s.reused(lambda: 7)
    assert not s.is_error and "proposed 2 already-evaluated architectures in a row, having tried 7" in s.reason
