"""Proxy training: datasets on the device and a short fit loop. Imports nothing from ``nas``.

Typical use::

    from trainers import DataConfig, TrainConfig, DeviceData, load_dataset, fit
    data = DeviceData(load_dataset(DataConfig(name="fashion_mnist")), "cuda")   # once per worker
    curve = fit(model, TrainConfig(epochs=5, train_fraction=0.2), data)      # per trial
"""

from trainers.config import DataConfig, SyntheticSpec, TrainConfig, parse_config
from trainers.data import DATASETS, DeviceData, TensorSplits, load_dataset, stratified_subset
from trainers.errors import (
    CheckpointError,
    CorruptDataError,
    DataError,
    DatasetNotFoundError,
    TrainerConfigError,
    TrainerError,
    TrainingFailed,
    UnknownDatasetError,
)
from trainers.proxy import EpochResult, fit, iter_fit, read_checkpoint_history, resolve_device

__all__ = [
    "DATASETS",
    "CheckpointError",
    "CorruptDataError",
    "DataConfig",
    "DataError",
    "DatasetNotFoundError",
    "DeviceData",
    "EpochResult",
    "SyntheticSpec",
    "TensorSplits",
    "TrainConfig",
    "TrainerConfigError",
    "TrainerError",
    "TrainingFailed",
    "UnknownDatasetError",
    "fit",
    "iter_fit",
    "load_dataset",
    "parse_config",
    "read_checkpoint_history",
    "resolve_device",
    "stratified_subset",
]
