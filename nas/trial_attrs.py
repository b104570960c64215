"""The typed record of a trial's user attributes: the one place their names are written down.

A trial of a study stores what the engine knows about it as Optuna *user attributes* (docs/storage.md). This module
names each of them once, with its type and meaning; the engine writes them only through
:mod:`nas.engine.lifecycle` (which passes :class:`TrialAttrs` field names, checked here), and every reader — the
driver, the pruners, ``nas.results``, the dashboard, export, the lab — reads them through :meth:`TrialAttrs.of`.
Standard library only: the read side uses it without importing the engine.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialAttrs:
    """A trial's user attributes, typed (``None``: not set). See the module docstring for when each is set."""

    driver: str | None = None
    retry_of: int | None = None
    planned_arch: str | None = None
    validates: int | None = None
    replicate: int | None = None
    replicate_of: int | None = None
    arch: dict[str, Any] | None = None
    arch_id: str | None = None
    placement: str | None = None
    train_key: str | None = None
    params: int | None = None
    flops: int | None = None
    waiting_for: int | None = None
    reused_from: int | None = None
    curve: list[dict[str, Any]] | None = None
    fidelity: int | None = None
    full_fidelity: bool | None = None
    throughput: dict[str, Any] | None = None
    device: str | None = None
    node: str | None = None
    device_lock: str | None = None
    visible_gpus: Any = None
    pruned_at: int | None = None
    resumed_epochs: int | None = None
    checkpoint: str | None = None
    wall_time_s: float | None = None
    phases: dict[str, float] | None = None
    val_correct: str | None = None
    val_set: str | None = None
    failure: str | None = None
    infeasible: bool | None = None

    @classmethod
    def of(cls, trial: Any) -> TrialAttrs:
        """The record of a trial (a FrozenTrial, or anything with ``user_attrs``); unknown keys are ignored."""
        return cls.from_mapping(trial.user_attrs)

    @classmethod
    def from_mapping(cls, attrs: Mapping[str, Any]) -> TrialAttrs:
        return cls(**{k: v for k, v in attrs.items() if k in NAMES})

    @property
    def curve_rows(self) -> list[dict[str, Any]]:
        return list(self.curve or [])

    @property
    def is_copy(self) -> bool:
        """A copy of another trial's result (a reuse), not an evaluation of its own."""
        return self.reused_from is not None

    def stored(self) -> dict[str, Any]:
        """The attributes that are set, as stored (by name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


NAMES = frozenset(f.name for f in dataclasses.fields(TrialAttrs))
# What a reuse copies from the trial it reuses (its measurements and how it ended), never its identity or owner.
COPIED = ("curve", "fidelity", "full_fidelity", "throughput", "device", "pruned_at", "checkpoint", "wall_time_s",
          "val_correct", "val_set", "failure")  # fmt: skip
# The architecture's description (set when a driver describes a sampled trial, copied to its waiters).
DESCRIPTION = ("arch", "arch_id", "placement", "train_key", "params", "flops")


def encode(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes to store, by name; a name that is not a :class:`TrialAttrs` field is a programming error."""
    unknown = sorted(set(changes) - NAMES)
    if unknown:
        raise KeyError(f"not trial attributes (nas.trial_attrs.TrialAttrs): {unknown}")
    return dict(changes)


def pick(attrs: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The subset of ``attrs`` named in ``names`` that is set."""
    return {k: attrs[k] for k in names if k in attrs}
