"""Error types of the trainer package (it imports nothing from ``nas``, so it has its own).

Every error a user can cause (a bad config field, data that is missing or corrupt) is a :class:`TrainerError`
whose ``str()`` is ONE line naming where, what, and the fix. A caller such as the NAS engine can catch
``TrainerConfigError`` / ``DataError`` and re-raise them as its own configuration error type.
"""

from __future__ import annotations

from pathlib import Path


class TrainerError(Exception):
    """Base class: ``str(err)`` is a single line that says where, what and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class TrainerConfigError(TrainerError, ValueError):
    """An invalid TrainConfig / DataConfig value (unknown field, out of range, unavailable device)."""


class DataError(TrainerError, ValueError):
    """A dataset problem a user can fix: unknown name, bad folder layout, unreadable images."""


class UnknownDatasetError(DataError):
    """The dataset name is not one this package can load."""


class DatasetNotFoundError(DataError):
    """The dataset files were not found in any searched location (the message lists them and the fixes)."""


class CorruptDataError(DataError):
    """A dataset file exists but cannot be decoded (wrong magic number, truncated, bad pickle)."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = str(path)
        super().__init__(f"corrupt dataset file {self.path}: {what}; delete it and reinstall or re-download")


class CheckpointError(TrainerError):
    """A checkpoint that cannot be used to resume (unreadable, or written with a different TrainConfig)."""


class TrainingFailed(TrainerError, RuntimeError):
    """A trial's training cannot go on: ``reason`` is the one-line cause stored with the failed trial.

    ``kind`` is a short machine-readable tag: ``"non_finite"`` (NaN/inf loss) or ``"oom"`` (device out of
    memory); ``epoch`` and ``step`` (1-based) locate the failure when known.
    """

    def __init__(self, reason: str, *, kind: str, epoch: int | None = None, step: int | None = None) -> None:
        self.reason = " ".join(reason.split())
        self.kind = kind
        self.epoch = epoch
        self.step = step
        super().__init__(f"training failed: {self.reason}")
