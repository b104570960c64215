"""Replaying a tabulated benchmark: the real driver, sampler, pruner and storage, with every trial's epochs and
throughput read from a table in simulated asynchronous time.

A *table* is a search space evaluated exhaustively (benchmarks/tables/*.json, built by the engine itself with
``sampler: grid`` and no pruning): per architecture its per-epoch validation curve, its epoch seconds, its
throughput, params and FLOPs, plus the space, the training configuration and the provenance of the build.
:class:`ReplayExecutor` is the second implementation of the executor seam (nas.engine.executor), beside Ray Tune:
``max_concurrent`` simulated workers take configurations from ``Driver.next_config``, each epoch of a trial ends
``epoch_seconds`` after the previous one (the architecture's median recorded epoch time: the build machine was
shared, so single epochs are noisy), the driver records it and asks its pruner at the rungs exactly as in a real
run, and a Ray Tune scheduler (ASHA) can make the stop decisions instead. The stored study looks like a real one
(curves, PRUNED/COMPLETE, the front), so status, dashboard and export of configurations work on it; only weights do
not exist. Search methods can therefore be compared on a known true front with many seeds in seconds
(benchmarks/search_lab.py).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.engine.config import StudyConfig
from nas.engine.executor import ExecTrial, Prepared, TrialFeed
from nas.engine.messages import EpochReport
from nas.errors import ConfigError
from nas.measure import ThroughputKey
from nas.space import SearchSpace

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from nas.engine.driver import Driver

TABLE_FORMAT = "mixer-nas-table/1"  # one training seed per architecture
TABLE_FORMAT_SEEDS = "mixer-nas-table/2"  # several: each architecture's extra seeds in ``extra_seeds``


def training_of(cfg: StudyConfig) -> dict[str, Any]:
    """What must match between a table and a study replayed against it: data, optimisation, throughput settings
    (device, compile and other speed-only settings excluded, as for resuming a trial)."""
    return {
        "dataset": cfg.dataset.model_dump(mode="json"),
        "train": cfg.train.resume_fingerprint(),
        "throughput": cfg.throughput.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class SeedCurve:
    """One training seed's per-epoch curves of an architecture, and which validation images its final model got
    right (:mod:`trainers.bitmap` text; None where the build did not keep it)."""

    seed: int
    val_acc: list[float]
    val_loss: list[float]
    train_loss: list[float]
    seconds: list[float]
    val_correct: str | None = None


@dataclass(frozen=True)
class TableArch:
    """One architecture of a table: its Optuna parameters, costs, throughput and per-epoch curves (training seed
    0), and in a table of several seeds (format 2) each other seed's curves (``extra_seeds``, SeedCurve fields)."""

    arch_id: str
    params: dict[str, Any]
    placement: str
    n_params: int
    flops: int
    throughput: dict[str, float]  # median, iqr, cv (images/s)
    val_acc: list[float]
    val_loss: list[float]
    train_loss: list[float]
    seconds: list[float]
    extra_seeds: list[dict[str, Any]] = field(default_factory=list)
    val_correct: str | None = None  # the first seed's correct images, where the table keeps them

    @property
    def epoch_seconds(self) -> float:
        """The architecture's median recorded epoch time: the simulated seconds of each of its epochs."""
        return float(statistics.median(self.seconds))

    def curves(self) -> list[SeedCurve]:
        """Every training seed's curves, seed 0 first."""
        first = SeedCurve(0, self.val_acc, self.val_loss, self.train_loss, self.seconds, self.val_correct)
        return [first, *(SeedCurve(**s) for s in self.extra_seeds)]

    @property
    def mean_final(self) -> float:
        """The final accuracy averaged over the table's seeds: the architecture's truth in the lab."""
        return float(statistics.fmean(c.val_acc[-1] for c in self.curves()))


@dataclass
class Table:
    """A tabulated benchmark of one search space (see the module docstring)."""

    name: str
    space: dict[str, Any]
    space_hash: str
    training: dict[str, Any]
    num_classes: int
    epochs: int
    archs: dict[str, TableArch]
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    # What a real trial pays besides its epochs, measured on a named device (benchmarks/lab_costs.py): ``trial_s``
    # every trial, ``measure_s`` a trial whose architecture's throughput is not measured yet (the measurement and the
    # other workers' stall while it holds the device), with their provenance; empty: epochs only.
    fixed_costs: dict[str, Any] = field(default_factory=dict)

    def fixed_seconds(self, measured: bool) -> float:
        """What one trial pays besides its epochs (0 without ``fixed_costs``); ``measured``: its architecture's
        throughput is already measured (the engine's cache: no measurement)."""
        fc = self.fixed_costs
        return float(fc.get("trial_s", 0.0)) + (0.0 if measured else float(fc.get("measure_s", 0.0)))

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """Read a table file (``benchmarks/tables/*.json``).

        Raises:
            ConfigError: the file is missing, not JSON, of another format version, or an architecture has fewer
                epochs than the table says (one line naming the file).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: table file not found; pass a benchmarks/tables/*.json file to --replay")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a table (not JSON: {e})") from None
        if not isinstance(raw, dict) or raw.get("format") not in (TABLE_FORMAT, TABLE_FORMAT_SEEDS):
            raise ConfigError(
                f"{path}: not a table of this version (format must be {TABLE_FORMAT!r} or {TABLE_FORMAT_SEEDS!r})"
            )
        archs = {a["arch_id"]: TableArch(**a) for a in raw["archs"]}
        short = [a.arch_id for a in archs.values() if min(len(c.val_acc) for c in a.curves()) < raw["epochs"]]
        if short:
            raise ConfigError(f"{path}: architecture {short[0]} has fewer than the table's {raw['epochs']} epochs")
        if len({len(a.extra_seeds) for a in archs.values()}) > 1:
            raise ConfigError(f"{path}: its architectures have different numbers of training seeds")
        fields = {k: raw[k] for k in ("name", "space", "space_hash", "training", "num_classes", "epochs")}
        return cls(**fields, archs=archs, provenance=raw.get("provenance", {}), source=str(path),
                   fixed_costs=raw.get("fixed_costs", {}))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The table as its file stores it (``format`` first)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("archs", "source")}
        if not self.fixed_costs:
            del out["fixed_costs"]
        archs = [asdict(a) for a in self.archs.values()]
        archs = [{k: v for k, v in a.items() if k != "val_correct" or v is not None} for a in archs]
        if self.n_seeds == 1:  # format 1, as before seeds existed
            archs = [{k: v for k, v in a.items() if k != "extra_seeds"} for a in archs]
        out["archs"] = archs
        return {"format": TABLE_FORMAT if self.n_seeds == 1 else TABLE_FORMAT_SEEDS, **out}

    @property
    def n_seeds(self) -> int:
        """Training seeds per architecture (1 in a format-1 table)."""
        return 1 + min((len(a.extra_seeds) for a in self.archs.values()), default=0)

    def with_seeds(self, keep: list[int]) -> Table:
        """The same table holding only the training seeds at positions ``keep`` of each architecture's
        :meth:`TableArch.curves` (in that order; each seed keeps its correct images): what a search may see when the
        other seeds are held out as its truth (benchmarks/lab_truth.py). Epoch seconds stay the table's (seed 0's
        median), so a view costs what the table costs; its ``source`` names the seeds kept.

        Raises:
            ValueError: ``keep`` is empty, repeats a position or names one the table does not have.
        """
        if not keep or len(set(keep)) != len(keep) or not all(0 <= k < self.n_seeds for k in keep):
            raise ValueError(f"seeds to keep {keep} must be distinct positions among the table's {self.n_seeds}")
        archs = {}
        for arch_id, a in self.archs.items():
            curves = a.curves()
            first, rest = curves[keep[0]], [asdict(curves[k]) for k in keep[1:]]
            archs[arch_id] = replace(a, val_acc=first.val_acc, val_loss=first.val_loss, train_loss=first.train_loss,
                                     val_correct=first.val_correct, extra_seeds=rest)  # fmt: skip
        return replace(self, archs=archs, source=f"{self.source}#seeds={','.join(map(str, keep))}")

    def seed_index(self, run_seed: int, arch_id: str, replicate: int = 0) -> int:
        """Which of an architecture's seeds a replay shows (0-based): drawn from the run's seed and the architecture,
        so a search sees one seed's noise as in reality and the same run sees the same; its ``replicate``-th seed
        replicate gets the next one (a replicate never sees the curve its first evaluation saw)."""
        digest = hashlib.sha256(f"{run_seed}:{arch_id}".encode()).digest()
        return (int.from_bytes(digest[:8], "little") + replicate) % self.n_seeds

    @property
    def base_seed(self) -> int:
        """The training seed of the table's first seed (``train.seed`` of the study that built it); its k-th extra
        seed is ``base_seed + k``."""
        return int(self.training["train"].get("seed", 0))

    def replicate_of(self, train_seed: int) -> int:
        """Which seed replicate a trial trained with ``train_seed`` is, counted from the table's base seed: 0 for a
        study of the table's own seed, k for its k-th replicate, and for a sub-study at ``seed + k`` (``nas
        calibrate``'s reference seed) k too, so it sees another seed than the study at the base seed."""
        return int(train_seed) - self.base_seed

    def training_seen(self, cfg: StudyConfig) -> dict[str, Any]:
        """``cfg``'s training as the table compares it: a training seed among the table's seeds counts as its base
        seed (:meth:`replicate_of` tells them apart)."""
        mine = training_of(cfg)
        if 0 <= mine["train"].get("seed", 0) - self.base_seed < self.n_seeds:
            mine["train"]["seed"] = self.base_seed
        return mine

    def holds(self, cfg: StudyConfig) -> bool:
        """Whether a study of ``cfg``'s training can be replayed on this table (its space aside)."""
        mine = self.training_seen(cfg)
        return all(mine[part] == self.training[part] for part in ("dataset", "train", "throughput"))

    def check(self, cfg: StudyConfig, space: SearchSpace, where: str) -> None:
        """A study replayed against this table must describe the same space and the same training (its training
        seed may be any of the table's seeds: a sub-study at another seed of the same budget)."""
        if space.space_hash() != self.space_hash:
            raise ConfigError(
                f"{where}: space: '{space.name}' (hash {space.space_hash()}) is not the space table {self.source} was "
                f"built for ('{self.space.get('name')}', hash {self.space_hash}); replay a study of that space"
            )
        mine = self.training_seen(cfg)
        for part in ("dataset", "train", "throughput"):
            theirs = self.training[part]
            diff = sorted(k for k in set(mine[part]) | set(theirs) if mine[part].get(k) != theirs.get(k))
            if diff:
                k = diff[0]
                raise ConfigError(
                    f"{where}: {part}.{k} is {mine[part].get(k)!r} but table {self.source} was built with "
                    f"{self.training[part].get(k)!r}" + (f" (+{len(diff) - 1} more)" if len(diff) > 1 else "")
                    + "; replay with the table's training configuration"
                )  # fmt: skip
        rc = cfg.replicates
        if rc is not None and rc.max_per_arch > self.n_seeds:
            raise ConfigError(
                f"{where}: replicates.max_per_arch is {rc.max_per_arch} but table {self.source} holds "
                f"{self.n_seeds} training seed(s) per architecture, and a replicate replays another seed; use a "
                f"table of at least {rc.max_per_arch} seeds (python -m benchmarks.search_lab table) or lower it"
            )

    def throughput_draw(self, run_seed: int, arch_id: str) -> float:
        """The throughput run ``run_seed`` observes for an architecture: log-normal around the table's median with
        the table's CV (one measurement's spread, as nas.evaluation.throughput_log_sd reads it), drawn from (run
        seed, architecture) so a run sees one draw per architecture, as a real study's cache gives it."""
        tp = self.archs[arch_id].throughput
        cv = float(tp.get("cv") or 0.0)
        if cv <= 0:
            return float(tp["median"])
        digest = hashlib.sha256(f"throughput:{run_seed}:{arch_id}".encode()).digest()
        u = (int.from_bytes(digest[:8], "little") + 0.5) / 2**64
        return float(tp["median"]) * math.exp(cv * statistics.NormalDist().inv_cdf(u))

    def report(
        self,
        a: TableArch,
        epoch: int,
        cfg: StudyConfig,
        img_size: Any,
        curve: SeedCurve | None = None,
        throughput: float | None = None,
    ) -> EpochReport:
        """Epoch ``epoch`` (from 1) of architecture ``a`` as a worker would report it, from one seed's ``curve``
        (default seed 0) and the ``throughput`` observed (default: exactly the table's median); the last epoch
        carries the seed's correct images where the table has them."""
        c = curve or a.curves()[0]
        last = epoch == len(c.val_acc) and c.val_correct is not None
        return EpochReport(
            epoch=epoch,
            val_acc=c.val_acc[epoch - 1],
            val_loss=c.val_loss[epoch - 1],
            train_loss=c.train_loss[epoch - 1],
            val_correct=c.val_correct if last else None,
            val_set=self.provenance.get("val_set", {}).get("fingerprint") if last else None,
            seconds=a.epoch_seconds,
            images_per_s=0.0,
            wall_time_s=epoch * a.epoch_seconds,
            throughput=self.throughput_report(a, cfg, img_size, throughput),
            pid=0,
            node="replay",
        )

    def throughput_report(
        self, a: TableArch, cfg: StudyConfig, img_size: Any, observed: float | None = None
    ) -> dict[str, Any]:
        """The throughput a worker would report (ThroughputResult.to_dict() form), from the table: its spread and
        the value ``observed``, or (None) exactly its median, without a spread."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        device = f"replay:{self.name}"
        tp = cfg.throughput
        key = str(ThroughputKey(a.arch_id, device, tp.batch_size, (h, w), tp.precision, tp.compile or "eager"))
        out = {**a.throughput, "key": key, "device": device, "params": a.n_params, "flops": a.flops, "cached": True}
        if observed is not None:
            out["median"] = observed
        else:  # exact: the median, without a spread for P(front) to resample (the lab before issue 30)
            out.update(iqr=0.0, cv=0.0)
        return out


@dataclass
class ReplayLog:
    """What the simulation did: every epoch trained (simulated end time, trial number, epoch, seconds), every
    trial's end (time, number) and fixed cost (when it was paid, number, seconds: the table's ``fixed_costs``);
    ``seconds`` is the simulated wall time of the whole run."""

    epochs: list[tuple[float, int, int, float]] = field(default_factory=list)
    ends: list[tuple[float, int]] = field(default_factory=list)
    fixed: list[tuple[float, int, float]] = field(default_factory=list)  # (time, trial, seconds) of each start
    seconds: float = 0.0
    stopped_by_budget: bool = False
    stopped_by_time: bool = False  # ``budget.wall_time_s`` reached, in simulated seconds


class ReplayExecutor:
    """The :class:`~nas.engine.executor.Executor` that runs a study's trials from a table instead of training (see
    the module docstring).

    Args:
        table: the tabulated benchmark.
        workers: simulated workers (default: the study's ``budget.max_concurrent``).
        max_trial_epochs: stop starting and running trials once that many epochs were trained (a compute budget for
            comparisons).
        until: called with every trial that ends (as stored); when it returns True the run stops there as if its
            budget were spent (the search lab ends a run once it has reached the share of the true front it
            measures).
        fixed_costs: charge the table's ``fixed_costs`` (:meth:`Table.fixed_seconds`): a trial's slot is busy that
            long before its first epoch, as a real worker is while it starts, measures and builds (issue 30).
        throughput_noise: a run observes each architecture's throughput drawn within the table's spread
            (:meth:`Table.throughput_draw`), as a real measurement is; False: the median, exactly.

    After :meth:`run`, ``log`` is the :class:`ReplayLog` of the simulation.
    """

    def __init__(
        self,
        table: Table,
        workers: int | None = None,
        max_trial_epochs: int | None = None,
        until: Callable[[FrozenTrial], bool] | None = None,
        fixed_costs: bool = True,
        throughput_noise: bool = True,
    ) -> None:
        self.table, self.workers, self.max_trial_epochs, self.until = table, workers, max_trial_epochs, until
        self.fixed_costs, self.throughput_noise = fixed_costs, throughput_noise
        self.now = 0.0
        self.log = ReplayLog()

    def prepare(self, cfg: StudyConfig, space: SearchSpace, where: str) -> Prepared:
        """The study must describe the table's space and training (:meth:`Table.check`)."""
        self.table.check(cfg, space, where)
        replay = {"table": self.table.source, "name": self.table.name, **self.table.provenance}
        return Prepared(self.table.num_classes, {"replay": replay})

    def clock(self) -> float:
        """The simulated time, in the table's seconds."""
        return self.now

    def run(self, driver: Driver, scheduler: Any = None) -> None:
        """Replay trials until the driver's budget is spent (or ``max_trial_epochs``, or ``until``, or the study's
        ``budget.wall_time_s`` in simulated seconds: as Ray Tune's time budget does in wall time, the run ends there
        and the trials still running stop where they are, so the driver fails them to be retried).

        Raises:
            ConfigError: the sampler proposed an architecture the table does not hold.
        """
        feed, workers = TrialFeed(driver, scheduler), self.workers or driver.cfg.budget.max_concurrent
        log, heap, seq, ids = self.log, [], itertools.count(), itertools.count()
        runs: dict[str, tuple[ExecTrial, TableArch, SeedCurve, float | None]] = {}
        measured: set[str] = set()  # architectures whose throughput this run measured (cached for the next trial)
        epochs, done, budget = driver.cfg.train.epochs, False, self.max_trial_epochs
        wall = driver.stops.wall_time_s  # budget.wall_time_s, in simulated seconds (nas.engine.stops)
        limit = None if wall is None else self.now + wall

        def fill() -> None:
            nonlocal done
            while len(runs) < workers and not done:
                trial = feed.next_trial(f"replay_{next(ids):05d}")
                if trial is None:
                    done = True
                    return
                a = self.table.archs.get(trial.payload.arch_id)
                if a is None:
                    raise ConfigError(
                        f"{self.table.source}: the sampler proposed architecture {trial.payload.arch_id} that the "
                        "table does not hold; the table was built for another space or is incomplete"
                    )
                replicate = self.table.replicate_of(trial.payload.train["seed"])  # k-th seed: k
                seed = self.table.seed_index(driver.cfg.seed, a.arch_id, replicate)
                tp = self.table.throughput_draw(driver.cfg.seed, a.arch_id) if self.throughput_noise else None
                runs[trial.trial_id] = (trial, a, a.curves()[seed], tp)
                fixed = self.table.fixed_seconds(a.arch_id in measured) if self.fixed_costs else 0.0
                measured.add(a.arch_id)
                if fixed > 0:
                    log.fixed.append((self.now + fixed, trial.payload.number, fixed))
                heapq.heappush(heap, (self.now + fixed + a.epoch_seconds, next(seq), trial.trial_id, 1))

        fill()
        while heap:
            t, _, tid, e = heapq.heappop(heap)
            if limit is not None and t > limit:
                self.now, log.stopped_by_time = limit, True
                heap.clear()
                break
            self.now = t
            trial, a, curve, tp = runs[tid]
            p = trial.payload
            stop = feed.report(trial, self.table.report(a, e, driver.cfg, p.arch["img_size"], curve, tp))
            log.epochs.append((t, p.number, e, a.epoch_seconds))
            if stop or e >= epochs:
                ended = feed.end(trial)
                log.ends.append((t, p.number))
                del runs[tid]
                if self.until is not None and self.until(ended):
                    budget = len(log.epochs)  # ends the run below, as a spent budget does
            else:
                heapq.heappush(heap, (t + a.epoch_seconds, next(seq), tid, e + 1))
            if budget is not None and len(log.epochs) >= budget:
                done, log.stopped_by_budget = True, True
                heap.clear()  # the budget is spent: running trials stop where they are (the driver fails them)
            else:
                fill()
        log.seconds = self.now


def replay_executors(tables: list[Table], **options: Any) -> Callable[[StudyConfig], ReplayExecutor]:
    """``executor_for(cfg)`` for the commands that run sub-studies at other budgets (``nas validate``, ``nas
    calibrate``): a fresh :class:`ReplayExecutor` (``options`` passed on) on the one table of ``tables`` whose
    training is the sub-study's (its seed may be any of the table's seeds).

    Raises:
        ConfigError: no table holds that training (one line naming the budget and the tables given).
    """

    def executor_for(cfg: StudyConfig) -> ReplayExecutor:
        for t in tables:
            if t.holds(cfg):
                return ReplayExecutor(t, **options)
        raise ConfigError(
            f"replay: no table holds the training of '{cfg.name}' ({cfg.train.epochs} epochs x "
            f"{cfg.train.train_fraction:g} of the data, seed {cfg.train.seed}); tables given: "
            + ", ".join(f"{t.source or t.name} ({t.training['train'].get('epochs')} epochs x "
                        f"{t.training['train'].get('train_fraction')})" for t in tables)
        )  # fmt: skip

    return executor_for
