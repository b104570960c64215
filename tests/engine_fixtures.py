"""Tiny real studies for the end-to-end engine tests: real Fashion-MNIST (a small slice), real Ray, real SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

FMNIST_DIR = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))

SPACE = {
    "name": "tiny",
    "input": {"img_size": 28, "in_chans": 1},
    "stem": {"kernel": 3, "stride": 2},
    "mlp_ratio": 2,
    "head": {"hidden_ratio": 0},
    "knobs": {"dwconv": {"kernel_size": [3, 7]}, "mhsa": {"head_dim": 16}},
    "stages": [
        {"depth": 1, "dim": 8, "mixers": ["dwconv"]},
        {"depth": [1, 2], "dim": 16, "mixers": ["dwconv", "mhsa", ["dwconv", "mhsa"]]},
    ],
}


def study_dict(name: str, **over: object) -> dict:
    d = {
        "name": name,
        "space": "space.yaml",
        "dataset": {"name": "fashion_mnist", "val_fraction": 0.02},
        "train": {
            "epochs": 2,
            "batch_size": 64,
            "lr": 0.003,
            "warmup_epochs": 0.2,
            "train_fraction": 0.02,
            "eval_batch_size": 600,
            "max_batches_per_epoch": 6,
        },
        "fidelity": {"rungs": [1]},
        "pruner": {"name": "pareto", "eta": 2},
        "sampler": {"name": "random"},
        "budget": {"n_trials": 3, "max_concurrent": 2},
        "throughput": {"batch_size": 8, "repeats": 2, "warmup": 1, "steps": 2},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def write_study(folder: Path, name: str, **over: object) -> Path:
    assert (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"Fashion-MNIST is not installed at {FMNIST_DIR}: run scripts/setup.sh (apt-get install dataset-fashion-mnist)"
        " or set FASHION_MNIST_ROOT"
    )
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_dict(name, **over)))
    return path
