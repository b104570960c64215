"""Pruning a multi-objective study (ParetoPruner = MO-ASHA, AccuracyPruner around Optuna's single-objective
pruners) and the samplers of make_sampler, on real Optuna studies.

The MO-ASHA decision is checked against a brute-force implementation written here: Pareto fronts by pairwise
dominance, NSGA-II crowding distance within a front, keep the top ``max(1, n // eta)``; ties (equal crowding
distance, e.g. two boundary points) go to the trial being judged, then to the lower trial number.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from nas.engine.config import StudyConfig
from nas.engine.pruners import AccuracyPruner, ParetoPruner, make_pruner
from nas.engine.samplers import make_sampler
from nas.errors import ConfigError
from nas.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)
MAXMAX = ["maximize", "maximize"]


# ---------------------------------------------------------------------------------------------- brute force
def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    better = worse = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "minimize":
            x, y = -x, -y
        better |= x > y
        worse |= x < y
    return better and not worse


def _crowding(points: list[list[float]], front: list[int]) -> dict[int, float]:
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(points[0])):
        ordered = sorted(front, key=lambda i: points[i][m])
        lo, hi = points[ordered[0]][m], points[ordered[-1]][m]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi > lo:
            for k in range(1, len(ordered) - 1):
                dist[ordered[k]] += (points[ordered[k + 1]][m] - points[ordered[k - 1]][m]) / (hi - lo)
    return dist


def brute_force_prune(me: list[float], others: list[list[float]], directions: list[str], eta: int, min_trials: int):
    """MO-ASHA at one rung: is ``me`` outside the top max(1, n // eta) of everything that reached the rung?"""
    points = [me, *others]
    if len(points) < min_trials:
        return False
    rank: dict[int, tuple] = {}
    left, level = set(range(len(points))), 0
    while left:
        front = sorted(i for i in left if not any(_dominates(points[j], points[i], directions) for j in left))
        cd = _crowding(points, front)
        for i in front:
            rank[i] = (level, -cd[i], i)
        left -= set(front)
        level += 1
    order = sorted(rank, key=rank.get)
    return order.index(0) >= max(1, len(points) // eta)


# ---------------------------------------------------------------------------------------------- helpers
def _curve(accs: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": e + 1, "val_acc": a, "val_loss": 1 - a, "train_loss": 1 - a} for e, a in enumerate(accs)]


def _add(
    study: optuna.Study,
    state: TrialState,
    accs: list[float],
    tp: float | None,
    params: int | None = None,
    **attrs: Any,
) -> int:
    user = {"curve": _curve(accs), **attrs}
    if tp is not None:
        user["throughput"] = {"median": tp}
    if params is not None:
        user["params"] = params
    values = None
    if state == TrialState.COMPLETE:
        values = [accs[-1], tp] + ([params] if len(study.directions) == 3 else [])
    study.add_trial(
        create_trial(
            state=state,
            values=values,
            user_attrs=user,
            intermediate_values={e + 1: a for e, a in enumerate(accs)},
        )
    )
    return study.trials[-1].number


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pruners.db'}"


# ---------------------------------------------------------------------------------------------- ParetoPruner
def test_pareto_pruner_keeps_front_prunes_dominated(sqlite_url: str) -> None:
    study = optuna.create_study(study_name="explicit", storage=sqlite_url, directions=MAXMAX)
    pruner = ParetoPruner(rungs=[1, 3], objectives=["accuracy", "throughput"], directions=MAXMAX, eta=2)
    # rung 1 population: (acc@1, tp) = (0.8, 100) (0.6, 300) (0.5, 200) (0.3, 50) and two judged trials
    _add(study, TrialState.COMPLETE, [0.8, 0.85, 0.9, 0.92], 100.0)
    _add(study, TrialState.PRUNED, [0.6], 300.0)
    _add(study, TrialState.RUNNING, [0.5], 200.0)
    _add(study, TrialState.COMPLETE, [0.3, 0.5, 0.6, 0.7], 50.0)
    _add(study, TrialState.FAIL, [0.99], 9999.0)  # failed trials never count
    _add(study, TrialState.COMPLETE, [0.99, 0.99, 0.99, 0.99], 9999.0, reused_from=0)  # a copy never counts
    _add(study, TrialState.PRUNED, [], 9999.0)  # never reached the rung
    front = _add(study, TrialState.RUNNING, [0.7], 250.0)  # non-dominated: kept
    dominated = _add(study, TrialState.RUNNING, [0.4], 120.0)  # dominated by (0.5, 200): pruned
    assert not pruner.prune(study, _frozen(study, front))
    assert pruner.prune(study, _frozen(study, dominated))
    # 6 trials reached rung 1 -> keep 3: the three-point front {0.8/100, 0.7/250, 0.6/300}
    counted = (0, 1, 2, 3, front, dominated)
    pts = {
        t.number: [t.user_attrs["curve"][0]["val_acc"], t.user_attrs["throughput"]["median"]]
        for t in study.trials
        if t.number in counted
    }
    for n in (front, dominated):
        others = [v for m, v in pts.items() if m != n]
        assert pruner.prune(study, _frozen(study, n)) == brute_force_prune(pts[n], others, MAXMAX, 2, 1)


def test_pareto_pruner_only_at_rungs_and_respects_min_trials(sqlite_url: str) -> None:
    study = optuna.create_study(study_name="rungs", storage=sqlite_url, directions=MAXMAX)
    _add(study, TrialState.COMPLETE, [0.9, 0.9, 0.9, 0.9], 500.0)
    _add(study, TrialState.COMPLETE, [0.8, 0.8, 0.8, 0.8], 400.0)
    worst_at_1 = _add(study, TrialState.RUNNING, [0.1], 10.0)
    worst_at_2 = _add(study, TrialState.RUNNING, [0.1, 0.1], 10.0)  # epoch 2 is not a rung
    no_tp = _add(study, TrialState.RUNNING, [0.1], None)  # throughput not measured yet: no decision
    pruner = ParetoPruner(rungs=[1, 3], objectives=["accuracy", "throughput"], directions=MAXMAX, eta=2)
    assert pruner.prune(study, _frozen(study, worst_at_1))
    assert not pruner.prune(study, _frozen(study, worst_at_2))
    assert not pruner.prune(study, _frozen(study, no_tp))
    # at rung 1 worst_at_1 meets the two COMPLETE trials and worst_at_2 (which passed epoch 1); no_tp does not
    # count: 4 points
    strict = ParetoPruner(rungs=[1, 3], objectives=["accuracy", "throughput"], directions=MAXMAX, min_trials=5)
    assert not strict.prune(study, _frozen(study, worst_at_1))
    enough = ParetoPruner(rungs=[1, 3], objectives=["accuracy", "throughput"], directions=MAXMAX, min_trials=4)
    assert enough.prune(study, _frozen(study, worst_at_1))
    # a lone trial at a rung is the top max(1, 1 // eta) = 1: kept
    alone = optuna.create_study(study_name="alone", storage=sqlite_url, directions=MAXMAX)
    only = _add(alone, TrialState.RUNNING, [0.01], 1.0)
    assert not pruner.prune(alone, _frozen(alone, only))


def _random_population(
    study: optuna.Study, rng: random.Random, n: int, rung: int, objectives: list[str]
) -> dict[int, list[float]]:
    """Trials of every state; returns, for those that reached ``rung`` and count, their objective vector there."""
    reached: dict[int, list[float]] = {}
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL]
    for k in range(n):
        state = TrialState.RUNNING if k % 3 == 2 else rng.choice(states)  # at least n // 3 trials to judge
        length = {TrialState.COMPLETE: 4, TrialState.RUNNING: rung}.get(state, rng.choice([rung - 1, rung]))
        accs = [round(rng.random(), 6) for _ in range(length)]
        tp = round(rng.uniform(10, 1000), 3)
        params = rng.randint(10_000, 900_000) if "params" in objectives else None
        number = _add(study, state, accs, tp, params)
        if state != TrialState.FAIL and length >= rung:
            vec = {"accuracy": accs[rung - 1], "throughput": tp, "params": params}
            reached[number] = [float(vec[o]) for o in objectives]
    return reached


@pytest.mark.parametrize(
    ("objectives", "directions", "eta"),
    [
        (["accuracy", "throughput"], MAXMAX, 3),
        (["accuracy", "throughput"], MAXMAX, 2),
        (["accuracy", "throughput", "params"], ["maximize", "maximize", "minimize"], 2),
    ],
    ids=["2obj-eta3", "2obj-eta2", "3obj-eta2"],
)
def test_pareto_pruner_matches_brute_force_mo_asha(
    sqlite_url: str, objectives: list[str], directions: list[str], eta: int
) -> None:
    rng = random.Random(len(objectives) * 10 + eta)
    decisions = []
    for scenario in range(2):  # on SQLite; many more in-memory below
        study = optuna.create_study(
            study_name=f"bf-{len(objectives)}-{eta}-{scenario}", storage=sqlite_url, directions=directions
        )
        rung = rng.choice([1, 2])
        reached = _random_population(study, rng, rng.randint(6, 12), rung, objectives)
        pruner = ParetoPruner(rungs=[1, 2], objectives=objectives, directions=directions, eta=eta)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            me = reached[t.number]
            others = [v for n, v in reached.items() if n != t.number]
            expected = brute_force_prune(me, others, directions, eta, 1)
            assert pruner.prune(study, t) == expected, (scenario, t.number)
            decisions.append(expected)
    assert True in decisions and False in decisions  # the scenarios exercise both outcomes


def test_pareto_pruner_brute_force_many_in_memory() -> None:
    """Same comparison on many more random rungs (in-memory storage, so it stays fast)."""
    rng = random.Random(7)
    objectives, directions = ["accuracy", "throughput", "params"], ["maximize", "maximize", "minimize"]
    pruned = kept = 0
    for scenario in range(40):
        study = optuna.create_study(directions=directions)
        reached = _random_population(study, rng, rng.randint(3, 15), 1, objectives)
        eta = rng.choice([2, 3, 4])
        pruner = ParetoPruner(rungs=[1], objectives=objectives, directions=directions, eta=eta)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            others = [v for n, v in reached.items() if n != t.number]
            expected = brute_force_prune(reached[t.number], others, directions, eta, 1)
            assert pruner.prune(study, t) == expected, scenario
            pruned += expected
            kept += not expected
    assert pruned > 10 and kept > 10


def test_brute_force_reference_sanity() -> None:
    """The reference itself: a dominated point is never kept over its dominator; a lone front point survives."""
    assert brute_force_prune([0.1, 0.1], [[0.9, 0.9]], MAXMAX, 2, 1)
    assert not brute_force_prune([0.9, 0.9], [[0.1, 0.1]], MAXMAX, 2, 1)
    # (0.5, 0.5) is in the middle of a 3-point front: the boundary points have infinite crowding distance
    assert brute_force_prune([0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], MAXMAX, 2, 1)
    assert not brute_force_prune([0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], MAXMAX, 2, 4)  # min_trials not reached


# ---------------------------------------------------------------------------------------------- AccuracyPruner
def test_optuna_refuses_multi_objective_pruning() -> None:
    """The trap AccuracyPruner exists for (landscape.md): Trial.should_prune raises on a multi-objective study."""
    study = optuna.create_study(directions=MAXMAX, pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    with pytest.raises(NotImplementedError):
        trial.should_prune()


def _median_rule(study: optuna.Study, trial: optuna.trial.FrozenTrial, n_startup: int) -> bool:
    """Brute force of Optuna's median rule: prune when the trial's best accuracy so far is below the median of
    the COMPLETE trials' accuracy at the trial's last epoch."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < n_startup:
        return False
    epoch = trial.user_attrs["curve"][-1]["epoch"]
    mine = max(r["val_acc"] for r in trial.user_attrs["curve"])
    at = [r["val_acc"] for t in complete for r in t.user_attrs["curve"] if r["epoch"] == epoch]
    return bool(at) and mine < float(np.median(at))


def test_accuracy_pruner_median_on_multi_objective_study() -> None:
    rng = random.Random(3)
    study = optuna.create_study(study_name="median", directions=MAXMAX)
    pruner = AccuracyPruner(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    for _ in range(9):
        _add(study, rng.choice([TrialState.COMPLETE, TrialState.PRUNED]), [rng.random() for _ in range(3)], 1.0)
    seen = set()
    for _ in range(14):
        length = rng.randint(1, 3)
        number = _add(study, TrialState.RUNNING, [rng.random() for _ in range(length)], 1.0)
        t = _frozen(study, number)
        expected = _median_rule(study, t, 3)
        assert pruner.prune(study, t) == expected
        seen.add(expected)
    assert seen == {True, False}
    # fewer COMPLETE trials than n_startup_trials: never prunes
    fresh = optuna.create_study(study_name="median-startup", directions=MAXMAX)
    _add(fresh, TrialState.COMPLETE, [0.9], 1.0)
    low = _add(fresh, TrialState.RUNNING, [0.01], 1.0)
    assert not pruner.prune(fresh, _frozen(fresh, low))


def _run_twins(inner_mo: optuna.pruners.BasePruner, inner_so: optuna.pruners.BasePruner, seed: int, n: int):
    """The same learning curves through AccuracyPruner on a 2-objective study and through Optuna's own pruner
    on a single-objective study of the same name (Hyperband assigns brackets from name and trial number)."""
    rng = random.Random(seed)
    storage = optuna.storages.InMemoryStorage()
    mo = optuna.create_study(study_name="twin", storage=storage, directions=MAXMAX)
    so = optuna.create_study(study_name="twin", direction="maximize", pruner=inner_so)
    wrapper = AccuracyPruner(inner_mo, storage)
    mo_id = storage.get_study_id_from_name("twin")
    log_mo, log_so = [], []
    for _ in range(n):
        quality, curve = rng.random(), []
        t_mo, t_so = mo.ask(), so.ask()
        stop_mo = stop_so = None
        for epoch in range(1, 10):
            acc = quality * (1 - 0.5**epoch) + 0.01 * rng.random()
            curve.append({"epoch": epoch, "val_acc": acc})
            if stop_mo is None:
                tid = storage.get_trial_id_from_study_id_trial_number(mo_id, t_mo.number)
                storage.set_trial_user_attr(tid, "curve", list(curve))
                if wrapper.prune(mo, storage.get_trial(tid)):
                    stop_mo = epoch
            if stop_so is None:
                t_so.report(acc, epoch)
                if t_so.should_prune():
                    stop_so = epoch
        if stop_mo:
            mo.tell(t_mo, state=TrialState.PRUNED)
        else:
            mo.tell(t_mo, [curve[-1]["val_acc"], 1.0])
        so.tell(t_so, state=TrialState.PRUNED) if stop_so else so.tell(t_so, curve[-1]["val_acc"])
        log_mo.append(stop_mo)
        log_so.append(stop_so)
    return log_mo, log_so


def test_accuracy_pruner_hyperband_agrees_with_optuna_single_objective() -> None:
    def hb() -> optuna.pruners.HyperbandPruner:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)

    log_mo, log_so = _run_twins(hb(), hb(), seed=1, n=30)
    assert log_mo == log_so
    assert sum(s is not None for s in log_mo) >= 5  # it does prune (a mirror without rung state never would)


def test_accuracy_pruner_median_agrees_with_optuna_single_objective() -> None:
    def med() -> optuna.pruners.MedianPruner:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)

    log_mo, log_so = _run_twins(med(), med(), seed=2, n=20)
    assert log_mo == log_so
    assert sum(s is not None for s in log_mo) >= 3


# ---------------------------------------------------------------------------------------------- factories
def _cfg(**kw: Any) -> StudyConfig:
    base = {"name": "t", "space": "x.yaml", "train": {"epochs": 3}, "fidelity": {"rungs": [1, 2]}}
    return StudyConfig.model_validate({**base, **kw})


def test_make_pruner_builds_each_kind() -> None:
    assert isinstance(make_pruner(_cfg(pruner={"name": "pareto", "eta": 4})), ParetoPruner)
    p = make_pruner(_cfg(pruner={"name": "pareto", "eta": 4}))
    assert (p.eta, p.rungs, p.directions) == (4, [1, 2], MAXMAX)
    for name, inner in (("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner)):
        p = make_pruner(_cfg(pruner={"name": name}))
        assert isinstance(p, AccuracyPruner) and isinstance(p.inner, inner)
    assert isinstance(make_pruner(_cfg(pruner={"name": "none"})), optuna.pruners.NopPruner)


def _report(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int, acc: float) -> None:
    """What the engine's store does: an intermediate value through the storage (Trial.report refuses MO)."""
    tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    storage.set_trial_intermediate_value(tid, 1, acc)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_samplers_survive_pruned_and_failed_trials_on_conditional_space(sampler: str) -> None:
    """ask/tell with a define-by-run conditional space, a third PRUNED (with curves, as the store writes them)
    and some FAIL: no exception (optuna#5260: TPE ranks pruned trials through ``study.direction``) and the sampler
    keeps proposing valid, varied architectures."""
    space = SearchSpace.load(REPO / "search_spaces" / "fashion_mnist_tiny.yaml")
    cfg = _cfg(sampler={"name": sampler, "n_startup_trials": 5}, seed=4)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=cfg.directions, sampler=make_sampler(cfg, n_existing=0))
    rng = random.Random(0)
    ids = []
    for i in range(21):
        trial = study.ask()
        try:
            arch = space.sample(trial.suggest_categorical, num_classes=10)
        except ConfigError:
            study.tell(trial, state=TrialState.FAIL)
            continue
        assert space.arch_from_params(trial.params, num_classes=10).arch_id == arch.arch_id
        ids.append(arch.arch_id)
        acc = rng.random()
        _report(storage, study, trial.number, acc)
        if i % 3 == 1:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 7 == 5:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [acc, rng.uniform(100, 1000)])
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) >= 6 and states.count(TrialState.FAIL) >= 2
    assert len(ids) >= 18 and len(set(ids[5:])) >= 4


def test_plain_optuna_tpe_trips_on_pruned_curves_but_ours_does_not() -> None:
    """The regression behind MultiObjectiveTPE: stock TPE raises once a PRUNED trial has intermediate values."""

    def run(sampler: optuna.samplers.BaseSampler) -> None:
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, directions=MAXMAX, sampler=sampler)
        for i in range(6):
            t = study.ask()
            x = t.suggest_categorical("x", ["a", "b", "c"])
            _report(storage, study, t.number, 0.5)
            study.tell(t, state=TrialState.PRUNED) if i % 2 else study.tell(t, [float(x != "a"), 1.0])

    with pytest.raises(RuntimeError, match="multi-objective"):
        run(optuna.samplers.TPESampler(n_startup_trials=2, seed=0))
    run(make_sampler(_cfg(sampler={"name": "tpe", "n_startup_trials": 2}), n_existing=0))


def test_make_sampler_reseeds_by_existing_trials() -> None:
    """A resumed run must not replay the first run's proposals (optuna#3255)."""
    space = SearchSpace.load(REPO / "search_spaces" / "fashion_mnist_tiny.yaml")
    cfg = _cfg(sampler={"name": "random"}, seed=0)

    def proposals(n_existing: int) -> list[str]:
        study = optuna.create_study(directions=cfg.directions, sampler=make_sampler(cfg, n_existing))
        out = []
        for _ in range(6):
            t = study.ask()
            out.append(space.sample(t.suggest_categorical, num_classes=10).arch_id)
            study.tell(t, state=TrialState.FAIL)
        return out

    assert proposals(0) == proposals(0)
    assert proposals(0) != proposals(6)


def test_the_optuna_internals_the_adapter_relies_on_are_still_there() -> None:
    """nas.engine.optuna_adapter overrides TPESampler._sample and hands it a study view with _get_trials: pinned
    here for the supported Optuna range, so a release that changes them fails this test, not a user's study."""
    import inspect

    sample = inspect.signature(optuna.samplers.TPESampler._sample)
    assert list(sample.parameters) == ["self", "study", "trial", "search_space"]
    get_trials = inspect.signature(optuna.Study._get_trials)
    assert list(get_trials.parameters) == ["self", "deepcopy", "states", "use_cache"]
    assert "_get_trials" in inspect.getsource(optuna.samplers.TPESampler)


@pytest.mark.parametrize(
    ("epochs", "fidelity", "rungs", "replicates"),
    [(8, None, [2, 4], None), (10, {}, [2, 5], None), (3, None, [1], None), (2, None, [1], None),
     (1, None, [], None), (8, {"rungs": []}, [], None), (8, {"rungs": [3]}, [3], None),
     (8, None, [2, 4], {}), (16, {}, [4, 8], {"max_per_arch": 2}), (4, None, [1, 2], {}), (1, None, [], {}),
     (8, None, [2, 4], {"policy": "every"}), (8, {"rungs": [1]}, [1], {})],
)  # fmt: skip
def test_default_rungs_are_a_quarter_and_a_half_of_the_epochs(epochs, fidelity, rungs, replicates) -> None:
    """... with or without racing (``replicates:``): racing's own default (one rung at 1/8, eta 4) lost on held-out
    seeds (issue 28); rungs named are kept, and the eta of the study, or 2."""
    raw = {"name": "d", "space": "s.yaml", "train": {"epochs": epochs}}
    raw = raw if replicates is None else {**raw, "replicates": replicates}
    cfg = StudyConfig.model_validate(raw if fidelity is None else {**raw, "fidelity": fidelity})
    assert cfg.fidelity.rungs == rungs
    assert (cfg.pruner.name, cfg.pruner.eta, cfg.pruner.min_trials) == ("pareto", 2, 8)  # the lab's choice
    named = StudyConfig.model_validate({**raw, "pruner": {"eta": 3}, **({"fidelity": fidelity} if fidelity else {})})
    assert named.pruner.eta == 3 and named.fidelity.rungs == rungs
