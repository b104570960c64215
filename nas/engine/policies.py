"""Replicate policies: the seam racing asks *which architecture gets the next seed replicate* (nas.engine.racing,
``replicates.policy``).

Racing owns the bookkeeping — the replicate budget (``budget_share``, in compute), the seeds each architecture has,
the replicates queued or training (here or by another driver), the decoded-once trial records. At each decision it
hands a policy a :class:`RaceView` of the study and asks for its **candidates**: the architectures that may take a
replicate, most urgent first; racing takes the first that still has a seed to give (fewer than ``max_per_arch``) and
none queued. A policy is anything with these members:

* ``p_front`` — a dict, first trial number -> the P(front) the last decision used (``{}`` when the policy uses none):
  the driver logs it beside each replicate, ``nas status`` shows the study's own;
* ``candidates(view)`` — the ordered candidates. A candidate is a :class:`~nas.trial_record.TrialRecord`: a merged
  architecture of ``view.archs`` (``seeds`` its seeds so far), or a pruned trial to promote (its record with the
  predicted accuracy), which racing trains to full fidelity with another seed.

A study names its policy in ``replicates.policy``: ``race`` (:class:`Race`, the default), ``every``
(:class:`Every`, the costly baseline) or ``module:attribute`` of a class whose constructor takes the study's
:class:`~nas.engine.config.ReplicatesConfig` (importable where the driver runs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.trial import FrozenTrial, TrialState

from nas.engine.objectives import objective_vector
from nas.engine.predictors import load, make_predictor
from nas.layout import Objective
from nas.replicates import front_probability, settled
from nas.trial_record import TrialRecord

DRAWS = 400  # resampled worlds per decision: P(front) to about ±0.025


@dataclass
class RaceView:
    """The study as racing sees it at one decision."""

    trials: list[FrozenTrial]  # every trial, as stored
    recs: list[TrialRecord]  # ... as records (nas.results.records)
    archs: list[TrialRecord]  # the evaluated architectures, one merged record each (nas.results.eligible)
    objectives: list[Objective]
    finished: int  # trained trials that have ended (a changing seed for P(front)'s draws)
    record: Any  # FrozenTrial -> TrialRecord, decoded once (racing's cache)


class Policy(Protocol):
    """What racing needs of a replicate policy (see the module docstring)."""

    p_front: dict[int, float]

    def candidates(self, view: RaceView) -> list[TrialRecord]: ...


class Every:
    """``policy: every``: every architecture gets ``max_per_arch`` seeds, the oldest first (no P(front))."""

    def __init__(self, rc: Any) -> None:
        self.p_front: dict[int, float] = {}

    def candidates(self, view: RaceView) -> list[TrialRecord]:
        return sorted(view.archs, key=lambda a: a.number)


class Race:
    """``policy: race`` (the default): the architectures whose membership of the front is unsettled, the least
    settled first — P(front) nearest 1/2, not within ``settled`` of 0 or 1; with ``promote_pruned`` the pruned
    architectures that the study's predictor (nas.engine.predictors) leaves possibly on the front, as urgent as a coin
    flip (a likely member cannot be reported before it is trained). P(front) is estimated again only when a new
    architecture reached full fidelity."""

    def __init__(self, rc: Any) -> None:
        self.rc = rc
        self.predictor = make_predictor(rc.predictor)
        self.p_front: dict[int, float] = {}
        self._p_of = -1  # full-fidelity evaluations P(front) was last estimated from (pruned ones join at the next)
        self._promotable: list[TrialRecord] = []  # pruned architectures in the race, accuracy predicted
        self._at_rung: dict[int, list[float] | None] = {}  # a pruned trial's objectives at its rung, read once

    def candidates(self, view: RaceView) -> list[TrialRecord]:
        evaluated = sum(1 for r in view.recs if r.state == "COMPLETE" and r.full_fidelity)
        if evaluated != self._p_of:
            self._promotable, sds = self.promotable(view)
            race = [*view.archs, *self._promotable]
            self.p_front = front_probability(race, view.objectives, self.rc.prior_seed_sd, DRAWS, view.finished,
                                             [None] * len(view.archs) + sds)  # fmt: skip
            self._p_of = evaluated
        promoted = {a.number for a in self._promotable}

        def urgency(a: TrialRecord) -> float:
            p = self.p_front[a.number]
            return min(p, 0.5) if a.number in promoted else min(p, 1 - p)

        def unsettled(a: TrialRecord) -> bool:
            p = self.p_front[a.number]
            return p > 1 - self.rc.settled if a.number in promoted else not settled(p, self.rc.settled)

        open_ = [a for a in [*view.archs, *self._promotable] if unsettled(a)]
        return sorted(open_, key=lambda a: (urgency(a), -a.seeds), reverse=True)

    def promotable(self, view: RaceView) -> tuple[list[TrialRecord], list[float]]:
        """The pruned architectures that race (``promote_pruned``), each as its pruned trial's record with the
        objectives at its rung and the accuracy its predicted final one (the study's predictor, fitted on the
        architectures trained to full fidelity), and the SDs of those predictions; none the predictor cannot
        predict (too few finished architectures)."""
        names = [o.name for o in view.objectives]
        if not self.rc.promote_pruned or "accuracy" not in names:
            return [], []
        done = {a.arch_id for a in view.archs}
        firsts = [r for r in view.recs if r.state == "COMPLETE" and r.full_fidelity and r.reused_from is None]
        firsts = [r for r in firsts if r.replicate is None and "accuracy" in r.values]
        out, sds = [], []
        by_number = {r.number: r for r in view.recs}
        self.predictor.fit(firsts)
        for t in view.trials:
            a = view.record(t)
            if t.state != TrialState.PRUNED or a.is_copy or a.replicate is not None or a.arch_id in done:
                continue
            if t.number not in self._at_rung:
                self._at_rung[t.number] = objective_vector(t, names, a.pruned_at)
            v = self._at_rung[t.number]
            guess = None if v is None else self.predictor.predict(by_number[t.number].curve, a.pruned_at)
            if guess is None:
                continue
            mean, sd = guess
            values = {n: (mean if n == "accuracy" else x) for n, x in zip(names, v, strict=True)}
            out.append(dataclasses.replace(by_number[t.number], values=values))
            sds.append(sd)
            done.add(a.arch_id)
        return out, sds


BUILT_IN = {"race": Race, "every": Every}


def make_policy(rc: Any) -> Policy:
    """The policy ``replicates.policy`` names (see the module docstring).

    Raises:
        ConfigError: neither a built-in name nor an importable ``module:attribute`` (one line, with the fix).
    """
    return load(rc.policy, BUILT_IN, "replicates.policy")(rc)
