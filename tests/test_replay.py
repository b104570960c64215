"""The replay executor: the real driver, sampler, pruner and SQLite storage on a hand-made table whose front is
known; determinism, compute accounting, PRUNED never on the front, Ray's ASHA as the stopper, bad tables."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas import results
from nas.engine.config import read_study_file
from nas.engine.driver import Driver
from nas.engine.progress import Progress
from nas.engine.pruners import make_pruner
from nas.engine.replay import ReplayExecutor, Table, TableArch, training_of
from nas.engine.run import run_study
from nas.engine.samplers import make_sampler
from nas.engine.store import StudyStore
from nas.errors import ConfigError
from nas.space import SearchSpace

SPACE = {
    "name": "replay4",
    "input": {"img_size": 16, "in_chans": 1},
    "stem": {"kernel": 3, "stride": 2},
    "knobs": {"mhsa": {"head_dim": 16}, "ska": {"head_dim": 16}, "key_only": {"heads": 2}},
    "stages": [
        {"depth": [1, 2], "dim": 16, "mixers": ["dwconv", "mhsa", "key_only", "ska"]},
        {"depth": 1, "dim": 32, "mixers": ["dwconv", "key_only"]},
    ],
}
EPOCHS = 6


def _study(folder: Path, name: str, **over) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    raw = {
        "name": name,
        "space": "space.yaml",
        "dataset": {"name": "fashion_mnist"},
        "train": {"epochs": EPOCHS, "batch_size": 64},
        "fidelity": {"rungs": [1, 3]},
        "pruner": {"name": "pareto", "eta": 2},
        "sampler": {"name": "random"},
        "budget": {"n_trials": 40, "max_concurrent": 3},
        "seed": 3,
        **over,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_table(folder: Path, study: Path, seed: int = 0, seeds: int = 1) -> tuple[Path, Table]:
    """Every architecture with a saturating curve whose final accuracy and throughput are drawn at random; with
    ``seeds`` > 1, each other training seed's curve is the first plus a constant seed offset (SD 1 point)."""
    import itertools

    cfg, space = read_study_file(study)
    rng, archs, grid = random.Random(seed), {}, space.param_grid()
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        arch = space.arch_from_params(params, 10)
        final, speed = rng.uniform(0.6, 0.9), rng.uniform(1000, 9000)
        curve = [round(final * (1 - 0.5 ** (e + 1)) + rng.uniform(-0.01, 0.01), 4) for e in range(EPOCHS)]
        archs[arch.arch_id] = TableArch(
            arch_id=arch.arch_id,
            params=params,
            placement=arch.placement(),
            n_params=1000,
            flops=2000,
            throughput={"median": speed, "iqr": 1.0, "cv": 0.01},
            val_acc=curve,
            val_loss=[1 - a for a in curve],
            train_loss=[1.1 - a for a in curve],
            seconds=[rng.uniform(1, 4)] * EPOCHS,
            extra_seeds=[_other_seed(k, curve, rng.gauss(0, 0.01)) for k in range(1, seeds)],
        )
    table = Table("replay4", space.model_dump(mode="json"), space.space_hash(), training_of(cfg), 10, EPOCHS, archs)
    path = folder / "table.json"
    path.write_text(json.dumps(table.to_json()))
    return path, Table.load(path)


def _other_seed(k: int, curve: list[float], shift: float) -> dict:
    accs = [round(a + shift, 4) for a in curve]
    return {"seed": k, "val_acc": accs, "val_loss": [1 - a for a in accs], "train_loss": [1.1 - a for a in accs],
            "seconds": [2.0] * EPOCHS}  # fmt: skip


def _replay(folder: Path, name: str, table: Path, **over) -> optuna.Study:
    study = _study(folder, name, **over)
    run_study(study, base_dir=folder / "studies", progress=Progress(quiet=True), replay=table)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'studies' / name / 'study.db'}")


def _history(study: optuna.Study) -> list[tuple]:
    return [(t.user_attrs.get("arch_id"), t.state.name, t.values, t.user_attrs.get("fidelity")) for t in study.trials]


def test_replay_is_a_real_study_with_the_tables_values(tmp_path: Path) -> None:
    table_path, table = make_table(tmp_path, _study(tmp_path, "seed"))
    study = _replay(tmp_path, "r1", table_path)
    states = {t.state for t in study.trials}
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states  # the MO-ASHA pruner did decide
    run_seed = study.user_attrs["config"]["seed"]
    for t in study.trials:
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs:
            a = table.archs[t.user_attrs["arch_id"]]
            # the throughput observed is one draw within the table's spread (issue 30), the same for the run
            observed = table.throughput_draw(run_seed, a.arch_id)
            assert t.values == [a.val_acc[-1], observed] and observed != a.throughput["median"]
            assert abs(math.log(observed / a.throughput["median"])) < 4 * a.throughput["cv"]
            assert [r["val_acc"] for r in t.user_attrs["curve"]] == a.val_acc
            assert t.user_attrs["wall_time_s"] == pytest.approx(EPOCHS * a.epoch_seconds)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["pruned_at"] in (1, 3) and t.values is None
    assert study.user_attrs["replay"]["name"] == "replay4"
    recs = results.records(study)
    front = results.front(recs, results.objectives_of(study))
    assert front and all(r.state == "COMPLETE" and r.full_fidelity for r in front)  # PRUNED never on the front


def test_a_grid_study_tabulates_every_architecture_once_and_ends_cleanly(tmp_path: Path) -> None:
    """The table build's own mode (grid sampler, no pruning) run to the end of the grid: Optuna's GridSampler would
    call Study.stop() from its after_trial hook on the last point, which raises outside Study.optimize."""
    table_path, table = make_table(tmp_path, _study(tmp_path, "seed"))
    study = _replay(
        tmp_path, "g1", table_path, sampler={"name": "grid"}, pruner={"name": "none"}, fidelity={"rungs": []},
        budget={"n_trials": 4 * len(table.archs), "max_concurrent": 2},
    )  # fmt: skip
    done = [t.user_attrs["arch_id"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(set(done)) == sorted(table.archs)  # every architecture, none missing
    assert len(study.trials) < 4 * len(table.archs)  # stopped by the exhausted grid, not by n_trials
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_our_grid_numbering_is_the_one_optunas_grid_sampler_records(tmp_path: Path) -> None:
    """Issue 29: the lab numbers grid points by nas.engine.samplers.grid_numbering, never by the sampler's private
    state; Optuna must number them the same (its ``_all_grids`` here, in a test, is what pins that dependency)."""
    from nas.engine.samplers import GridSampler, grid_id_of, grid_numbering

    study_file = _study(tmp_path, "numbering")
    _, table = make_table(tmp_path, study_file)
    grid = SearchSpace.from_dict(table.space).param_grid()
    for seed in (0, 3, 11):
        names, points = grid_numbering(grid, seed)
        optuna_grid = optuna.samplers.GridSampler(grid, seed=seed)
        assert points == optuna_grid._all_grids and names == optuna_grid._param_names
    study = _replay(tmp_path, "g-num", make_table(tmp_path, study_file)[0], sampler={"name": "grid"},
                    pruner={"name": "none"}, fidelity={"rungs": []})  # fmt: skip
    sampler = GridSampler(grid, seed=study.user_attrs["config"]["seed"])
    for t in study.trials:  # every recorded grid id names the point the trial trained
        assert sampler.grid_points[grid_id_of(t)] == tuple(t.params[k] for k in sampler.param_names)


def test_a_resumed_grid_study_trains_each_remaining_architecture_once(tmp_path: Path) -> None:
    """The grid's order is shuffled by the sampler's seed: a resume must keep the first run's order, or it trains
    repeats and skips points (seen on the lab's table build)."""
    table_path, table = make_table(tmp_path, _study(tmp_path, "seed"))
    kw = {"sampler": {"name": "grid"}, "pruner": {"name": "none"}, "fidelity": {"rungs": []}}
    first = _replay(tmp_path, "g2", table_path, budget={"n_trials": 7, "max_concurrent": 3}, **kw)
    assert len(first.trials) == 7
    study = _replay(tmp_path, "g2", table_path, budget={"n_trials": 100, "max_concurrent": 3}, **kw)
    trained = [t.user_attrs["arch_id"] for t in study.trials if "reused_from" not in t.user_attrs]
    assert sorted(trained) == sorted(table.archs)  # each exactly once, none skipped
    assert len(study.trials) == len(table.archs)


def test_rerunning_a_grid_build_retrains_an_architecture_interrupted_twice(tmp_path: Path) -> None:
    """The stale-trial recovery retries an interrupted trial once; a grid counts the point as visited, so without
    the rerun's requeue the table would keep a hole that no rerun fills."""
    kw = {"sampler": {"name": "grid"}, "pruner": {"name": "none"}, "fidelity": {"rungs": []}}
    study = _study(tmp_path, "holes", budget={"n_trials": None, "max_concurrent": 1}, **kw)
    table_path, table = make_table(tmp_path, study)
    cfg, space = read_study_file(study)
    for _ in range(2):  # one trial cut after 3 of its 6 epochs, then its retry cut the same way
        store = StudyStore(cfg, space, make_sampler(cfg, 0, space), make_pruner(cfg), tmp_path / "studies")
        driver = Driver(cfg, space, store, store.study.pruner, 10, None)
        ReplayExecutor(table, workers=1, max_trial_epochs=3).run(driver)
        driver.finish()
        store.close()
    first = optuna.load_study(study_name="holes", storage=f"sqlite:///{tmp_path / 'studies' / 'holes' / 'study.db'}")
    assert [t.state for t in first.trials] == [TrialState.FAIL, TrialState.FAIL]  # the retry was not retried
    run_study(study, base_dir=tmp_path / "studies", progress=Progress(quiet=True), replay=table_path)
    done = optuna.load_study(study_name="holes", storage=f"sqlite:///{tmp_path / 'studies' / 'holes' / 'study.db'}")
    complete = {t.user_attrs["arch_id"] for t in done.trials if t.state == TrialState.COMPLETE}
    assert complete == set(table.archs)


def test_same_seed_same_study(tmp_path: Path) -> None:
    table_path, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    a, b = _replay(tmp_path, "d1", table_path), _replay(tmp_path, "d2", table_path)
    assert _history(a) == _history(b) and len(a.trials) >= 40
    c = _replay(tmp_path, "d3", table_path, seed=4)
    assert _history(c) != _history(a)


def _replay_driver(tmp_path: Path, name: str, n_trials: int | None, workers: int) -> tuple[Driver, StudyStore, Table]:
    """A driver on a real SQLite study of the hand-made space, and its table, for a ReplayExecutor run by hand."""
    study = _study(tmp_path, name, budget={"n_trials": n_trials, "max_concurrent": workers})
    _, table = make_table(tmp_path, study)
    cfg, space = read_study_file(study)
    store = StudyStore(cfg, space, make_sampler(cfg, 0), make_pruner(cfg), tmp_path / "studies")
    return Driver(cfg, space, store, store.study.pruner, 10, n_trials), store, table


def test_simulated_compute_accounting(tmp_path: Path) -> None:
    """One worker: the simulation's clock is exactly the sum of the epochs it trained, each its table seconds."""
    driver, store, table = _replay_driver(tmp_path, "acct", n_trials=25, workers=1)
    (executor := ReplayExecutor(table, workers=1)).run(driver)
    log = executor.log
    store.close()
    trained = [t for t in store.study.trials if "reused_from" not in t.user_attrs and t.state != TrialState.FAIL]
    assert len(log.epochs) == sum(t.user_attrs["fidelity"] for t in trained)
    assert log.seconds == pytest.approx(sum(s for *_, s in log.epochs))
    by_number = {t.number: t for t in trained}
    for _, number, _, seconds in log.epochs:
        assert seconds == table.archs[by_number[number].user_attrs["arch_id"]].epoch_seconds
    assert [n for _, n in log.ends] == sorted(by_number)  # one worker: trials end in order


def test_a_tables_fixed_costs_are_charged_per_trial_and_a_measurement_once_per_architecture(tmp_path: Path) -> None:
    """Issue 30: a real trial pays more than its epochs. With ``fixed_costs`` one worker's clock is the epochs plus
    ``trial_s`` for every trial started plus ``measure_s`` for the first trial of each architecture (the engine's
    throughput cache spares the later ones); without them, the epochs alone."""
    driver, store, table = _replay_driver(tmp_path, "fixed", n_trials=25, workers=1)
    table = dataclasses.replace(table, fixed_costs={"trial_s": 0.5, "measure_s": 2.0})
    (executor := ReplayExecutor(table, workers=1)).run(driver)
    log = executor.log
    store.close()
    trained = [t for t in store.study.trials if "reused_from" not in t.user_attrs and t.state != TrialState.FAIL]
    archs = {t.user_attrs["arch_id"] for t in trained}
    assert len(log.fixed) == len(trained) and table.fixed_seconds(measured=True) == 0.5
    assert sum(s for *_, s in log.fixed) == pytest.approx(0.5 * len(trained) + 2.0 * len(archs))
    assert log.seconds == pytest.approx(sum(s for *_, s in log.epochs) + sum(s for *_, s in log.fixed))
    driver, store, _ = _replay_driver(tmp_path, "unpaid", n_trials=25, workers=1)
    (executor := ReplayExecutor(table, workers=1, fixed_costs=False)).run(driver)
    store.close()
    assert executor.log.fixed == [] and executor.log.seconds == pytest.approx(sum(s for *_, s in executor.log.epochs))


def test_a_compute_budget_stops_the_replay(tmp_path: Path) -> None:
    driver, store, table = _replay_driver(tmp_path, "budget", n_trials=None, workers=2)
    (executor := ReplayExecutor(table, workers=2, max_trial_epochs=30)).run(driver)
    log = executor.log
    driver.finish()
    store.close()
    assert log.stopped_by_budget and len(log.epochs) == 30


def test_until_ends_the_replay_after_the_trial_that_satisfied_it(tmp_path: Path) -> None:
    driver, store, table = _replay_driver(tmp_path, "until", n_trials=None, workers=3)
    asked = []

    def third_end(trial: optuna.trial.FrozenTrial) -> bool:
        assert trial.state.is_finished()  # told before it is asked about
        asked.append(trial.number)
        return len(asked) == 3

    (executor := ReplayExecutor(table, workers=3, until=third_end)).run(driver)
    log = executor.log
    left = driver.finish()
    store.close()
    assert len(log.ends) == 3 and log.stopped_by_budget
    assert asked == [n for _, n in log.ends]  # asked once per ended trial, with its number
    assert log.seconds == max(t for t, _ in log.ends)  # nothing ran past the third end
    assert left and all(n not in {m for _, m in log.ends} for n in left)  # the running ones failed, to be retried


def test_rays_asha_on_accuracy_can_be_the_stopper(tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    table_path, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    study = _study(tmp_path, "asha", pruner={"name": "none"})

    def asha(driver):
        s = ASHAScheduler(time_attr="training_iteration", max_t=EPOCHS, grace_period=1, reduction_factor=2)
        s.set_search_properties("val_acc", "max")
        return s

    run_study(study, base_dir=tmp_path / "studies", progress=Progress(quiet=True), replay=table_path,
              scheduler_factory=asha)  # fmt: skip
    st = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp_path / 'studies' / 'asha' / 'study.db'}")
    pruned = [t for t in st.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.values is None and not t.user_attrs["full_fidelity"] for t in pruned)


def test_a_table_of_another_space_or_training_is_refused_in_one_line(tmp_path: Path) -> None:
    table_path, _ = make_table(tmp_path, _study(tmp_path, "seed"))
    other = _study(tmp_path, "lr", train={"epochs": EPOCHS, "batch_size": 64, "lr": 0.01})
    with pytest.raises(ConfigError, match=r"train\.lr is 0\.01 but table .* was built with 0\.002"):
        run_study(other, base_dir=tmp_path / "studies", progress=Progress(quiet=True), replay=table_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, "mlp_ratio": 2}))
    with pytest.raises(ConfigError, match=r"space: 'replay4' \(hash \w+\) is not the space table"):
        run_study(tmp_path / "seed.yaml", base_dir=tmp_path / "studies", progress=Progress(quiet=True),
                  replay=table_path)  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    raw = json.loads(table_path.read_text())
    raw["archs"] = raw["archs"][:2]
    holes = tmp_path / "holes.json"
    holes.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="does not hold"):
        run_study(_study(tmp_path, "holes"), base_dir=tmp_path / "studies", progress=Progress(quiet=True),
                  replay=holes)  # fmt: skip
    assert not (tmp_path / "studies" / "lr").exists()  # refused before anything was written


def test_a_table_of_one_seed_keeps_format_1_byte_for_byte() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tables" / "fmnist_bench.json"
    table = Table.load(path)
    assert table.n_seeds == 1 and table.to_json() == json.loads(path.read_text())
    a = next(iter(table.archs.values()))
    assert a.mean_final == a.val_acc[-1] and len(a.curves()) == 1


def test_replay_draws_each_architectures_seed_from_the_run_seed_and_a_replicate_sees_another(tmp_path: Path) -> None:
    """Table v2 (three seeds): a replay shows each architecture one seed's curve, drawn from the run's seed and the
    architecture (the same run, the same draw); the k-th replicate of an architecture sees the next seed."""
    path, table = make_table(tmp_path, _study(tmp_path, "t"), seeds=3)
    assert json.loads(path.read_text())["format"] == "mixer-nas-table/2" and table.n_seeds == 3
    ids = sorted(table.archs)
    first = [table.seed_index(3, a) for a in ids]
    assert first == [table.seed_index(3, a) for a in ids] and set(first) == {0, 1, 2}
    assert first != [table.seed_index(4, a) for a in ids]  # another run, other draws
    assert all(table.seed_index(3, a, 1) == (i + 1) % 3 for a, i in zip(ids, first, strict=True))
    racing = {"replicates": {"max_per_arch": 3, "budget_share": 0.3}, "budget": {"n_trials": 30, "max_concurrent": 2}}
    study = _replay(tmp_path, "rep", path, pruner={"name": "none"}, fidelity={"rungs": []}, **racing)
    evaluations = [t for t in study.trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    replicates = [t for t in evaluations if t.user_attrs.get("replicate")]
    assert replicates, "racing found nothing uncertain on a table whose seeds differ by a point"
    for t in evaluations:  # every evaluation shows the seed the run's draw names, its replicates the next ones
        arch, k = t.user_attrs["arch_id"], t.user_attrs.get("replicate") or 0
        curve = table.archs[arch].curves()[table.seed_index(3, arch, k)]
        assert t.values[0] == curve.val_acc[-1]


def test_replicates_need_a_table_of_as_many_seeds(tmp_path: Path) -> None:
    path, _ = make_table(tmp_path, _study(tmp_path, "t"))
    with pytest.raises(ConfigError, match=r"replicates\.max_per_arch is 2 but table .* holds 1 training seed"):
        _replay(tmp_path, "v1", path, replicates={"max_per_arch": 2})
    assert not (tmp_path / "studies" / "v1").exists()


def test_a_wall_time_budget_stops_the_replay_in_simulated_seconds(tmp_path: Path) -> None:
    """``budget.wall_time_s`` is simulated time in a replay (it used to be ignored: 562 s and 855 trials for a 5 s
    limit): nothing ends after it, the clock stops at it, and the trials still running are failed to be retried."""
    study = _study(tmp_path, "wall", budget={"n_trials": None, "max_concurrent": 2, "wall_time_s": 40})
    _, table = make_table(tmp_path, study)
    cfg, space = read_study_file(study)
    store = StudyStore(cfg, space, make_sampler(cfg, 0), make_pruner(cfg), tmp_path / "studies")
    driver = Driver(cfg, space, store, store.study.pruner, 10, None)
    (executor := ReplayExecutor(table)).run(driver)
    log = executor.log
    left = driver.finish()
    store.close()
    assert log.stopped_by_time and not log.stopped_by_budget and log.seconds == 40
    assert log.ends and max(t for t, _ in log.ends) <= 40 and max(t for t, *_ in log.epochs) <= 40
    assert len(log.epochs) < 40 / 1 * 2  # two workers, epochs of at least 1 s each
    assert left  # the two trials running at the limit
