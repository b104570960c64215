"""Racing: seed replicates where the front depends on them (a study's ``replicates:`` block).

After every trial that ends, the driver asks :meth:`Racer.next_replicate` whether to retrain one architecture with
another training seed before sampling a new one. It estimates each evaluated architecture's probability of being on
the front (:func:`nas.replicates.front_probability`: resampling the validation images and the seed noise) and picks
the least settled one — P(front) nearest 1/2, not within ``settled`` of 0 or 1 — that has fewer than
``max_per_arch`` seeds and none queued or training. With ``promote_pruned`` the pruned architectures race too:
a pruned architecture's final accuracy is predicted by the study's predictor (``replicates.predictor``;
nas.engine.predictors documents the seam: by default a line from the rung it was pruned at, fitted on the
architectures trained to full fidelity), and one that
prediction leaves possibly on the front (P(front) above ``1 - settled``: a likely member cannot be reported before
it is trained, so it is the most urgent) is trained to full fidelity with another seed, never pruned — the
pruner's early ranking is noisy, and a front member it stopped is otherwise lost for good (asynchronous successive
halving promotes paused configurations for the same reason: Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020). It stops when every architecture is settled, or when replicates would exceed
``budget_share`` of the study's training epochs (the replicate budget, in compute). The idea is the racing of Maron &
Moore ("Hoeffding races", NIPS 1993) and of irace (López-Ibáñez et al., 2016): spend more
evaluations only on the candidates the evidence cannot yet separate. ``policy: every`` is the costly baseline
instead: every architecture gets ``max_per_arch`` seeds, the oldest first, within the same budget.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from nas import results
from nas.engine.config import StudyConfig
from nas.engine.objectives import objective_vector
from nas.engine.predictors import make_predictor
from nas.engine.store import StudyStore
from nas.replicates import front_probability, settled
from nas.trial_record import TrialRecord

if TYPE_CHECKING:
    from nas.layout import Objective

DRAWS = 400  # resampled worlds per decision: P(front) to about ±0.025


class Racer:
    """Decides the study's next seed replicate (see the module docstring); ``last_p`` is the last P(front) by the
    number of each architecture's first trial."""

    def __init__(self, cfg: StudyConfig, store: StudyStore) -> None:
        assert cfg.replicates is not None
        self.rc, self.store, self.epochs = cfg.replicates, store, cfg.train.epochs
        self.predictor = make_predictor(self.rc.predictor)  # a pruned trial's final accuracy (nas.engine.predictors)
        self.last_p: dict[int, float] = {}
        self._looked_at = -1  # finished trials when it last decided: nothing new, nothing to decide
        self._p_of = -1  # full-fidelity evaluations P(front) was last estimated from (pruned ones join at the next)
        self._promotable: list[results.TrialRecord] = []  # pruned architectures in the race, accuracy predicted
        self._at_rung: dict[int, list[float] | None] = {}  # a pruned trial's objectives at its rung, read once
        self._records: dict[int, results.TrialRecord] = {}  # finished trials' records, decoded once
        self._attrs: dict[int, TrialRecord] = {}  # finished trials' attributes, decoded once
        self._elsewhere: set[tuple[str | None, int]] = set()  # (arch, k): replicates another driver queued first

    def attrs(self, t: FrozenTrial) -> TrialRecord:
        """The trial's attributes; a finished trial's are decoded once (Optuna refuses to change a finished trial):
        racing looks at every trial after every trial, and a long search has thousands (most of them copies)."""
        a = self._attrs.get(t.number)
        if a is None:
            a = TrialRecord.of(t)
            if t.state.is_finished():
                self._attrs[t.number] = a
        return a

    def budget_left(self, trials: list[FrozenTrial]) -> bool:
        """Whether one more replicate keeps the replicates' training epochs within ``budget_share`` of every epoch
        the study has trained or is training (the new replicate's included). Compute, not trials: a trial pruned
        after one epoch costs one epoch and a replicate (never pruned) all of them, so counting trials let the
        replicates take far more of the compute than the share says (issue 28)."""
        replicates = others = 0
        for t in trials:
            a = self.attrs(t)
            if not _trained(t, a):
                continue
            if a.replicate is not None:
                replicates += self.epochs  # trains to the end: committed once started
            else:
                others += a.fidelity or 0
        return replicates + self.epochs <= self.rc.budget_share * (replicates + others + self.epochs)

    def queued_elsewhere(self, source: FrozenTrial, k: int) -> None:
        """Another driver queued replicate ``k`` of ``source``'s architecture first: never decide on it again (its
        trial, once it ends, lets the decisions move on; if it fails, its retry is the lifecycle's)."""
        self._elsewhere.add((self.attrs(source).arch_id, k))
        self._looked_at = -1  # decide again now: the next most urgent architecture may be free

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
        pending = {
            self.attrs(t).planned_arch or self.attrs(t).arch_id
            for t in trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING) and self.attrs(t).replicate is not None
        }
        evaluated = sum(1 for r in recs if r.state == "COMPLETE" and r.full_fidelity)
        if not every and evaluated != self._p_of:
            self._promotable, sds = self.promotable(trials, recs, archs, objectives)
            race = [*archs, *self._promotable]
            p = front_probability(race, objectives, self.rc.prior_seed_sd, DRAWS, finished, [None] * len(archs) + sds)
            self.last_p, self._p_of = p, evaluated
        by_number = {r.number: r for r in recs}
        promoted = {a.number for a in self._promotable}

        def urgency(a: results.TrialRecord) -> float:
            """How much a decision hangs on this architecture: P(front) nearest 1/2 for an evaluated one; a pruned
            one likely on the front is as urgent as a coin flip (it cannot be reported before it is trained)."""
            p = self.last_p[a.number]
            return min(p, 0.5) if a.number in promoted else min(p, 1 - p)

        def unsettled(a: results.TrialRecord) -> bool:
            p = self.last_p[a.number]
            return p > 1 - self.rc.settled if a.number in promoted else not settled(p, self.rc.settled)

        open_ = [
            a
            for a in (archs if every else [*archs, *self._promotable])
            if (every or unsettled(a))
            and a.seeds < self.rc.max_per_arch
            and a.arch_id not in pending
            and (a.arch_id, self._next_k(a, by_number)) not in self._elsewhere
        ]
        if not open_:
            return None
        if every:
            pick = min(open_, key=lambda a: a.number)
        else:
            pick = max(open_, key=lambda a: (urgency(a), -a.seeds))
        return self.store.frozen(pick.number), self._next_k(pick, by_number)

    @staticmethod
    def _next_k(a: results.TrialRecord, by_number: dict[int, results.TrialRecord]) -> int:
        """The seed index of an architecture's next replicate: one past the highest it has."""
        return 1 + max((by_number[n].replicate or 0 for n in a.seed_trials), default=0)

    def promotable(
        self,
        trials: list[FrozenTrial],
        recs: list[results.TrialRecord],
        archs: list[results.TrialRecord],
        objectives: list[Objective],
    ) -> tuple[list[results.TrialRecord], list[float]]:
        """The pruned architectures that race (``promote_pruned``), each as its pruned trial's record with the
        objectives at its rung and the accuracy its predicted final one (the study's predictor, fitted on the
        architectures trained to full fidelity), and the SDs of those predictions; none the predictor cannot
        predict (too few finished architectures)."""
        names = [o.name for o in objectives]
        if not self.rc.promote_pruned or "accuracy" not in names:
            return [], []
        done = {a.arch_id for a in archs}
        firsts = [r for r in recs if r.state == "COMPLETE" and r.full_fidelity and r.reused_from is None]
        firsts = [r for r in firsts if r.replicate is None and "accuracy" in r.values]
        out, sds = [], []
        by_number = {r.number: r for r in recs}
        self.predictor.fit(firsts)
        for t in trials:
            a = self.attrs(t)
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


def _trained(t: FrozenTrial, a: TrialRecord) -> bool:
    """A trial that trained (or trains) an architecture itself: not a copy, not rejected before training."""
    copy = a.is_copy or a.waiting_for is not None  # a waiter becomes a copy of the trial it waits for
    return a.arch_id is not None and not copy and not a.infeasible and t.state != TrialState.WAITING
