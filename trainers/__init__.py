"""Proxy training: datasets on the device and a short fit loop. Imports nothing from ``nas``.

Typical use::

    from trainers import DataConfig, TrainConfig, DeviceData, load_dataset, fit
    data = DeviceData(load_dataset(DataConfig(name="fashion_mnist")), "cuda")   # once per worker
    curve = fit(model, TrainConfig(epochs=5, train_fraction=0.2), data)      # per trial

The names below are imported on first use (PEP 562), so a reader of stored results that needs only
:mod:`trainers.bitmap` (numpy) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "trainers.config": ("DataConfig", "SyntheticSpec", "TrainConfig", "parse_config"),
    "trainers.data": ("DATASETS", "DeviceData", "TensorSplits", "load_dataset", "stratified_subset"),
    "trainers.errors": (
        "CheckpointError", "CorruptDataError", "DataError", "DatasetNotFoundError", "TrainerConfigError",
        "TrainerError", "TrainingFailed", "UnknownDatasetError",
    ),
    "trainers.proxy": ("EpochResult", "fit", "iter_fit", "read_checkpoint_history", "resolve_device"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from trainers.config import DataConfig, SyntheticSpec, TrainConfig, parse_config  # noqa: F401
    from trainers.data import DATASETS, DeviceData, TensorSplits, load_dataset, stratified_subset  # noqa: F401
    from trainers.errors import (  # noqa: F401
        CheckpointError,
        CorruptDataError,
        DataError,
        DatasetNotFoundError,
        TrainerConfigError,
        TrainerError,
        TrainingFailed,
        UnknownDatasetError,
    )
    from trainers.proxy import EpochResult, fit, iter_fit, read_checkpoint_history, resolve_device  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
