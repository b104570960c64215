"""Tiny real studies for the end-to-end engine tests: real Fashion-MNIST (a small slice), real Ray, real SQLite."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import yaml

from nas.engine.executor import Prepared, TrialFeed
from nas.engine.messages import EpochReport
from trainers import bitmap

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
        "budget": {"n_trials": 3, "max_concurrent": 2, "settle_rounds": 0},  # a test that settles says so
        "throughput": {"batch_size": 8, "repeats": 2, "warmup": 1, "steps": 2},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def write_study(folder: Path, name: str, space: dict | None = None, **over: object) -> Path:
    assert (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"Fashion-MNIST is not installed at {FMNIST_DIR}: run scripts/setup.sh (apt-get install dataset-fashion-mnist)"
        " or set FASHION_MNIST_ROOT"
    )
    (folder / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_dict(name, **over)))
    return path


N_IMG = 4000
EPOCHS = 2


class PlantedExecutor:
    """Trials end at once with planted results: ``truth(i)`` gives the i-th distinct architecture's (accuracy,
    throughput); each training seed adds ``seed_sd`` of noise to the accuracy; the bitmap has that accuracy. An
    epoch before the last reports that accuracy less 0.1, plus ``early_sd`` of noise (a rung that ranks badly)."""

    def __init__(self, truth, seed_sd: float, early_sd: float = 0.0) -> None:
        self.truth, self.seed_sd, self.early_sd = truth, seed_sd, early_sd
        self.order: dict[str, int] = {}
        self.trained: list[tuple[str, int]] = []  # (arch_id, training seed) of every trial handed out

    def prepare(self, cfg, space, where) -> Prepared:
        return Prepared(10, {"val_set": {"images": N_IMG, "fingerprint": "planted-images"}})

    def clock(self) -> float:
        return time.time()

    def run(self, driver, scheduler=None) -> None:
        feed = TrialFeed(driver, scheduler)
        while (trial := feed.next_trial(f"planted_{len(self.trained)}")) is not None:
            p = trial.payload
            seed = int(p.train["seed"])
            self.trained.append((p.arch_id, seed))
            acc, tp = self.truth(self.order.setdefault(p.arch_id, len(self.order)))
            digest = hashlib.sha256(f"{p.arch_id}:{seed}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            bits = rng.random(N_IMG) < acc + rng.normal(0.0, self.seed_sd)
            early = float(bits.mean()) - 0.1 + (rng.normal(0.0, self.early_sd) if self.early_sd else 0.0)
            throughput = {"median": tp, "iqr": 1.0, "cv": 0.001, "device": "cpu", "key": "k", "cached": True}
            for epoch in range(1, EPOCHS + 1):
                last = epoch == EPOCHS
                report = EpochReport(
                    epoch=epoch, val_acc=float(bits.mean()) if last else early, val_loss=0.5, train_loss=0.5,
                    seconds=1.0, images_per_s=100.0, wall_time_s=float(epoch), throughput=throughput,
                    val_correct=bitmap.pack(bits) if last else None, val_set="planted-images" if last else None,
                )  # fmt: skip
                if feed.report(trial, report):
                    break
            feed.end(trial)
