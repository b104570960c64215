"""The driver's bookkeeping between Ray Tune and the Optuna study (no Ray imports: testable on its own).

* ``next_config`` asks Optuna (define-by-run from the space), rejects infeasible or over-budget samples before any
  training (stored as FAIL with the reason, not counted against the budget), and reuses the result of an
  architecture already evaluated under the same training (same arch_id and training key) instead of training it
  again.
* ``on_result`` stores each epoch (user attrs + intermediate values) and the throughput (cached per device).
* ``should_stop`` asks the pruner at every rung (one BasePruner makes every decision).
* ``on_complete`` tells Optuna the truth: COMPLETE only at full fidelity, PRUNED for a trial stopped early (never
  COMPLETE with low-fidelity values — landscape.md trap 4), FAIL with the reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.engine.config import StudyConfig
from nas.engine.pruners import objective_vector
from nas.engine.store import StudyStore
from nas.errors import ConfigError
from nas.space import SearchSpace, arch_cost

FINISHED = "FINISHED"
MAX_REJECTS = 200
COPIED_ATTRS = (
    "curve",
    "fidelity",
    "full_fidelity",
    "throughput",
    "device",
    "pruned_at",
    "checkpoint",
    "wall_time_s",
    "failure",
)


class Driver:
    """State shared by the Tune searcher and scheduler on the driver (see module docstring)."""

    def __init__(
        self,
        cfg: StudyConfig,
        space: SearchSpace,
        store: StudyStore,
        pruner: optuna.pruners.BasePruner,
        num_classes: int,
        n_trials: int | None,
        lock_dir: str | None = None,
        log: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg, self.space, self.store, self.pruner = cfg, space, store, pruner
        self.num_classes, self.n_trials, self.lock_dir = num_classes, n_trials, lock_dir
        self.log = log or (lambda kind, info: None)
        self.train_key = hashlib.sha256(json.dumps(cfg.training_key(), sort_keys=True).encode()).hexdigest()[:16]
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.curves: dict[int, list[dict[str, Any]]] = {}
        self.failed: dict[int, str] = {}  # reasons reported by the trainable
        self.errors: dict[str, str] = {}  # Tune trial id -> worker error captured by the scheduler
        self.pruned: dict[int, int] = {}
        self.told: set[int] = set()
        self.started: dict[int, float] = {}
        self.added = 0
        self.exhausted = False

    # ------------------------------------------------------------------------------------------ sampling
    def budget_left(self) -> bool:
        return self.n_trials is None or self.added < self.n_trials

    def next_config(self, tune_id: str) -> dict[str, Any] | str | None:
        for _ in range(MAX_REJECTS):
            if not self.budget_left():
                return FINISHED
            trial = self.store.ask()
            try:
                arch = self.space.sample(trial.suggest_categorical, self.num_classes)
                reasons = self.space.check_constraints(arch)
            except ConfigError as e:
                arch, reasons = None, [str(e)]
            if reasons:
                self.store.tell(
                    trial.number,
                    TrialState.FAIL,
                    attrs={"failure": "infeasible: " + "; ".join(reasons), "infeasible": True},
                )
                self.log("infeasible", {"number": trial.number, "reason": "; ".join(reasons)})
                continue
            params, flops = arch_cost(arch.canonical_json())
            attrs = {
                "arch": arch.to_model_args(),
                "arch_id": arch.arch_id,
                "placement": arch.placement(),
                "train_key": self.train_key,
                "params": params,
                "flops": flops,
            }
            self.added += 1
            source = self.store.find_reusable(arch.arch_id, self.train_key)
            if source is not None:
                self._reuse(trial.number, attrs, source)
                continue
            self.store.set_attrs(trial.number, attrs)
            self.numbers[tune_id] = trial.number
            self.started[trial.number] = time.time()
            self.log("start", {"number": trial.number, "placement": attrs["placement"], "params": params})
            return self._payload(trial.number, arch.arch_id, attrs["arch"])
        self.exhausted = True
        self.log("exhausted", {"rejects": MAX_REJECTS})
        return FINISHED

    def _reuse(self, number: int, attrs: dict[str, Any], src: optuna.trial.FrozenTrial) -> None:
        copied = {k: src.user_attrs[k] for k in COPIED_ATTRS if k in src.user_attrs}
        self.store.tell(number, src.state, values=src.values, attrs={**attrs, **copied, "reused_from": src.number})
        self.told.add(number)
        self.log(
            "reused", {"number": number, "source": src.number, "state": src.state.name, "placement": attrs["placement"]}
        )

    def _payload(self, number: int, arch_id: str, arch: dict[str, Any]) -> dict[str, Any]:
        ckpt = self.store.study_dir / "checkpoints" / f"trial{number:05d}-{arch_id}.safetensors"
        return {
            "number": number,
            "arch": arch,
            "arch_id": arch_id,
            "train": self.cfg.train.model_dump(mode="json"),
            "dataset": self.cfg.dataset.model_dump(mode="json"),
            "throughput": self.cfg.throughput.model_dump(mode="json"),
            "cached_throughput": self.store.cached_throughput(arch_id),
            "checkpoint_path": str(ckpt.resolve()),
            "lock_dir": self.lock_dir,
            "cpus": self.cfg.resources.cpus_per_trial,
        }

    # ------------------------------------------------------------------------------------------ results
    def on_result(self, tune_id: str, result: dict[str, Any]) -> None:
        number = self.numbers.get(tune_id)
        if number is None or number in self.told:
            return
        if (
            self.curves.get(number)
            and self.curves[number][-1]["epoch"] == result.get("epoch")
            and not result.get("failed")
        ):
            return  # already recorded (scheduler, searcher and callback all see each result)
        if result.get("failed"):
            self.failed[number] = str(result["failed"])
            return
        if "epoch" not in result or "val_acc" not in result:
            return
        if number not in self.curves and result.get("tp_json"):
            tp = json.loads(result["tp_json"])
            self.store.set_attrs(number, {"throughput": tp, "device": tp.get("device"), "node": result.get("node")})
            if not tp.pop("cached", False):
                self.store.put_throughput(tp["key"], self.store.frozen(number).user_attrs["arch_id"], tp["device"], tp)
        row = {k: float(result[k]) for k in ("val_acc", "val_loss", "train_loss", "seconds", "images_per_s")}
        row["epoch"] = int(result["epoch"])
        curve = [r for r in self.curves.get(number, []) if r["epoch"] < row["epoch"]]  # a retried worker restarts
        curve.append(row)
        self.curves[number] = curve
        self.store.record_epoch(number, curve)
        self.log("epoch", {"number": number, **row, "pid": result.get("pid")})

    def should_stop(self, tune_id: str, result: dict[str, Any]) -> bool:
        number = self.numbers.get(tune_id)
        if number is None:
            return False
        if number in self.failed:
            return True
        epoch = int(result.get("epoch", 0))
        at_rung = epoch in self.cfg.fidelity.rungs and epoch < self.cfg.train.epochs and "val_acc" in result
        if at_rung and self.pruner.prune(self.store.study, self.store.frozen(number)):
            self.pruned[number] = epoch
            return True
        return False

    def on_complete(self, tune_id: str, error: bool = False, error_msg: str | None = None) -> None:
        number = self.numbers.get(tune_id)
        if number is None or number in self.told:
            return
        curve = self.curves.get(number, [])
        fidelity = curve[-1]["epoch"] if curve else 0
        attrs: dict[str, Any] = {
            "fidelity": fidelity,
            "full_fidelity": fidelity >= self.cfg.train.epochs,
            "wall_time_s": time.time() - self.started.get(number, time.time()),
        }
        if error or number in self.failed:
            reason = self.failed.get(number) or error_msg or "worker process died (killed or crashed); see Ray logs"
            self._tell(number, TrialState.FAIL, None, {**attrs, "failure": reason})
            return
        if attrs["full_fidelity"]:
            ckpt = self._checkpoint(number)
            if ckpt:
                attrs["checkpoint"] = ckpt
            values = objective_vector(self.store.frozen(number), self.cfg.objective_names, self.cfg.train.epochs)
            if values is None:
                self._tell(number, TrialState.FAIL, None, {**attrs, "failure": "an objective was not measured"})
            else:
                self._tell(number, TrialState.COMPLETE, values, attrs)
            return
        self._tell(number, TrialState.PRUNED, None, {**attrs, "pruned_at": self.pruned.get(number, fidelity)})

    def _checkpoint(self, number: int) -> str | None:
        found = sorted((self.store.study_dir / "checkpoints").glob(f"trial{number:05d}-*.safetensors"))
        return str(found[-1].relative_to(self.store.study_dir)) if found else None

    def _tell(self, number: int, state: TrialState, values: list[float] | None, attrs: dict[str, Any]) -> None:
        self.store.tell(number, state, values=values, attrs=attrs)
        self.told.add(number)
        self.log(state.name.lower(), {"number": number, "values": values, **attrs})

    def finish(self) -> list[int]:
        """Trials this run started but never finished (wall-time budget, Ctrl-C): FAIL now, retried next run."""
        left = [n for n in self.numbers.values() if n not in self.told]
        for number in left:
            frozen = self.store.frozen(number)
            self._tell(
                number,
                TrialState.FAIL,
                None,
                {"failure": "interrupted: the run ended before this trial finished; it is queued again"},
            )
            if "retry_of" not in frozen.user_attrs:
                self.store.study.enqueue_trial(frozen.params, user_attrs={"retry_of": number}, skip_if_exists=False)
        return left
