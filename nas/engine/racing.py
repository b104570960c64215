"""Racing: seed replicates where the front depends on them (a study's ``replicates:`` block).

After every trial that ends, the driver asks :meth:`Racer.next_replicate` whether to retrain one architecture with
another training seed before sampling a new one. Which one is the study's *policy*'s decision (nas.engine.policies
documents the seam); racing keeps the budget and the bookkeeping. The default policy (``race``) estimates each
evaluated architecture's probability of being on the front (:func:`nas.replicates.front_probability`: resampling the
validation images and the seed noise) and picks the least settled one — P(front) nearest 1/2, not within ``settled``
of 0 or 1 — that has fewer than ``max_per_arch`` seeds and none queued or training. With ``promote_pruned`` the
pruned architectures race too: a pruned architecture's final accuracy is predicted by the study's predictor
(``replicates.predictor``; nas.engine.predictors documents the seam: by default a line from the rung it was pruned
at, fitted on the architectures trained to full fidelity), and one that prediction leaves possibly on the front
(P(front) above ``1 - settled``: a likely member cannot be reported before it is trained, so it is the most urgent)
is trained to full fidelity with another seed, never pruned — the pruner's early ranking is noisy, and a front
member it stopped is otherwise lost for good (asynchronous successive halving promotes paused configurations for the
same reason: Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020). It stops when every
architecture is settled, or when replicates would exceed ``budget_share`` of the study's training epochs (the
replicate budget, in compute). The idea is the racing of Maron & Moore ("Hoeffding races", NIPS 1993) and of irace
(López-Ibáñez et al., 2016): spend more evaluations only on the candidates the evidence cannot yet separate.
``policy: every`` is the costly baseline instead: every architecture gets ``max_per_arch`` seeds, the oldest first,
within the same budget.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from nas import results
from nas.engine.config import StudyConfig
from nas.engine.policies import RaceView, make_policy
from nas.engine.store import StudyStore
from nas.trial_record import TrialRecord


class Racer:
    """Decides the study's next seed replicate (see the module docstring): the budget and the bookkeeping here, the
    choice the study's policy's (``self.policy``, nas.engine.policies)."""

    def __init__(self, cfg: StudyConfig, store: StudyStore) -> None:
        assert cfg.replicates is not None
        self.rc, self.store, self.epochs = cfg.replicates, store, cfg.train.epochs
        self.policy = make_policy(self.rc)
        self._looked_at = -1  # finished trials when it last decided: nothing new, nothing to decide
        self._records: dict[int, TrialRecord] = {}  # finished trials' records (with values), decoded once
        self._attrs: dict[int, TrialRecord] = {}  # finished trials' attribute records, decoded once
        self._elsewhere: set[tuple[str | None, int]] = set()  # (arch, k): replicates another driver queued first

    @property
    def last_p(self) -> dict[int, float]:
        """The P(front) of the policy's last decision, by the number of each architecture's first trial."""
        return self.policy.p_front

    def attrs(self, t: FrozenTrial) -> TrialRecord:
        """The trial's record; a finished trial's is decoded once (Optuna refuses to change a finished trial):
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
        view = RaceView(trials, recs, results.eligible(recs, objectives), objectives, finished, self.attrs)
        pending = {
            self.attrs(t).planned_arch or self.attrs(t).arch_id
            for t in trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING) and self.attrs(t).replicate is not None
        }
        by_number = {r.number: r for r in recs}
        for a in self.policy.candidates(view):
            k = self._next_k(a, by_number)
            if a.seeds < self.rc.max_per_arch and a.arch_id not in pending and (a.arch_id, k) not in self._elsewhere:
                return self.store.frozen(a.number), k
        return None

    @staticmethod
    def _next_k(a: TrialRecord, by_number: dict[int, TrialRecord]) -> int:
        """The seed index of an architecture's next replicate: one past the highest it has."""
        return 1 + max((by_number[n].replicate or 0 for n in a.seed_trials), default=0)


def _trained(t: FrozenTrial, a: TrialRecord) -> bool:
    """A trial that trained (or trains) an architecture itself: not a copy, not rejected before training."""
    copy = a.is_copy or a.waiting_for is not None  # a waiter becomes a copy of the trial it waits for
    return a.arch_id is not None and not copy and not a.infeasible and t.state != TrialState.WAITING
