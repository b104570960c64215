"""Racing (nas.engine.racing) in a real study (real SQLite, the real driver and lifecycle, ``run_config``): an
in-process executor reports planted accuracies — a known truth per architecture plus seed noise, and a correctness
bitmap per evaluation — so what racing should do is known. It replicates where the front is uncertain, stops when
it is settled, respects its budget and its per-architecture cap, and a replicate is never a reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nas import results
from nas.engine.config import read_study_file
from nas.engine.progress import Progress
from nas.engine.run import run_config
from nas.errors import ConfigError
from nas.trial_record import TrialRecord
from tests.engine_fixtures import SPACE, PlantedExecutor, write_study


def _run(
    tmp_path: Path, name: str, executor: PlantedExecutor, replicates: dict, n_trials: int, pruned: bool = False
) -> optuna.Study:
    over = {
        "budget": {"n_trials": n_trials, "max_concurrent": 1},
        "pruner": {"name": "pareto", "eta": 2, "min_trials": 2} if pruned else {"name": "none"},
        "fidelity": {"rungs": [1] if pruned else []},
        "replicates": replicates,
    }
    wide = {**SPACE, "knobs": {**SPACE["knobs"], "dwconv": {"kernel_size": [3, 5, 7, 9]}}}  # 96 architectures
    cfg, space = read_study_file(write_study(tmp_path, name, space=wide if pruned else None, **over))
    run_config(cfg, space, name, tmp_path / "studies", Progress(quiet=True), executor=executor)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")


def _replicates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if TrialRecord.of(t).replicate is not None]


def test_a_settled_front_gets_no_replicate(tmp_path: Path) -> None:
    """Each new architecture is 3 points more accurate and slower than the last: every one is on the front by far
    more than the noise (0.5 pt of seed, 0.7 pt of images), so nothing is replicated."""
    ex = PlantedExecutor(lambda i: (0.60 + 0.03 * i, 5000.0 - 300.0 * i), seed_sd=0.005)
    study = _run(tmp_path, "settled", ex, {"max_per_arch": 3, "budget_share": 0.5}, n_trials=8)
    assert _replicates(study) == [] and len({a for a, _ in ex.trained}) == len(ex.trained)
    assert {s for _, s in ex.trained} == {0}


def test_racing_replicates_close_calls_within_its_budget_and_cap(tmp_path: Path) -> None:
    """Every architecture has the same true accuracy and throughput: every place on the front is a coin flip, so
    racing spends its whole budget — replicates at most ``budget_share`` of the trained trials, at most
    ``max_per_arch`` seeds each — and each replicate trains the next seed of its architecture, as its own
    evaluation (not a copy), under its own training key."""
    ex = PlantedExecutor(lambda i: (0.85, 3000.0), seed_sd=0.005)
    study = _run(tmp_path, "close", ex, {"max_per_arch": 2, "budget_share": 0.4}, n_trials=10)
    reps = _replicates(study)
    trained = [t for t in study.trials if not TrialRecord.of(t).is_copy and TrialRecord.of(t).arch_id]
    assert 1 <= len(reps) <= 0.4 * len(trained)
    first = {TrialRecord.of(t).arch_id: t for t in study.trials if TrialRecord.of(t).replicate is None}
    for t in reps:
        a = TrialRecord.of(t)
        assert t.state == TrialState.COMPLETE and a.reused_from is None and a.val_correct
        assert a.replicate == 1 and a.replicate_of == first[a.arch_id].number  # max_per_arch 2: one more seed
        assert a.train_key != TrialRecord.of(first[a.arch_id]).train_key
    assert sorted(ex.trained).count((TrialRecord.of(reps[0]).arch_id, 1)) == 1  # trained once, with seed 0 + 1
    recs = results.records(study)
    merged = {r.arch_id: r for r in results.eligible(recs, results.objectives_of(study))}
    for t in reps:  # the architecture's accuracy is the mean of its two seeds
        m = merged[TrialRecord.of(t).arch_id]
        assert m.seeds == 2 and m.values["accuracy"] == pytest.approx(np.mean(m.seed_values))


def test_a_replicate_is_never_mistaken_for_a_reuse(tmp_path: Path) -> None:
    """The space has 10 architectures and the run asks for 24 trials: the sampler proposes evaluated ones again.
    Those proposals copy the architecture's *first* evaluation (seed 0), never a replicate; a replicate trains."""
    ex = PlantedExecutor(lambda i: (0.85, 3000.0), seed_sd=0.005)
    study = _run(tmp_path, "again", ex, {"max_per_arch": 3, "budget_share": 0.3}, n_trials=24)
    by_number = {t.number: t for t in study.trials}
    copies = [t for t in study.trials if TrialRecord.of(t).is_copy]
    assert copies, "the run should have proposed an evaluated architecture again"
    for t in copies:
        src = TrialRecord.of(by_number[TrialRecord.of(t).reused_from])
        assert src.replicate is None and src.arch_id == TrialRecord.of(t).arch_id
    assert all(TrialRecord.of(t).reused_from is None for t in _replicates(study) if TrialRecord.of(t).replicate)
    assert len(ex.trained) == len(set(ex.trained))  # no (architecture, seed) trained twice


@pytest.mark.parametrize(
    ("replicates", "field"),
    [({"max_per_arch": 0}, "replicates.max_per_arch"), ({"budget_share": 1.0}, "replicates.budget_share"),
     ({"budget_share": 0}, "replicates.budget_share"), ({"settled": 0.4}, "replicates.settled")],
)  # fmt: skip
def test_replicate_settings_that_cannot_be_met_are_refused_in_one_line(
    tmp_path: Path, replicates: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as e:
        read_study_file(write_study(tmp_path, "bad", replicates=replicates))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_policy_every_gives_every_architecture_its_seeds_oldest_first(tmp_path: Path) -> None:
    """The costly baseline (``policy: every``): on a front settled far beyond the noise — where racing replicates
    nothing (test above) — every architecture still gets ``max_per_arch`` seeds, the oldest first, each seed
    trained once; the replicates stay within ``budget_share``."""
    ex = PlantedExecutor(lambda i: (0.60 + 0.03 * i, 5000.0 - 300.0 * i), seed_sd=0.005)
    study = _run(tmp_path, "every", ex, {"policy": "every", "max_per_arch": 3, "budget_share": 0.7}, n_trials=12)
    seeds: dict[str, set[int]] = {}
    for arch, seed in ex.trained:
        seeds.setdefault(arch, set()).add(seed)
    assert len(ex.trained) == len(set(ex.trained)) == 12
    assert sorted(len(s) for s in seeds.values()) == [3, 3, 3, 3]  # 4 architectures x 3 seeds: 8 replicates
    reps = _replicates(study)
    assert len(reps) == 8 <= 0.7 * 12
    firsts = [TrialRecord.of(t).arch_id for t in study.trials if TrialRecord.of(t).replicate is None]
    done = [TrialRecord.of(t).arch_id for t in reps if TrialRecord.of(t).replicate == 2]
    assert done == firsts  # the third seeds come in the order the architectures were first evaluated


class NewestFirst:
    """A toy replicate policy (issue 29's seam, nas.engine.policies): every architecture its seeds, the newest first."""

    def __init__(self, rc: object) -> None:
        self.p_front: dict[int, float] = {}

    def candidates(self, view: object) -> list:
        return sorted(view.archs, key=lambda a: -a.number)


def test_a_toy_policy_plugs_into_racing_and_changes_which_architectures_get_seeds(tmp_path: Path) -> None:
    """The same run as ``policy: every`` above with a 4-line policy that prefers the newest architecture: its
    replicates go to the latest architectures first, where every's go to the oldest; racing still keeps the cap
    and the budget."""
    ex = PlantedExecutor(lambda i: (0.60 + 0.03 * i, 5000.0 - 300.0 * i), seed_sd=0.005)
    rc = {"policy": "tests.test_racing:NewestFirst", "max_per_arch": 2, "budget_share": 0.35}
    study = _run(tmp_path, "newest", ex, rc, n_trials=10)
    reps = _replicates(study)
    assert reps and all(TrialRecord.of(t).replicate == 1 for t in reps)  # the cap: 2 seeds each
    assert len(reps) <= 0.35 * 10
    firsts = [t.number for t in study.trials if TrialRecord.of(t).replicate is None]
    for t in reps:  # each went to the newest architecture evaluated before it (every's would be the oldest)
        before = [n for n in firsts if n < t.number and n not in {TrialRecord.of(r).replicate_of for r in reps
                                                                 if r.number < t.number}]  # fmt: skip
        assert TrialRecord.of(t).replicate_of == max(before) != min(before)
    with pytest.raises(ConfigError, match=r"replicates\.policy: cannot load 'tests.test_racing:Nope'"):
        _run(tmp_path, "nope", PlantedExecutor(lambda i: (0.8, 1000.0), seed_sd=0.005),
             {"policy": "tests.test_racing:Nope"}, n_trials=2)  # fmt: skip


@pytest.mark.parametrize("promote", [True, False])
def test_racing_trains_an_unsettled_pruned_architecture_to_full_fidelity(tmp_path: Path, promote: bool) -> None:
    """Every architecture is equally accurate and the rung ranks at random (its accuracy carries 3 points of noise
    against 0.5 of seed): the pruner stops half of them by luck. Racing predicts a pruned one's final accuracy from
    its rung (a fit that finds the rung says nothing, so: the mean, with the seeds' spread) and trains those whose
    place on the front that leaves open — to full fidelity, with the next seed, never pruned — unless
    ``promote_pruned`` is off. Whichever, no seed replicate is ever pruned."""
    ex = PlantedExecutor(lambda i: (0.60 + 0.005 * i, 3000.0 - 10.0 * i), seed_sd=0.005, early_sd=0.03)
    rc = {"max_per_arch": 2, "budget_share": 0.5, "promote_pruned": promote}
    study = _run(tmp_path, f"promote-{promote}", ex, rc, n_trials=80, pruned=True)
    by_number = {t.number: t for t in study.trials}
    reps = _replicates(study)
    assert reps and all(t.state == TrialState.COMPLETE for t in reps)  # a replicate is never pruned
    assert any(t.state == TrialState.PRUNED and not TrialRecord.of(t).is_copy for t in study.trials)
    promoted = [t for t in reps if by_number[TrialRecord.of(t).replicate_of].state == TrialState.PRUNED]
    if not promote:
        assert promoted == []
        return
    assert promoted, "racing should have trained a pruned architecture whose place on the front is open"
    merged = {r.arch_id: r for r in results.eligible(results.records(study), results.objectives_of(study))}
    for t in promoted:  # the first is seed 0 + 1 (seed 0 was pruned); racing may add seed 0 + 2 later
        a = TrialRecord.of(t)
        assert a.full_fidelity and a.curve_rows[-1]["epoch"] == 2 and a.arch_id in merged
        assert (a.arch_id, 1) in ex.trained and merged[a.arch_id].seeds == len(
            [p for p in promoted if TrialRecord.of(p).arch_id == a.arch_id]
        )


def test_the_replicate_budget_is_a_share_of_the_compute_not_of_the_trials(tmp_path: Path) -> None:
    """Pruned trials train one epoch of two and a replicate both: the replicates' epochs stay within
    ``budget_share`` of every epoch the study trained (issue 28: counted in trials, a third of the trials as
    replicates was well over a third of the compute), and racing still spends that budget on a close call."""
    ex = PlantedExecutor(lambda i: (0.85, 3000.0), seed_sd=0.005, early_sd=0.03)
    study = _run(tmp_path, "compute", ex, {"max_per_arch": 2, "budget_share": 0.3}, n_trials=60, pruned=True)
    trained = [t for t in study.trials if not TrialRecord.of(t).is_copy and TrialRecord.of(t).arch_id]
    epochs = {t.number: len(TrialRecord.of(t).curve_rows) for t in trained}
    replicated = sum(epochs[t.number] for t in trained if TrialRecord.of(t).replicate is not None)
    assert any(t.state == TrialState.PRUNED for t in trained)
    assert 0 < replicated <= 0.3 * sum(epochs.values())


class InvertedRung:
    """A toy predictor (issue 29's seam, nas.engine.predictors): the lower a pruned trial's accuracy at its rung,
    the more accurate it predicts it would end — the opposite of the default line."""

    calls = 0

    def fit(self, finished) -> None:
        self.ready = len(finished) >= 2

    def predict(self, curve, rung):
        InvertedRung.calls += 1
        acc = next((r["val_acc"] for r in curve if r["epoch"] == rung), None)
        return (1.5 - acc, 0.001) if self.ready and acc is not None else None


def test_a_toy_predictor_plugs_into_racing_and_changes_which_pruned_trial_is_promoted(tmp_path: Path) -> None:
    ex = lambda: PlantedExecutor(lambda i: (0.60 + 0.005 * i, 3000.0 - 10.0 * i), seed_sd=0.005, early_sd=0.03)  # noqa: E731
    promoted = {}
    for predictor in ("rung_line", "tests.test_racing:InvertedRung"):
        rc = {"max_per_arch": 2, "budget_share": 0.5, "promote_pruned": True, "predictor": predictor}
        study = _run(tmp_path, predictor.replace(":", "-").replace(".", "-"), ex(), rc, n_trials=80, pruned=True)
        by_number = {t.number: t for t in study.trials}
        sources = [TrialRecord.of(t).replicate_of for t in _replicates(study)]
        promoted[predictor] = [n for n in sources if by_number[n].state == TrialState.PRUNED]
    assert InvertedRung.calls > 0 and promoted["rung_line"] and promoted["tests.test_racing:InvertedRung"]
    assert promoted["rung_line"] != promoted["tests.test_racing:InvertedRung"]


def test_a_predictor_that_cannot_be_loaded_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"replicates\.predictor: cannot load 'tests.test_racing:Nope'"):
        _run(tmp_path, "nope", PlantedExecutor(lambda i: (0.8, 1000.0), seed_sd=0.005),
             {"max_per_arch": 2, "predictor": "tests.test_racing:Nope"}, n_trials=2)  # fmt: skip
