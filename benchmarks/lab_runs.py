"""One search run on a tabulated benchmark, for every method of the search lab, as a hypervolume-vs-compute curve.

* ours and Optuna's samplers (with or without our MO-ASHA pruner) and Ray Tune's ASHA: the real engine (driver,
  sampler, pruner, an in-memory Optuna storage) through ``run_config`` (the entry point of ``nas search``) on
  :class:`nas.engine.replay.ReplayExecutor`;
* Syne Tune's MOASHA and MOREA: its own simulator (``BlackboxTabular`` + ``UserBlackboxBackend`` +
  ``SimulatorCallback``) on a blackbox built from the same table, the same epoch seconds.

Compute is counted the same way for all: every epoch a method trains costs one trial-epoch and the architecture's
epoch seconds (the table's median), and every trial it starts the table's fixed cost (``Table.fixed_costs``,
measured by benchmarks/lab_costs.py: a trial's start and build, and the throughput measurement of an architecture
not measured before — our engine caches it by architecture, Syne Tune measures in every trial); a reused result
costs nothing (only our engine reuses). The curve is the
normalised hypervolume (nas.pareto.normalized_hypervolume, bounds = the table's range of each objective) of the
front the search reports at that moment — the Pareto front of its own estimates (mean over the seeds it observed) —
placed at the architectures' true points, divided by the true front's or the ceiling's (:class:`ReportedFront`); it
steps when a trial completes. What is true, and which training seeds a search may see, is the run's *truth*
(benchmarks/lab_truth.py: proxy, held-out seed, or target scale). In a table of several seeds every trial sees one
visible seed's curve (``Table.seed_index`` on the visible seeds), Syne Tune's blackbox the same one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import lab_truth, syne_adapter
from benchmarks.lab_truth import DIRECTIONS, Truth
from nas.engine.pruners import ParetoPruner
from nas.engine.replay import Table, TableArch
from nas.pareto import pareto_front
from nas.trial_record import TrialRecord


@dataclass(frozen=True)
class Method:
    """A search method of the lab: our engine with a sampler and a pruner (optionally Ray's ASHA as the stopper),
    or a Syne Tune scheduler."""

    name: str
    kind: str  # "engine" | "syne"
    sampler: str = "random"
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    rungs: tuple[int, ...] = ()
    ray_asha: bool = False
    syne: str = ""  # "moasha" | "morea"
    eta: int = 3
    oracle: bool = False  # our pruner ranks on each architecture's final accuracy (a bound, not a method)
    replicates: dict[str, Any] | None = None  # the study's ``replicates:`` (seed replicates; a table of >1 seed)


@dataclass
class Curve:
    """Step curve of one run: after each completed trial, (trial-epochs, worker-seconds, normalised HV share)."""

    method: str
    seed: int
    points: list[tuple[int, float, float]] = field(default_factory=list)
    trials: int = 0
    unique_archs: int = 0

    def compute_to(self, share: float, axis: int = 1) -> float | None:
        """Compute (axis 0: trial-epochs, 1: worker-seconds) when the HV share first reached ``share``."""
        return next((p[axis] for p in self.points if p[2] >= share - 1e-12), None)


def bounds(table: Table) -> tuple[list[float], list[float]]:
    """The hypervolume's bounds at the proxy truth (the table's range of each objective)."""
    return lab_truth.proxy(table).bounds(table)


def final_point(a: TableArch) -> list[float]:
    """The architecture's proxy-truth point: its final accuracy averaged over the table's seeds, and its throughput."""
    return [a.mean_final, a.throughput["median"]]


def true_front(table: Table, truth: Truth | None = None) -> list[TableArch]:
    """The architectures of the true front (default: at the proxy truth)."""
    t = truth or lab_truth.proxy(table)
    return [table.archs[a] for a in t.front(table)]


def true_hv(table: Table) -> float:
    """The proxy truth's front hypervolume."""
    return lab_truth.proxy(table).total(table)


class ReportedFront:
    """The lab's score (issue 17; the truth is selectable since issue 28, benchmarks/lab_truth.py): the share of the
    true front's hypervolume (or of the ceiling's) reached by the front the search itself reports — the Pareto front
    of its own estimates, each architecture's accuracy the mean over the seeds it observed — with every reported
    architecture placed at its true point; the truth's range of each objective as the bounds. A search that believes
    a lucky seed loses what the truly better architecture it leaves off would have given; on a one-seed table at the
    proxy truth it is the share of the architectures found. The curve's y, and where the lab ends a run."""

    def __init__(self, table: Table, truth: Truth | None = None) -> None:
        self.table, self.seen, self.tp = table, {}, {}
        self.truth = truth or lab_truth.proxy(table)
        self.total, self.bounds = self.truth.total(table), self.truth.bounds(table)  # once: add() runs per trial

    def add(self, arch_id: str, observed: float, replicate: int = 0, throughput: float | None = None) -> float:
        """Record one finished evaluation (a reused copy repeats its source's) with the throughput the search
        observed (default: the table's median); returns the share after it."""
        self.seen.setdefault(arch_id, {})[replicate] = observed
        if throughput is not None:
            self.tp[arch_id] = throughput
        ids = list(self.seen)
        estimates = [[statistics.fmean(self.seen[a].values()), self.tp.get(a, self.table.archs[a].throughput["median"])]
                     for a in ids]  # fmt: skip
        front = [ids[i] for i in pareto_front(estimates, DIRECTIONS)]
        return self.truth.hv(self.table, front, self.bounds) / self.total


def curve_from_events(
    method: str,
    seed: int,
    table: Table,
    epochs: list[tuple[float, float]],
    completed: list[tuple[float, str, float, int, float | None]],
    truth: Truth | None = None,
    fixed: list[tuple[float, float]] = (),
) -> Curve:
    """``epochs``: (time, seconds) of every epoch trained; ``fixed``: (time, seconds) of every fixed cost paid (a
    trial's start); ``completed``: (time, arch_id, the accuracy the search observed, seed replicate, the throughput
    it observed or None for the table's median) of every trial that reached full fidelity (a reused copy is not an
    event). All in simulated time; scored at ``truth`` (default: the proxy's)."""
    curve, found = Curve(method, seed), ReportedFront(table, truth)
    costs = sorted([(t, s, 1) for t, s in epochs] + [(t, s, 0) for t, s in fixed])
    done_e, done_s, i = 0, 0.0, 0
    for t, arch_id, observed, replicate, tp in sorted(completed, key=lambda c: c[:4]):
        while i < len(costs) and costs[i][0] <= t + 1e-9:
            done_e, done_s, i = done_e + costs[i][2], done_s + costs[i][1], i + 1
        curve.points.append((done_e, done_s, found.add(arch_id, observed, replicate, tp)))
    curve.unique_archs = len({c[1] for c in completed})
    return curve


# ---------------------------------------------------------------------------------------------- our engine
class OraclePruner(ParetoPruner):
    """Our MO-ASHA pruner told, at every rung, each architecture's final accuracy from the table instead of the
    accuracy it has at that rung: the same rungs, eta and sampler with a perfect early signal. How much compute
    rank-based pruning could save on this table at best; not a method anyone can run."""

    def __init__(self, truth: Truth, like: Any) -> None:
        if not isinstance(like, ParetoPruner):
            raise SystemExit("error: --oracle needs our pareto pruner (the ours-* methods)")
        super().__init__(like.rungs, like.objectives, like.directions, like.eta, like.min_trials)
        self.final = truth.acc

    def vector(self, trial: Any, rung: int) -> list[float] | None:
        v = super().vector(trial, rung)
        if v is not None:
            v[self.objectives.index("accuracy")] = self.final[TrialRecord.of(trial).arch_id]
        return v


@dataclass(frozen=True)
class RunSettings:
    """What every run of a lab comparison shares, whatever the method: simulated ``workers``, the ``budget`` of
    trial-epochs, the share of the true front's hypervolume at which a run ends (``stop_share``), whether trials pay
    the table's fixed costs and see its throughput spread (issue 30)."""

    workers: int
    budget: int
    stop_share: float = 1.0
    fixed_costs: bool = True
    throughput_noise: bool = True


def run_engine(
    table: Table, base: dict[str, Any], m: Method, seed: int, rs: RunSettings, truth: Truth | None = None
) -> Curve:
    """One run of our engine through the entry point every study takes (``run_config``), on the replay executor
    and an in-memory Optuna storage; the search replays only the seeds ``truth`` leaves visible (default: the proxy
    truth, every seed) and is scored at it. Replicates are capped at the visible seeds. ``fixed_costs``: charge the
    table's (if it has them)."""
    import optuna
    from optuna.trial import FrozenTrial, TrialState
    from rich.console import Console

    from nas.engine.config import StudyConfig
    from nas.engine.progress import Progress
    from nas.engine.replay import ReplayExecutor
    from nas.engine.run import run_config
    from nas.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    truth = truth or lab_truth.proxy(table)
    view = truth.search_table(table)
    replicates = m.replicates
    if replicates and replicates["max_per_arch"] > view.n_seeds:
        replicates = {**replicates, "max_per_arch": view.n_seeds}
    cfg = StudyConfig.model_validate(
        {
            **base,
            "name": f"lab-{m.name}-{seed}",
            "space": "inline",
            "sampler": {"name": m.sampler, "n_startup_trials": 10},
            "pruner": m.pruner,
            "fidelity": {"rungs": list(m.rungs)},
            "replicates": replicates,
            "budget": {"n_trials": None, "max_concurrent": rs.workers},
            "seed": seed,
            "storage": "sqlite://",
        }
    )
    found = ReportedFront(table, truth)

    def reached(t: FrozenTrial) -> bool:
        a = TrialRecord.of(t)
        if t.state != TrialState.COMPLETE or not a.full_fidelity:
            return False
        return found.add(a.arch_id, t.values[0], a.replicate or 0, t.values[1]) >= rs.stop_share - 1e-12

    def ray_asha(driver: Any) -> Any:
        from ray.tune.schedulers import ASHAScheduler

        epochs = cfg.train.epochs
        s = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=m.eta)
        s.set_search_properties("val_acc", "max")
        return s

    storage, quiet = optuna.storages.InMemoryStorage(), Progress(Console(quiet=True), quiet=True)
    executor = ReplayExecutor(view, rs.workers, max_trial_epochs=rs.budget, until=reached, fixed_costs=rs.fixed_costs,
                              throughput_noise=rs.throughput_noise)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run_config(
            cfg, SearchSpace.from_dict(table.space), f"lab {m.name} seed {seed}", Path(tmp), quiet,
            ray_asha if m.ray_asha else None, executor, storage=storage,
            wrap_pruner=(lambda p: OraclePruner(truth, p)) if m.oracle else None,
        )  # fmt: skip
    trials = {t.number: t for t in storage.get_all_trials(storage.get_study_id_from_name(cfg.name), deepcopy=False)}
    log = executor.log
    attrs = {n: TrialRecord.of(t) for n, t in trials.items()}
    epochs = [(t, secs) for t, _, _, secs in log.epochs]
    done = [
        (t, attrs[n].arch_id, trials[n].values[0], attrs[n].replicate or 0, trials[n].values[1])
        for t, n in log.ends
        if trials[n].state.name == "COMPLETE" and attrs[n].full_fidelity
    ]
    curve = curve_from_events(m.name, seed, table, epochs, done, truth, [(t, secs) for t, _, secs in log.fixed])
    curve.trials = len(trials)
    return curve


# ---------------------------------------------------------------------------------------------- Syne Tune
_BLACKBOX: dict[str, Any] = {}


def _blackbox(
    table: Table, seed: int, fixed_s: float = 0.0, throughput_noise: bool = True
) -> tuple[Any, dict[tuple, str]]:
    """The table as a Syne Tune ``BlackboxTabular``: objectives error and -throughput (minimised), cumulative
    elapsed time from the same epoch seconds our replay uses after ``fixed_s`` (a trial's fixed cost); each
    architecture's curve is the training seed our replay draws for run ``seed`` (Table.seed_index) and its
    throughput the one our replay draws (Table.throughput_draw), so both see the same noise."""
    key = (table.source, seed if table.n_seeds > 1 or throughput_noise else 0, fixed_s, throughput_noise)
    if key in _BLACKBOX:
        return _BLACKBOX[key]
    import numpy as np
    import pandas as pd
    import syne_tune.config_space as sp
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular

    archs = list(table.archs.values())
    names = list(archs[0].params)
    n_ep = table.epochs
    hp = pd.DataFrame([[a.params[n] for n in names] for a in archs], columns=names)
    cs = {n: sp.choice(sorted({a.params[n] for a in archs}, key=str)) for n in names}
    ev = np.zeros((len(archs), 1, n_ep, 3))
    for i, a in enumerate(archs):
        acc = a.curves()[table.seed_index(seed, a.arch_id)].val_acc
        tp = table.throughput_draw(seed, a.arch_id) if throughput_noise else a.throughput["median"]
        for e in range(n_ep):
            ev[i, 0, e] = [1 - acc[e], -tp, fixed_s + (e + 1) * a.epoch_seconds]
    bb = BlackboxTabular(
        hyperparameters=hp,
        configuration_space=cs,
        fidelity_space={"epoch": sp.randint(1, n_ep)},
        objectives_evaluations=ev,
        fidelity_values=np.arange(1, n_ep + 1),
        objectives_names=["error", "neg_throughput", "elapsed_time"],
    )
    by_params = {tuple(str(a.params[n]) for n in names): a.arch_id for a in archs}
    _BLACKBOX[key] = (bb, by_params)
    return bb, by_params


def run_syne(table: Table, m: Method, seed: int, rs: RunSettings, truth: Truth | None = None) -> Curve:
    """One run of a Syne Tune scheduler in its simulator on the seeds ``truth`` leaves visible, scored at it. With
    ``fixed_costs`` every trial pays the table's fixed cost and a throughput measurement (Syne Tune keeps no cache
    of measurements between trials)."""
    os.environ.setdefault("SYNETUNE_FOLDER", tempfile.mkdtemp(prefix="syne-tune-"))
    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.optimizer.schedulers.multiobjective import MultiObjectiveRegularizedEvolution
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
    from syne_tune.optimizer.schedulers.single_fidelity_scheduler import SingleFidelityScheduler
    from syne_tune.tuner_callback import TunerCallback

    truth = truth or lab_truth.proxy(table)
    fixed_s = table.fixed_seconds(measured=False) if rs.fixed_costs else 0.0
    bb, by_params = _blackbox(truth.search_table(table), seed, fixed_s, rs.throughput_noise)
    names = list(next(iter(table.archs.values())).params)
    cs = bb.configuration_space_with_max_resource_attr("epochs")
    metrics = ["error", "neg_throughput"]
    if m.syne == "moasha":
        scheduler = MOASHA(cs, metrics=metrics, do_minimize=True, time_attr="epoch", max_t=table.epochs,
                           grace_period=1, reduction_factor=m.eta, random_seed=seed)  # fmt: skip
    else:
        searcher = MultiObjectiveRegularizedEvolution(cs, population_size=20, sample_size=5, random_seed=seed)
        scheduler = SingleFidelityScheduler(cs, metrics=metrics, do_minimize=True, searcher=searcher, random_seed=seed)

    class Recorder(TunerCallback):
        def __init__(self) -> None:
            self.epochs: list[tuple[float, float]] = []
            self.fixed: list[tuple[float, float]] = []
            self.archs: set[str] = set()
            self.done: list[tuple[float, str, float, int, float]] = []
            self.found, self.reached = ReportedFront(table, truth), False

        def on_trial_result(self, trial: Any, status: str, result: dict, decision: str) -> None:
            arch = by_params[tuple(str(trial.config[n]) for n in names)]
            t = float(result["st_tuner_time"])
            self.epochs.append((t, table.archs[arch].epoch_seconds))
            self.archs.add(arch)
            if int(result["epoch"]) == 1 and fixed_s > 0:  # paid before the first epoch, counted with it
                self.fixed.append((t, fixed_s))
            if int(result["epoch"]) >= table.epochs:
                observed, tp = 1.0 - float(result["error"]), -float(result["neg_throughput"])
                self.done.append((t, arch, observed, 0, tp))
                self.reached = self.reached or self.found.add(arch, observed, 0, tp) >= rs.stop_share - 1e-12

    rec, spent = Recorder(), StoppingCriterion(max_num_evaluations=rs.budget)
    # the simulator on the table's clock alone, and (below) Syne Tune's own sort computed faster: syne_adapter
    backend = syne_adapter.table_time_backend(blackbox=bb, elapsed_time_attr="elapsed_time", max_resource_attr="epochs")
    tuner = Tuner(
        trial_backend=backend, scheduler=scheduler, stop_criterion=lambda status: rec.reached or spent(status),
        n_workers=rs.workers, sleep_time=0, callbacks=[SimulatorCallback(), rec], save_tuner=False,
        results_update_interval=1e9, print_update_interval=1e9,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), syne_adapter.faster_syne_sort():  # ~100 s less CPU a seed
        tuner.run()
    epochs = sorted(rec.epochs)[: rs.budget]
    cut = epochs[-1][0] if epochs else 0.0
    fixed = [f for f in rec.fixed if f[0] <= cut]
    curve = curve_from_events(m.name, seed, table, epochs, [d for d in rec.done if d[0] <= cut], truth, fixed)
    curve.trials = len(rec.archs)
    return curve


def run(
    table_path: str,
    base: dict[str, Any],
    m: Method,
    seed: int,
    rs: RunSettings,
    truth: str = "proxy",
    relative: str | None = None,
) -> Curve:
    """One (method, seed): what a worker process of the lab runs, at the truth named ``truth`` (lab_truth.make);
    it ends at ``budget`` trial-epochs or once it has reached ``stop_share`` of the true front's (or the ceiling's)
    hypervolume. The global random generators are seeded too: Syne Tune draws from them besides its
    ``random_seed`` (unseeded, two runs of one seed differed)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    table = Table.load(table_path)
    t = lab_truth.make(truth, table, seed, relative)
    if m.kind == "syne":
        return run_syne(table, m, seed, rs, t)
    return run_engine(table, base, m, seed, rs, t)
