"""Racing: seed replicates where the front depends on them (a study's ``replicates:`` block).

After every trial that ends, the driver asks :meth:`Racer.next_replicate` whether to retrain one architecture with
another training seed before sampling a new one. It estimates each evaluated architecture's probability of being on
the front (:func:`nas.replicates.front_probability`: resampling the validation images and the seed noise) and picks
the least settled one — P(front) nearest 1/2, not within ``settled`` of 0 or 1 — that has fewer than
``max_per_arch`` seeds and none queued or training. It stops when every architecture is settled, or when
replicates would exceed ``budget_share`` of the study's trained trials (the replicate budget). The idea is the
racing of Maron & Moore ("Hoeffding races", NIPS 1993) and of irace (López-Ibáñez et al., 2016): spend more
evaluations only on the candidates the evidence cannot yet separate. ``policy: every`` is the costly baseline
instead: every architecture gets ``max_per_arch`` seeds, the oldest first, within the same budget.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from nas import results
from nas.engine.config import StudyConfig
from nas.engine.store import StudyStore
from nas.replicates import front_probability, settled
from nas.trial_attrs import TrialAttrs

DRAWS = 400  # resampled worlds per decision: P(front) to about ±0.025


class Racer:
    """Decides the study's next seed replicate (see the module docstring); ``last_p`` is the last P(front) by the
    number of each architecture's first trial."""

    def __init__(self, cfg: StudyConfig, store: StudyStore) -> None:
        assert cfg.replicates is not None
        self.rc, self.store = cfg.replicates, store
        self.last_p: dict[int, float] = {}
        self._looked_at = -1  # finished trials when it last decided: nothing new, nothing to decide
        self._p_of = -1  # full-fidelity evaluations P(front) was last estimated from (a pruned trial changes none)
        self._records: dict[int, results.TrialRecord] = {}  # finished trials' records, decoded once
        self._attrs: dict[int, TrialAttrs] = {}  # finished trials' attributes, decoded once

    def attrs(self, t: FrozenTrial) -> TrialAttrs:
        """The trial's attributes; a finished trial's are decoded once (Optuna refuses to change a finished trial):
        racing looks at every trial after every trial, and a long search has thousands (most of them copies)."""
        a = self._attrs.get(t.number)
        if a is None:
            a = TrialAttrs.of(t)
            if t.state.is_finished():
                self._attrs[t.number] = a
        return a

    def budget_left(self, trials: list[FrozenTrial]) -> bool:
        """Whether one more replicate stays within ``budget_share`` of the trained trials (itself included)."""
        trained = [t for t in trials if _trained(t, self.attrs(t))]
        replicates = sum(1 for t in trained if self.attrs(t).replicate is not None)
        return replicates + 1 <= self.rc.budget_share * (len(trained) + 1)

    def next_replicate(self) -> tuple[FrozenTrial, int] | None:
        """(the first trial of the architecture to replicate, the replicate's seed index k), or None."""
        trials = self.store.study.get_trials(deepcopy=False)
        # what can change a decision: a trained trial that ends (a reused copy ends at once and changes nothing)
        finished = sum(1 for t in trials if t.state.is_finished() and not self.attrs(t).is_copy)
        if finished == self._looked_at or not self.budget_left(trials):
            return None
        self._looked_at = finished
        recs = results.records(self.store.study, self._records)
        objectives = results.objectives_of(self.store.study)
        archs = results.eligible(recs, objectives)
        every = self.rc.policy == "every"  # every architecture its seeds, oldest first: no P(front) needed
        evaluated = sum(1 for r in recs if r.state == "COMPLETE" and r.full_fidelity)
        if not every and evaluated != self._p_of:
            self.last_p = front_probability(archs, objectives, self.rc.prior_seed_sd, DRAWS, seed=finished)
            self._p_of = evaluated
        pending = {
            self.attrs(t).planned_arch or self.attrs(t).arch_id
            for t in trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING) and self.attrs(t).replicate is not None
        }
        by_number = {r.number: r for r in recs}
        open_ = [
            a
            for a in archs
            if (every or not settled(self.last_p[a.number], self.rc.settled))
            and a.seeds < self.rc.max_per_arch
            and a.arch_id not in pending
        ]
        if not open_:
            return None
        if every:
            pick = min(open_, key=lambda a: a.number)
        else:
            pick = max(open_, key=lambda a: (min(self.last_p[a.number], 1 - self.last_p[a.number]), -a.seeds))
        k = 1 + max(by_number[n].replicate or 0 for n in pick.seed_trials)
        return self.store.frozen(pick.number), k


def _trained(t: FrozenTrial, a: TrialAttrs) -> bool:
    """A trial that trained (or trains) an architecture itself: not a copy, not rejected before training."""
    copy = a.is_copy or a.waiting_for is not None  # a waiter becomes a copy of the trial it waits for
    return a.arch_id is not None and not copy and not a.infeasible and t.state != TrialState.WAITING
