"""The one typed record of a trial: its stored facts (Optuna's) and its user attributes, named once.

A trial of a study stores what the engine knows about it as Optuna *user attributes* (docs/storage.md). This module
names each of them once, with its type and meaning (:data:`ATTRS`); the engine writes them only through
:mod:`nas.engine.lifecycle` (which passes :class:`TrialRecord` attribute names, checked by :func:`encode`), and every
reader — the driver, the pruners, racing, ``nas.results``, the dashboard, export, the lab — reads a trial through
:meth:`TrialRecord.of`. The read side adds what only a read of the whole study knows (``reused_by``, and on the one
record per architecture of :func:`nas.replicates.merge` the per-seed accuracies). numpy, ``nas.evaluation`` and the
standard library only: the read side uses it without importing the engine.

Which attributes a trial carries in which state (the lifecycle's transitions are in nas/engine/lifecycle.py):

* every trial a driver started: ``driver`` (its owner, written in the transaction that creates or claims it);
* queued (WAITING): ``retry_of`` (an interrupted trial's one retry), ``planned_arch`` (a sub-study's plan, and any
  retry), ``validates`` (a validation: the proxy trial it retrains), ``replicate`` / ``replicate_of`` (a seed
  replicate: the k-th other training seed, ``train.seed + k``, of the architecture first evaluated by trial
  ``replicate_of`` — an evaluation of its own, never a copy);
* described (RUNNING, before training): ``arch``, ``arch_id``, ``placement``, ``train_key``, ``params``, ``flops``;
* waiting for an identical architecture that is training: ``waiting_for`` (that trial's number);
* training: ``curve``, ``fidelity``, ``throughput``, ``device``, ``node``, ``device_lock``, ``visible_gpus``, and
  ``resumed_epochs`` when the first epochs came from the checkpoint of an interrupted run of the architecture;
* at full fidelity: ``val_correct`` (which validation examples it got right, :mod:`trainers.bitmap` text) and
  ``val_set`` (the validation set's fingerprint: bitmaps compare paired only under the same one);
* finished: ``full_fidelity``, ``wall_time_s``, and where a worker reported them ``phases`` (where its worker time
  went: :data:`nas.engine.messages.PHASES`; a copy has none, it cost nothing); PRUNED: ``pruned_at``; COMPLETE:
  ``checkpoint`` (weights' URI); FAIL: ``failure`` (the reason) and, for a sample rejected before training,
  ``infeasible``;
* a copy of another trial's result (no training): ``reused_from``.

An attribute that is not set reads as ``None``, except ``curve`` (``[]``), ``throughput`` (``{}``) and
``full_fidelity`` (``False``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nas.evaluation import Z95, bitmap_interval, seed_mean_interval, throughput_log_sd


@dataclass(frozen=True)
class TrialRecord:
    """One trial: Optuna's facts about it, its user attributes (see the module docstring for when each is set) and
    what a read of the whole study adds. Frozen; :func:`dataclasses.replace` makes a changed copy."""

    # -- Optuna's facts (absent for a record made from attributes alone)
    number: int = -1
    state: str = ""  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: dict[str, float] = field(default_factory=dict)  # objective name -> value
    search_params: dict[str, Any] = field(default_factory=dict)  # Optuna's trial.params (the searched knobs)
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None
    # -- the user attributes (ATTRS)
    driver: str | None = None
    retry_of: int | None = None
    planned_arch: str | None = None
    validates: int | None = None
    replicate: int | None = None  # a seed replicate: the k-th other training seed of its architecture
    replicate_of: int | None = None  # ... of the architecture first evaluated by this trial
    arch: dict[str, Any] | None = None
    arch_id: str | None = None
    placement: str | None = None
    train_key: str | None = None
    params: int | None = None
    flops: int | None = None
    waiting_for: int | None = None
    reused_from: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    fidelity: int | None = None
    full_fidelity: bool = False
    throughput: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    node: str | None = None
    device_lock: str | None = None
    visible_gpus: Any = None
    pruned_at: int | None = None
    resumed_epochs: int | None = None
    checkpoint: str | None = None
    wall_time_s: float | None = None
    phases: dict[str, float] | None = None
    val_correct: str | None = None  # which validation images the full-fidelity model got right (trainers.bitmap)
    val_set: str | None = None  # the validation set's fingerprint (bitmaps compare only under the same one)
    failure: str | None = None
    infeasible: bool | None = None
    # -- added by a read of the whole study (nas.results.records, nas.replicates.merge)
    reused_by: list[int] = field(default_factory=list)  # later trials that copied this one's result
    seed_values: list[float] = field(default_factory=list)  # each seed's accuracy (the merged record)
    seed_bits: list[str | None] = field(default_factory=list)  # ... its correct images
    seed_trials: list[int] = field(default_factory=list)  # ... its trial

    @classmethod
    def of(cls, trial: Any, objectives: Sequence[Any] = ()) -> TrialRecord:
        """The record of a trial (a FrozenTrial; anything with ``user_attrs`` gives the attributes alone); unknown
        attributes are ignored. ``objectives`` (objects with a ``name``, in the study's order) name its values."""
        rec = cls.from_mapping(trial.user_attrs)
        if not hasattr(trial, "number"):
            return rec
        values = trial.values
        return dataclasses.replace(
            rec,
            number=trial.number,
            state=trial.state.name,
            values={o.name: float(v) for o, v in zip(objectives, values, strict=False)} if values is not None else {},
            search_params=dict(trial.params),
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
        )

    @classmethod
    def from_mapping(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """The record of stored user attributes alone (unknown keys ignored; unset ones at their defaults)."""
        return cls(**{k: v for k, v in attrs.items() if k in ATTRS and v is not None})

    @property
    def curve_rows(self) -> list[dict[str, Any]]:
        return list(self.curve)

    @property
    def is_copy(self) -> bool:
        """A copy of another trial's result (a reuse), not an evaluation of its own."""
        return self.reused_from is not None

    @property
    def duration(self) -> float | None:
        """Seconds: the trial's ``wall_time_s`` (what its worker reported), else complete - start."""
        if self.wall_time_s is not None:
            return float(self.wall_time_s)
        if self.datetime_start and self.datetime_complete:
            return (self.datetime_complete - self.datetime_start).total_seconds()
        return None

    @property
    def last_val_acc(self) -> float | None:
        accs = [e.get("val_acc") for e in self.curve if e.get("val_acc") is not None]
        return float(accs[-1]) if accs else None

    @property
    def seeds(self) -> int:
        """How many training seeds the architecture's accuracy averages (1 without replicates)."""
        return max(1, len(self.seed_values))

    @property
    def throughput_median(self) -> float | None:
        if "throughput" in self.values:
            return self.values["throughput"]
        med = self.throughput.get("median")
        return float(med) if med is not None else None

    @property
    def throughput_interval(self) -> tuple[float, float] | None:
        """The range (95 %, log-normal) one measurement of this throughput spreads over on its device
        (:func:`nas.evaluation.throughput_log_sd`); None without a spread."""
        sd, med = throughput_log_sd(self.throughput), self.throughput_median
        if not sd or not med:
            return None
        return med * math.exp(-Z95 * sd), med * math.exp(Z95 * sd)

    @property
    def accuracy_interval(self) -> tuple[float, float] | None:
        """The 95 % interval of the accuracy: over its seeds' mean when it has two or more
        (:func:`nas.evaluation.seed_mean_interval`), else the Wilson interval of the images it got right; None for a
        trial evaluated before they were kept."""
        if len(self.seed_values) >= 2:
            return seed_mean_interval(self.seed_values, self.seed_bits)
        if self.val_correct is None:
            return None
        return bitmap_interval(self.val_correct)[1:]

    def stored(self) -> dict[str, Any]:
        """The user attributes that are set, as stored (by name)."""
        default = _DEFAULTS
        return {n: getattr(self, n) for n in ATTRS if getattr(self, n) != default[n]}


_FACTS = ("number", "state", "values", "search_params", "datetime_start", "datetime_complete")
_READ = ("reused_by", "seed_values", "seed_bits", "seed_trials")
# The user attributes' names: every field but Optuna's facts and what a read adds.
ATTRS = frozenset(f.name for f in dataclasses.fields(TrialRecord)) - set(_FACTS) - set(_READ)
_DEFAULTS = {n: getattr(TrialRecord(), n) for n in ATTRS}
# What a reuse copies from the trial it reuses (its measurements and how it ended), never its identity or owner.
COPIED = ("curve", "fidelity", "full_fidelity", "throughput", "device", "pruned_at", "checkpoint", "wall_time_s",
          "val_correct", "val_set", "failure")  # fmt: skip
# The architecture's description (set when a driver describes a sampled trial, copied to its waiters).
DESCRIPTION = ("arch", "arch_id", "placement", "train_key", "params", "flops")


def encode(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes to store, by name; a name not in :data:`ATTRS` is a programming error."""
    unknown = sorted(set(changes) - ATTRS)
    if unknown:
        raise KeyError(f"not trial attributes (nas.trial_record.ATTRS): {unknown}")
    return dict(changes)


def pick(attrs: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The subset of ``attrs`` named in ``names`` that is set."""
    return {k: attrs[k] for k in names if k in attrs}
