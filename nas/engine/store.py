"""The study's persistent state: an Optuna RDB study (SQLAlchemy URL) plus the project's own ``nas_`` tables.

Trials change only through :mod:`nas.engine.lifecycle`; this module opens the study, keeps the driver's heartbeat
(and, at every beat, recovers the trials of drivers that stopped beating: no restart needed), numbers the drivers
of a study (each gets its own sampler stream) and caches throughput. Per-epoch curves go to user attributes *and*
to intermediate values (optuna-dashboard shows learning curves). Several drivers may share a study on a database
server (PostgreSQL); a SQLite study has one driver at a time (:func:`single_driver`). Layout: docs/storage.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from nas import layout
from nas.engine.config import StudyConfig
from nas.engine.lifecycle import METADATA, Lifecycle, create_tables
from nas.engine.optuna_adapter import OwnedStorage
from nas.errors import StudyError
from nas.space import SearchSpace
from nas.study_record import StudyRecord, write, write_heartbeat

FORMAT_VERSION = 1
HEARTBEAT_S = float(os.environ.get("NAS_HEARTBEAT_S", 10.0))
STALE_AFTER_S = float(os.environ.get("NAS_STALE_AFTER_S", 60.0))
THROUGHPUT_TABLE = sa.Table(
    "nas_throughput",
    METADATA,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("arch_id", sa.String(64), index=True),
    sa.Column("device", sa.String(256)),
    sa.Column("result", sa.Text),
    sa.Column("created", sa.Float),
)
DRIVERS_TABLE = sa.Table(  # every driver that opened a study, numbered: its sampler stream (make_sampler)
    "nas_drivers",
    METADATA,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("driver", sa.String(256), nullable=False),
    sa.Column("started", sa.Float, nullable=False),
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


def register_driver(engine: sa.engine.Engine, study: str, driver_id: str) -> int:
    """The driver's number in this study (0 for the first driver ever, 1 for the next, ...), taken atomically: a
    unique (study, slot) row, so drivers that start together get different numbers."""
    for _ in range(1000):
        with engine.connect() as c:
            slot = c.execute(sa.select(sa.func.count()).where(DRIVERS_TABLE.c.study == study)).scalar() or 0
        try:
            row = dict(study=study, slot=slot, driver=driver_id, started=time.time())
            with engine.begin() as c:
                c.execute(sa.insert(DRIVERS_TABLE).values(**row))
            return int(slot)
        except sa.exc.IntegrityError:
            continue  # another driver took that number between our count and our insert
    raise StudyError(f"study '{study}': could not register this driver (1000 tries)")


@contextlib.contextmanager
def single_driver(url: str, study: str) -> Iterator[None]:
    """A SQLite study has one driver at a time (SQLite serialises writers and Optuna's FAQ advises one per file):
    a second ``nas search`` on it is refused in one line, before anything is written, instead of racing. An
    exclusive lock on a file beside the database, released by the OS when the driver exits, killed or not."""
    path = layout.sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f"{path.name}.{study}.driver")
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise StudyError(
                f"study '{study}' in {layout.safe_url(url)}: a driver ({who}) is running it, and a SQLite study has "
                "one driver at a time; wait for it, or run several drivers on PostgreSQL (--storage postgresql://...)"
            ) from None
        f.truncate(0)
        f.write(f"{socket.gethostname()}:{os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _what_differs(rec: StudyRecord, cfg: StudyConfig, space: SearchSpace) -> str | None:
    """What of the study file differs from the study stored under its name, in words (None: nothing that matters):
    the space (its hash), or the training (what changes a curve: the resume fingerprint of ``train``, the dataset
    but where it lives). Budget, resources, sampler and pruner may change from one run of a study to the next."""
    stored_hash = rec.space_hash
    if stored_hash and stored_hash != space.space_hash():
        before = (rec.space or {}).get("name", "?")
        return f"space ('{before}', hash {stored_hash}; the study file's '{space.name}' has hash {space.space_hash()})"
    if rec.config is None:
        return None
    try:
        old = StudyConfig.of_record(rec)
    except ValueError:
        return None  # written by another version of the engine: nothing to compare field by field
    place = {"root", "download"}  # where the data lives may differ between machines; the images are checked apart
    for part, mine, theirs in (
        ("train", cfg.train.resume_fingerprint(), old.train.resume_fingerprint()),
        ("dataset", cfg.dataset.model_dump(exclude=place), old.dataset.model_dump(exclude=place)),
    ):
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            more = f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""
            return f"training: {part}.{diff[0]} is {theirs.get(diff[0])!r} there and {mine.get(diff[0])!r} here{more}"
    return None


class StudyStore:
    """Driver-side handle on one study: create/load, heartbeat and live recovery, the trials' lifecycle
    (``self.life``), the throughput cache.

    ``sampler``: a sampler, or ``f(slot) -> sampler`` given this driver's number in the study (its own stream).
    """

    def __init__(
        self,
        cfg: StudyConfig,
        space: SearchSpace,
        sampler: optuna.samplers.BaseSampler | Callable[[int], optuna.samplers.BaseSampler],
        pruner: optuna.pruners.BasePruner,
        base_dir: Path | None = None,
        storage: OwnedStorage | optuna.storages.InMemoryStorage | None = None,
    ) -> None:
        self.cfg, self.space = cfg, space
        self.study_dir = cfg.study_dir(base_dir)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.url = cfg.storage_url(base_dir)
        self.storage = storage or layout.create_storage(self.url, OwnedStorage)
        self.lock = threading.RLock()
        self.driver_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._check_existing()
        # the nas_* tables live in the study's database; an in-memory Optuna storage (the search lab) has none
        is_rdb = isinstance(self.storage, optuna.storages.RDBStorage)
        self.engine = self.storage.engine if is_rdb else layout.create_engine(self.url)
        create_tables(self.engine)
        self.slot = register_driver(self.engine, cfg.name, self.driver_id)
        self.study = optuna.create_study(
            study_name=cfg.name,
            storage=self.storage,
            directions=cfg.directions,
            sampler=sampler(self.slot) if callable(sampler) else sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        self.life = Lifecycle(self.study, self.storage, self.engine, self.driver_id, self.lock)
        if StudyRecord.of(self.study).config is None:  # a new study: what never changes after
            write(self.study, nas_version=FORMAT_VERSION, objectives=[o.model_dump() for o in cfg.objectives],
                  space=space.model_dump(mode="json"), space_hash=space.space_hash())  # fmt: skip
        write(self.study, config=cfg.model_dump(mode="json"), versions=layout.package_versions(),
              study_dir=str(self.study_dir))  # fmt: skip
        self.recovered: list[int] = []  # trials the heartbeat thread recovered since the driver last looked
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="nas-heartbeat", daemon=True)

    def _check_existing(self) -> None:
        """An existing study with other objectives is a user error, not something to merge into."""
        try:
            study_id = self.storage.get_study_id_from_name(self.cfg.name)
        except KeyError:
            return  # a new study
        existing = [d.name.lower() for d in self.storage.get_study_directions(study_id)]
        if existing != self.cfg.directions:
            raise StudyError(
                f"study '{self.cfg.name}' already exists in {layout.safe_url(self.url)} with directions {existing}, "
                f"but the study file asks for {self.cfg.directions}; give the study a new name"
            )
        stored = StudyRecord.from_attrs(self.storage.get_study_user_attrs(study_id))
        differs = _what_differs(stored, self.cfg, self.space)
        if differs:
            raise StudyError(
                f"study '{self.cfg.name}' already exists in {layout.safe_url(self.url)} with another {differs}; its "
                f"trials were sampled and trained under the stored one: restore it, or give the study a new name "
                f"(name: {self.cfg.name}-2)"
            )

    # ------------------------------------------------------------------------------------------ heartbeat
    def start(self) -> None:
        """Write the first heartbeat and start beating (and recovering dead drivers' trials) in a thread. An
        in-memory study (the search lab) has this driver alone by construction: it writes the first beat only."""
        self._write_heartbeat()
        if isinstance(self.storage, optuna.storages.RDBStorage):
            self._beat.start()

    def close(self) -> None:
        """Stop beating and mark this driver closed (heartbeat 0): its trials are all told by now."""
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join(timeout=HEARTBEAT_S + 30)
        with self.lock:
            write_heartbeat(self.study, self.driver_id, 0.0)

    def _write_heartbeat(self) -> None:
        with self.lock:
            write_heartbeat(self.study, self.driver_id, time.time())

    def _heartbeat_loop(self) -> None:
        """Beat, then recover what dead drivers left RUNNING: every live driver does, so a killed driver's trials
        are failed and retried within the stale limit plus one beat, without a restart."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write_heartbeat()
                found = self.recover_stale()
            except Exception as e:  # never kill the driver over a heartbeat; the next one retries
                warnings.warn(f"heartbeat or stale-trial recovery failed: {e}", stacklevel=1)
                continue
            with self.lock:
                self.recovered += found

    def take_recovered(self) -> list[int]:
        """Trials recovered by the heartbeat thread since the last call (the driver reports them)."""
        with self.lock:
            found, self.recovered = self.recovered, []
        return found

    def recover_stale(self) -> list[int]:
        """Fail RUNNING trials whose driver stopped beating, and enqueue one retry of each. Returns their numbers.
        The heartbeats are read after the trials, so a driver that started in between counts as live."""
        beats: dict[str, float] | None = None
        now = time.time()

        def live(owner: str) -> bool:
            nonlocal beats
            if beats is None:
                beats = StudyRecord.of(self.study).heartbeats
            return owner in beats and now - beats[owner] < STALE_AFTER_S and _alive(owner)

        return self.life.recover(live, STALE_AFTER_S)

    def frozen(self, number: int) -> FrozenTrial:
        """The trial ``number`` as stored now."""
        return self.life.frozen(number)

    # ------------------------------------------------------------------------------------------ cache
    def cached_throughput(self, arch_id: str) -> dict[str, dict[str, Any]]:
        """Every cached measurement of this architecture, by cache key."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(THROUGHPUT_TABLE).where(THROUGHPUT_TABLE.c.arch_id == arch_id)).fetchall()
        return {r.key: json.loads(r.result) for r in rows}

    def put_throughput(self, key: str, arch_id: str, device: str, result: dict[str, Any]) -> None:
        """Cache a measurement (the newest wins); another driver storing the same key at the same moment keeps its
        row (the same architecture on the same device: an equally good measurement)."""
        row = dict(key=key, arch_id=arch_id, device=device, result=json.dumps(result), created=time.time())
        try:
            with self.engine.begin() as c:
                c.execute(sa.delete(THROUGHPUT_TABLE).where(THROUGHPUT_TABLE.c.key == key))
                c.execute(sa.insert(THROUGHPUT_TABLE).values(**row))
        except sa.exc.IntegrityError:
            pass
