"""The typed messages between the driver and a Ray worker.

Ray Tune carries a trial's ``config`` and each ``tune.report`` as plain dicts, so each message has one
``to_*``/``from_*`` pair here and nowhere else: the driver builds a :class:`TrialPayload` and the worker reads it
back; the worker sends one :class:`EpochReport` per epoch (or a failure) and the driver reads it back. A result
Tune adds on its own (a ``done`` marker without our fields) reads back as None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

PAYLOAD_KEY = "nas_trial"
_TP = "throughput/"
_PH = "phases/"
# Where a trial's worker time goes, in seconds (the ``phases`` of a report and of the stored trial). The worker
# measures: ``start_s`` (handed out by the driver -> running in the worker: scheduling, process start, imports),
# ``measure_s`` (the throughput measurement, or the cache lookup), within it ``lock_wait_s`` (waiting for the device
# to itself) and ``exclusive_s`` (holding it: every other trial on the device stands still meanwhile), ``data_s``
# (decoding the dataset, once per worker process, and moving it to the device), ``build_s`` (the model),
# ``epochs_s`` (training and evaluating, the trainer's epoch seconds), ``weights_s`` (copying the final weights).
# The driver adds ``storage_s`` (its writes of the trial) and ``wall_s`` (handed out -> ended, its clock).
# ``worker_trial`` is not a time: the trial's rank in its worker process (1: the process's first trial).
PHASES = ("start_s", "measure_s", "lock_wait_s", "exclusive_s", "data_s", "build_s", "epochs_s", "weights_s",
          "storage_s", "wall_s", "worker_trial")  # fmt: skip


@dataclass(frozen=True)
class TrialPayload:
    """Everything a worker needs to run one trial (built by ``Driver.next_config``)."""

    number: int
    arch: dict[str, Any]  # resolved model_args
    arch_id: str
    train: dict[str, Any]  # TrainConfig, JSON form
    dataset: dict[str, Any]  # DataConfig, JSON form
    throughput: dict[str, Any]  # ThroughputConfig, JSON form
    cpus: float
    lock_dir: str | None = None
    resume: str | None = None  # the trial's checkpoint file on the driver's node: an interrupted run continues there
    cached_throughput: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ThroughputKey string
    sent_at: float | None = None  # the driver's time.time() when it handed the trial out (the worker's start phase)

    def to_config(self) -> dict[str, Any]:
        """The Tune ``config`` of the trial."""
        return {PAYLOAD_KEY: asdict(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialPayload:
        """The payload of a Tune ``config`` built by :meth:`to_config`."""
        return cls(**config[PAYLOAD_KEY])


@dataclass(frozen=True)
class EpochReport:
    """One epoch of a trial as the worker reports it; ``throughput`` rides on every report of the trial (Tune
    may drop intermediate results under load, the driver records it once). ``failed`` ends the trial as FAIL."""

    epoch: int
    val_acc: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    seconds: float | None = None
    images_per_s: float | None = None
    wall_time_s: float | None = None
    throughput: dict[str, Any] | None = None  # ThroughputResult.to_dict() + "cached"
    pid: int | None = None
    node: str | None = None
    device_lock: str | None = None  # the physical device's lock (one per GPU, whatever CUDA_VISIBLE_DEVICES says)
    visible_gpus: str | None = None  # CUDA_VISIBLE_DEVICES as Ray set it for this trial
    failed: str | None = None
    restored: bool | None = None  # an epoch an earlier, interrupted run trained (read back from its checkpoint)
    val_correct: str | None = None  # the full-fidelity epoch only: which validation examples were right (bitmap)
    val_set: str | None = None  # with val_correct: the validation set's fingerprint (trainers.bitmap)
    phases: dict[str, float] | None = None  # the trial's phase times so far (PHASES), seconds

    CURVE_FIELDS = ("val_acc", "val_loss", "train_loss", "seconds", "images_per_s")

    def to_result(self) -> dict[str, Any]:
        """What ``tune.report`` gets: flat metrics (None fields left out), the throughput as ``throughput/<field>``
        keys — Tune flattens nested dicts that way before its schedulers and searchers see a result, so the
        wire form is flat on purpose and reads back the same from either side."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k not in ("throughput", "phases")}
        out.update({f"{_TP}{k}": v for k, v in (self.throughput or {}).items()})
        out.update({f"{_PH}{k}": v for k, v in (self.phases or {}).items()})
        return out

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> EpochReport | None:
        """The report a result carries, flat or nested, or None for a result Tune added on its own."""
        if "epoch" not in result or not ("val_acc" in result or "failed" in result):
            return None
        known = {f.name for f in fields(cls)} - {"throughput", "phases"}
        return cls(**{k: v for k, v in result.items() if k in known}, throughput=_nested(result, "throughput", _TP),
                   phases=_nested(result, "phases", _PH))  # fmt: skip

    def curve_row(self) -> dict[str, Any]:
        """The row stored in the trial's ``curve`` user attribute (docs/storage.md)."""
        row: dict[str, Any] = {k: float(getattr(self, k)) for k in self.CURVE_FIELDS}
        row["epoch"] = int(self.epoch)
        return row


def _nested(result: dict[str, Any], name: str, prefix: str) -> dict[str, Any] | None:
    """A nested field of a result: as a dict when a callback sees the result before Tune flattened it, else from
    its ``prefix`` keys."""
    value = result.get(name)
    if isinstance(value, dict):
        return value
    return {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)} or None
