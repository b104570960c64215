"""The study's persistent state: an Optuna RDB study (SQLAlchemy URL) plus the project's own ``nas_`` tables.

Only the driver writes (Optuna FAQ: one writer per SQLite file). Trials are touched only through Optuna's API;
per-epoch curves go to user attributes *and* to intermediate values through the storage's public
``set_trial_intermediate_value`` (``Trial.report`` refuses multi-objective studies, the storage does not), so
optuna-dashboard shows learning curves. Layout: docs/storage.md.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from nas import layout
from nas.engine.config import StudyConfig
from nas.errors import StudyError
from nas.space import SearchSpace

FORMAT_VERSION = 1
HEARTBEAT_S = float(os.environ.get("NAS_HEARTBEAT_S", 10.0))
STALE_AFTER_S = float(os.environ.get("NAS_STALE_AFTER_S", 60.0))
_META = sa.MetaData()
THROUGHPUT_TABLE = sa.Table(
    "nas_throughput",
    _META,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("arch_id", sa.String(64), index=True),
    sa.Column("device", sa.String(256)),
    sa.Column("result", sa.Text),
    sa.Column("created", sa.Float),
)


def _alive(driver_id: str) -> bool:
    """A driver on this host whose process is gone is dead now, whatever its last heartbeat says."""
    host, pid, _ = [*driver_id.split(":"), "", ""][:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def enqueue_missing(study: optuna.Study, wanted: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> int:
    """Queue each wanted ``(arch_id, params, user_attrs)`` that the study has neither COMPLETE nor queued (a resumed
    validation or calibration trains only what is left); returns the number of trials left to run."""
    done = {t.user_attrs.get("arch_id") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    queued = {t.user_attrs.get("planned_arch") for t in waiting}
    needed = [w for w in wanted if w[0] not in done | queued]
    for arch_id, params, attrs in needed:
        study.enqueue_trial(params, user_attrs={**attrs, "planned_arch": arch_id}, skip_if_exists=False)
    return len(needed) + len(waiting)


def requeue_grid_holes(study: optuna.Study) -> int:
    """A grid study (tabulating a space) rerun to finish it: the architectures that were tried but have no COMPLETE
    trial (failed, or interrupted twice, which the stale-trial recovery does not retry again) are queued once more,
    since the grid counts their points as visited. Infeasible proposals are not. Returns the trials left to run."""
    trials = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get("arch_id") for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    holes = {
        t.user_attrs["arch_id"]: (t.user_attrs["arch_id"], dict(t.params), {})
        for t in trials
        if t.state == TrialState.FAIL and t.params and "arch_id" in t.user_attrs and not t.user_attrs.get("infeasible")
    }
    return enqueue_missing(study, [w for a, w in holes.items() if a not in done])


class StudyStore:
    """Driver-side handle on one study: create/load, heartbeat, stale-trial recovery, reuse, curves, cache."""

    def __init__(
        self,
        cfg: StudyConfig,
        space: SearchSpace,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        base_dir: Path | None = None,
        storage: optuna.storages.RDBStorage | None = None,
    ) -> None:
        self.cfg, self.space = cfg, space
        self.study_dir = cfg.study_dir(base_dir)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.url = cfg.storage_url(base_dir)
        self.storage = storage or layout.create_storage(self.url)
        self.lock = threading.RLock()
        self.driver_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._check_existing()
        self.study = optuna.create_study(
            study_name=cfg.name,
            storage=self.storage,
            directions=cfg.directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        self.study_id = self.storage.get_study_id_from_name(cfg.name)
        attrs = self.study.user_attrs
        if "config" not in attrs:
            self.study.set_user_attr("nas_version", FORMAT_VERSION)
            self.study.set_user_attr("objectives", [o.model_dump() for o in cfg.objectives])
            self.study.set_user_attr("space", space.model_dump(mode="json"))
            self.study.set_user_attr("space_hash", space.space_hash())
        self.study.set_user_attr("config", cfg.model_dump(mode="json"))
        self.study.set_user_attr("versions", layout.package_versions())
        self.study.set_user_attr("study_dir", str(self.study_dir))
        self.engine = sa.create_engine(self.url, **({"connect_args": {"timeout": 30}} if "sqlite" in self.url else {}))
        layout.fast_sqlite(self.engine)
        _META.create_all(self.engine)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="nas-heartbeat", daemon=True)

    def _check_existing(self) -> None:
        """An existing study with other objectives is a user error, not something to merge into."""
        try:
            summaries = optuna.study.get_all_study_summaries(self.storage, include_best_trial=False)
        except Exception:
            return
        for s in summaries:
            if s.study_name == self.cfg.name:
                existing = [d.name.lower() for d in s.directions]
                if existing != self.cfg.directions:
                    raise StudyError(
                        f"study '{self.cfg.name}' already exists in {layout.safe_url(self.url)} with directions "
                        f"{existing}, but the study file asks for {self.cfg.directions}; give the study a new name"
                    )

    # ------------------------------------------------------------------------------------------ heartbeat
    def start(self) -> None:
        self._write_heartbeat()
        self._beat.start()

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.study.set_user_attr(f"heartbeat:{self.driver_id}", 0.0)
        self.engine.dispose()

    def _write_heartbeat(self) -> None:
        with self.lock:
            self.study.set_user_attr(f"heartbeat:{self.driver_id}", time.time())

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write_heartbeat()
            except Exception as e:  # never kill the driver over a heartbeat; the next one retries
                warnings.warn(f"heartbeat failed: {e}", stacklevel=1)

    def recover_stale(self) -> list[int]:
        """Fail RUNNING trials whose driver stopped beating, and enqueue one retry of each. Returns their numbers."""
        beats = {k.split(":", 1)[1]: v for k, v in self.study.user_attrs.items() if k.startswith("heartbeat:")}
        now, failed = time.time(), []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("driver")
            if owner == self.driver_id or (owner in beats and now - beats[owner] < STALE_AFTER_S and _alive(owner)):
                continue  # ours, or another live driver's (several drivers may share a PostgreSQL study)
            with self.lock:
                why = "interrupted: its driver stopped (killed or crashed) while it ran"
                self.set_attrs(t.number, {"failure": why})
                self.study.tell(t.number, state=TrialState.FAIL)
                self.enqueue_retry(t)
            failed.append(t.number)
        return failed

    def enqueue_retry(self, t: FrozenTrial) -> None:
        """Queue one retry of an interrupted trial (never a retry of a retry); it carries the architecture it
        retrains (``planned_arch``), so a sub-study's plan does not queue that architecture a second time. A trial
        killed after it left the queue but before the driver recorded its ``arch_id`` still has its plan's
        ``planned_arch``: that one is carried over."""
        if "retry_of" not in t.user_attrs:
            planned = t.user_attrs.get("arch_id", t.user_attrs.get("planned_arch"))
            attrs = {"retry_of": t.number, "planned_arch": planned}
            self.study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)

    # ------------------------------------------------------------------------------------------ trials
    def ask(self) -> optuna.Trial:
        with self.lock:
            trial = self.study.ask()
            trial.set_user_attr("driver", self.driver_id)
            return trial

    def set_attrs(self, number_or_trial: Any, attrs: dict[str, Any]) -> None:
        trial_id = self._trial_id(number_or_trial)
        with self.lock:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(trial_id, k, v)

    def record_epoch(self, number: int, curve: list[dict[str, Any]]) -> None:
        trial_id = self._trial_id(number)
        with self.lock:
            self.storage.set_trial_user_attr(trial_id, "curve", curve)
            self.storage.set_trial_user_attr(trial_id, "fidelity", curve[-1]["epoch"] if curve else 0)
            if curve:
                self.storage.set_trial_intermediate_value(trial_id, curve[-1]["epoch"], curve[-1]["val_acc"])

    def tell(
        self, number: int, state: TrialState, values: list[float] | None = None, attrs: dict[str, Any] | None = None
    ) -> None:
        with self.lock:
            if attrs:
                self.set_attrs(number, attrs)
            self.study.tell(number, values if state == TrialState.COMPLETE else None, state=state)

    def frozen(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self._trial_id(number))

    def _trial_id(self, number_or_trial: Any) -> int:
        number = getattr(number_or_trial, "number", number_or_trial)
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def find_reusable(self, arch_id: str, train_key: str) -> FrozenTrial | None:
        """A finished trial (COMPLETE, or PRUNED at a rung) of the same architecture under the same training."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            a = t.user_attrs
            if a.get("arch_id") == arch_id and a.get("train_key") == train_key and "reused_from" not in a:
                return t
        return None

    # ------------------------------------------------------------------------------------------ cache
    def cached_throughput(self, arch_id: str) -> dict[str, dict[str, Any]]:
        """Every cached measurement of this architecture, by cache key."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(THROUGHPUT_TABLE).where(THROUGHPUT_TABLE.c.arch_id == arch_id)).fetchall()
        return {r.key: json.loads(r.result) for r in rows}

    def put_throughput(self, key: str, arch_id: str, device: str, result: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(THROUGHPUT_TABLE).where(THROUGHPUT_TABLE.c.key == key))
            c.execute(
                sa.insert(THROUGHPUT_TABLE).values(
                    key=key, arch_id=arch_id, device=device, result=json.dumps(result), created=time.time()
                )
            )
