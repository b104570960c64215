"""Replaying a tabulated benchmark: the real driver, sampler, pruner and storage, with every trial's epochs and
throughput read from a table in simulated asynchronous time.

A *table* is a search space evaluated exhaustively (benchmarks/tables/*.json, built by the engine itself with
``sampler: grid`` and no pruning): per architecture its per-epoch validation curve, its epoch seconds, its
throughput, params and FLOPs, plus the space, the training configuration and the provenance of the build.
:class:`ReplayExecutor` stands in for Ray Tune: ``max_concurrent`` simulated workers take configurations from
``Driver.next_config``, each epoch of a trial ends ``epoch_seconds`` after the previous one (the architecture's
median recorded epoch time: the build machine was shared, so single epochs are noisy), the driver records it and
asks its pruner at the rungs exactly as in a real run, and a Ray Tune scheduler (ASHA) can make the stop decisions
instead. The stored study looks like a real one (curves, PRUNED/COMPLETE, the front), so status, dashboard and
export of configurations work on it; only weights do not exist. Search methods can therefore be compared on a
known true front with many seeds in seconds (benchmarks/search_lab.py).
"""

from __future__ import annotations

import heapq
import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nas.engine.config import StudyConfig
from nas.engine.driver import FINISHED, Driver
from nas.engine.messages import EpochReport, TrialPayload
from nas.errors import ConfigError
from nas.measure import ThroughputKey
from nas.space import SearchSpace

TABLE_FORMAT = "mixer-nas-table/1"


def training_of(cfg: StudyConfig) -> dict[str, Any]:
    """What must match between a table and a study replayed against it: data, optimisation, throughput settings
    (device, compile and other speed-only settings excluded, as for resuming a trial)."""
    return {
        "dataset": cfg.dataset.model_dump(mode="json"),
        "train": cfg.train.resume_fingerprint(),
        "throughput": cfg.throughput.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class TableArch:
    """One architecture of a table: its Optuna parameters, costs, throughput and per-epoch curves."""

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

    @property
    def epoch_seconds(self) -> float:
        return float(statistics.median(self.seconds))


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
        if not isinstance(raw, dict) or raw.get("format") != TABLE_FORMAT:
            raise ConfigError(f"{path}: not a table of this version (format must be {TABLE_FORMAT!r})")
        archs = {a["arch_id"]: TableArch(**a) for a in raw["archs"]}
        short = [a.arch_id for a in archs.values() if len(a.val_acc) < raw["epochs"]]
        if short:
            raise ConfigError(f"{path}: architecture {short[0]} has fewer than the table's {raw['epochs']} epochs")
        fields = {k: raw[k] for k in ("name", "space", "space_hash", "training", "num_classes", "epochs")}
        return cls(**fields, archs=archs, provenance=raw.get("provenance", {}), source=str(path))

    def to_json(self) -> dict[str, Any]:
        """The table as its file stores it (``format`` first)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("archs", "source")}
        out["archs"] = [asdict(a) for a in self.archs.values()]
        return {"format": TABLE_FORMAT, **out}

    def check(self, cfg: StudyConfig, space: SearchSpace, where: str) -> None:
        """A study replayed against this table must describe the same space and the same training."""
        if space.space_hash() != self.space_hash:
            raise ConfigError(
                f"{where}: space: '{space.name}' (hash {space.space_hash()}) is not the space table {self.source} was "
                f"built for ('{self.space.get('name')}', hash {self.space_hash}); replay a study of that space"
            )
        mine = training_of(cfg)
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

    def throughput_report(self, a: TableArch, cfg: StudyConfig, img_size: Any) -> dict[str, Any]:
        """The throughput a worker would report (ThroughputResult.to_dict() form), from the table."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        device = f"replay:{self.name}"
        tp = cfg.throughput
        key = str(ThroughputKey(a.arch_id, device, tp.batch_size, (h, w), tp.precision, tp.compile or "eager"))
        return {**a.throughput, "key": key, "device": device, "params": a.n_params, "flops": a.flops, "cached": True}


@dataclass
class ReplayLog:
    """What the simulation did: every epoch trained (simulated end time, trial number, epoch, seconds) and every
    trial's end (time, number); ``seconds`` is the simulated wall time of the whole run."""

    epochs: list[tuple[float, int, int, float]] = field(default_factory=list)
    ends: list[tuple[float, int]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_budget: bool = False


class ReplayExecutor:
    """Runs a study's trials from a table instead of Ray (see the module docstring).

    ``scheduler``: a Ray Tune ``TrialScheduler`` (e.g. ``ASHAScheduler(metric="val_acc", mode="max")``) that makes the
    stop decisions instead of the study's pruner, as ``run_tune``'s scheduler would. ``max_trial_epochs``: stop
    starting and running trials once that many epochs were trained (a compute budget for comparisons). ``until``:
    called with the number of every trial that ends; when it returns True the run stops there as if its budget
    were spent (the search lab ends a run once it has reached the share of the true front it measures).
    """

    def __init__(self, driver: Driver, table: Table, workers: int, scheduler: Any = None) -> None:
        self.driver, self.table, self.workers, self.scheduler = driver, table, workers, scheduler
        self.now = 0.0
        driver.clock = lambda: self.now

    def run(self, max_trial_epochs: int | None = None, until: Callable[[int], bool] | None = None) -> ReplayLog:
        """Replay trials until the driver's budget is spent (or ``max_trial_epochs``, or ``until``); see the class.

        Raises:
            ConfigError: the sampler proposed an architecture the table does not hold.
        """
        from ray.tune.schedulers import TrialScheduler

        log, heap, seq, ids = ReplayLog(), [], itertools.count(), itertools.count()
        runs: dict[str, tuple[TrialPayload, TableArch]] = {}
        cfg, epochs, done = self.driver.cfg, self.driver.cfg.train.epochs, False

        def fill() -> None:
            nonlocal done
            while len(runs) < self.workers and not done:
                tid = f"replay_{next(ids):05d}"
                config = self.driver.next_config(tid)
                if config == FINISHED:
                    done = True
                    return
                p = TrialPayload.from_config(config)
                a = self.table.archs.get(p.arch_id)
                if a is None:
                    raise ConfigError(
                        f"{self.table.source}: the sampler proposed architecture {p.arch_id} that the table does not "
                        "hold; the table was built for another space or is incomplete"
                    )
                runs[tid] = (p, a)
                if self.scheduler is not None:
                    self.scheduler.on_trial_add(None, SimpleNamespace(trial_id=tid))
                heapq.heappush(heap, (self.now + a.epoch_seconds, next(seq), tid, 1))

        fill()
        while heap:
            t, _, tid, e = heapq.heappop(heap)
            self.now = t
            p, a = runs[tid]
            report = EpochReport(
                epoch=e,
                val_acc=a.val_acc[e - 1],
                val_loss=a.val_loss[e - 1],
                train_loss=a.train_loss[e - 1],
                seconds=a.epoch_seconds,
                images_per_s=0.0,
                wall_time_s=e * a.epoch_seconds,
                throughput=self.table.throughput_report(a, cfg, p.arch["img_size"]),
                pid=0,
                node="replay",
            )
            result = report.to_result()
            self.driver.on_result(tid, result)
            stop = self.driver.should_stop(tid, result)
            if self.scheduler is not None and not stop:
                stub = SimpleNamespace(trial_id=tid)
                decision = self.scheduler.on_trial_result(None, stub, {**result, "training_iteration": e})
                stop = decision == TrialScheduler.STOP
            log.epochs.append((t, p.number, e, a.epoch_seconds))
            if stop or e >= epochs:
                if self.scheduler is not None:
                    self.scheduler.on_trial_complete(None, SimpleNamespace(trial_id=tid), result)
                self.driver.on_complete(tid)
                log.ends.append((t, p.number))
                del runs[tid]
                if until is not None and until(p.number):
                    max_trial_epochs = len(log.epochs)  # ends the run below, as a spent budget does
            else:
                heapq.heappush(heap, (t + a.epoch_seconds, next(seq), tid, e + 1))
            if max_trial_epochs is not None and len(log.epochs) >= max_trial_epochs:
                done, log.stopped_by_budget = True, True
                heap.clear()  # the budget is spent: running trials stop where they are (the driver fails them)
            else:
                fill()
        log.seconds = self.now
        return log
