"""The one typed record of a study: the names of its stored attributes, once, and the study read back.

A study stores what the engine knows about it as Optuna *study user attributes* (docs/storage.md). This module names
each of them once (the fields of :class:`StudyRecord`); every writer goes through :func:`write` (names checked) and
every reader through :meth:`StudyRecord.of` — the engine, ``nas status``/``pareto``/``settle``, export, the trust
commands and the lab. Standard library only: the read side uses it without importing the engine (which parses the
stored study file with :meth:`nas.engine.config.StudyConfig.of_record`).

When each is written:

* the first ``nas search`` of a study: ``nas_version`` (the storage format), ``objectives`` (names and directions,
  in the order of ``trial.values``), ``space`` and ``space_hash`` (the search space it samples: never changed after);
* every ``nas search`` (a resume re-checks that the study file agrees, nas.engine.store): ``config`` (the study
  file, parsed: :meth:`~nas.engine.config.StudyConfig.model_dump`, defaults filled), ``versions`` (package
  versions), ``study_dir``; what the executor learnt of the data: ``val_set`` (the validation images' fingerprint),
  ``data_stats`` (normalisation), or a replayed study's ``replay`` (the table, its name and provenance); at its end
  ``device_load`` (how loaded the measuring device was, nas.settle);
* ``heartbeat:<driver>`` per driver while it runs (the time of its last beat; 0 when it closed);
* ``nas calibrate``: ``calibration``; ``nas validate``: ``validation``; ``nas settle``: ``throughput_settled``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nas.evaluation import PRIOR_SEED_SD, SETTLED
from nas.layout import Objective

HEARTBEAT_PREFIX = "heartbeat:"  # + driver id: a driver's last beat (time.time(); 0.0: closed)


@dataclass(frozen=True)
class StudyRecord:
    """A study's stored attributes, typed (``None``: not written), with its name and directions."""

    name: str = ""
    directions: tuple[str, ...] = ()
    nas_version: int | None = None
    objectives: list[dict[str, str]] | None = None
    space: dict[str, Any] | None = None
    space_hash: str | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    study_dir: str | None = None
    val_set: dict[str, Any] | None = None
    data_stats: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None
    device_load: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    throughput_settled: dict[str, Any] | None = None
    heartbeats: dict[str, float] = field(default_factory=dict)  # driver id -> its last beat

    @classmethod
    def of(cls, study: Any) -> StudyRecord:
        """The record of a study (an Optuna ``Study`` or ``FrozenStudy``; anything with ``user_attrs`` gives the
        attributes alone)."""
        directions = tuple(d.name.lower() for d in getattr(study, "directions", ()))
        return cls.from_attrs(study.user_attrs, getattr(study, "study_name", ""), directions)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], name: str = "", directions: tuple[str, ...] = ()) -> StudyRecord:
        """The record of stored attributes (unknown keys ignored)."""
        beats = {k[len(HEARTBEAT_PREFIX) :]: float(v) for k, v in attrs.items() if k.startswith(HEARTBEAT_PREFIX)}
        known = {k: v for k, v in attrs.items() if k in NAMES}
        return cls(name=name, directions=tuple(directions), heartbeats=beats, **known)

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives in the order of ``trial.values`` (anonymous ones for a study the engine did not write)."""
        if self.objectives:
            return [Objective(o["name"], o["direction"]) for o in self.objectives]
        return [Objective(f"objective_{i}", d) for i, d in enumerate(self.directions)]

    def section(self, name: str) -> dict[str, Any]:
        """One block of the stored study file (``train``, ``budget``, ``replicates``...; ``{}`` when absent)."""
        return dict((self.config or {}).get(name) or {})

    @property
    def prior_seed_sd(self) -> float:
        """``replicates.prior_seed_sd`` of the study (a study stored before it existed: the default)."""
        return float(self.section("replicates").get("prior_seed_sd", PRIOR_SEED_SD))

    @property
    def settled(self) -> float:
        """``replicates.settled`` of the study (a study stored before it existed: the default)."""
        return float(self.section("replicates").get("settled", SETTLED))


NAMES = frozenset(f.name for f in dataclasses.fields(StudyRecord)) - {"name", "directions", "heartbeats"}


def write(study: Any, **changes: Any) -> None:
    """Store study attributes by name (:class:`StudyRecord` fields); an unknown name is a programming error."""
    unknown = sorted(set(changes) - NAMES)
    if unknown:
        raise KeyError(f"not study attributes (nas.study_record.StudyRecord): {unknown}")
    for k, v in changes.items():
        study.set_user_attr(k, v)


def write_heartbeat(study: Any, driver_id: str, at: float) -> None:
    """A driver's beat (``at``: time.time(); 0.0 marks it closed)."""
    study.set_user_attr(f"{HEARTBEAT_PREFIX}{driver_id}", at)
