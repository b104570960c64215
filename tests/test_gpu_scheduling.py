"""GPU scheduling without a GPU: Ray is started with GPUs declared that do not exist, the worker uses the fake device
layer of tests/fake_gpus.py (CPU compute, lock named after the GPU Ray assigned). Real `nas search` runs, real
Ray, real SQLite, real Fashion-MNIST slices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.engine_fixtures import write_study

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[1]


def _search(tmp_path: Path, name: str, num_gpus: int, gpus_per_trial: float) -> tuple[optuna.Study, list[dict]]:
    log = tmp_path / "locklog"
    log.mkdir()
    path = write_study(
        tmp_path,
        name,
        ray={"num_cpus": 2, "num_gpus": num_gpus},
        resources={"cpus_per_trial": 1, "gpus_per_trial": gpus_per_trial},
        budget={"n_trials": 2, "max_concurrent": 2},
        pruner={"name": "none"},
        train={"max_batches_per_epoch": 12},
    )
    env = {
        **os.environ,
        "NAS_DEVICE_LAYER": "tests.fake_gpus:FakeGpus",
        "NAS_FAKE_GPU_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", str(path), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")
    holds = [json.loads(line) for f in log.glob("*.jsonl") for line in f.read_text().splitlines()]
    return study, holds


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and len({t.user_attrs["arch_id"] for t in done}) == 2, [t.state for t in study.trials]
    return done


def test_half_a_gpu_per_trial_packs_two_trials_on_one_gpu_and_they_take_turns(tmp_path: Path) -> None:
    study, holds = _search(tmp_path, "packed", num_gpus=1, gpus_per_trial=0.5)
    a, b = _complete(study)
    assert a.user_attrs["visible_gpus"] == b.user_attrs["visible_gpus"] == "0"  # both on Ray's GPU 0
    assert a.user_attrs["device_lock"] == b.user_attrs["device_lock"] == "fake-gpu-0"  # one lock per physical GPU
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete  # at the same time
    assert len({h["pid"] for h in holds}) == 2 and {h["lock"] for h in holds} == {"fake-gpu-0"}
    assert sum(h["mode"] == "exclusive" for h in holds) == 2  # each trial measured once, holding the GPU alone


def test_one_gpu_per_trial_gives_each_trial_its_own_gpu_and_lock(tmp_path: Path) -> None:
    study, _ = _search(tmp_path, "spread", num_gpus=2, gpus_per_trial=1)
    a, b = _complete(study)
    assert {a.user_attrs["visible_gpus"], b.user_attrs["visible_gpus"]} == {"0", "1"}
    assert {a.user_attrs["device_lock"], b.user_attrs["device_lock"]} == {"fake-gpu-0", "fake-gpu-1"}


def _train_then_signal(payload: dict, ready: str, env: dict) -> None:
    os.environ.update(env)
    from nas.engine.messages import TrialPayload
    from nas.engine.trainable import trial_reports

    for _report in trial_reports(TrialPayload(**payload)):
        Path(ready).touch()  # after epoch 1: the other process measures while epoch 2 trains


def test_a_measurement_waits_for_training_on_the_same_gpu(tmp_path: Path) -> None:
    """Process A trains on fake GPU 0; process B measures throughput on GPU 0 meanwhile. B's exclusive hold must
    fall between A's training steps, never across one (with a lock per process instead, they overlap)."""
    import multiprocessing as mp

    from nas.engine.messages import TrialPayload
    from nas.engine.trainable import device_layer, measure
    from tests.engine_fixtures import SPACE, study_dict

    log = tmp_path / "log"
    log.mkdir()
    env = {"NAS_DEVICE_LAYER": "tests.fake_gpus:FakeGpus", "NAS_FAKE_GPU_LOG": str(log), "CUDA_VISIBLE_DEVICES": "0"}
    from nas.space import SearchSpace

    arch = SearchSpace.from_dict(SPACE).arch_from_params({}, num_classes=10)
    cfg = study_dict("x")
    train = {**cfg["train"], "epochs": 2, "train_fraction": 0.5, "max_batches_per_epoch": 300}
    tp = {"batch_size": 32, "repeats": 3, "warmup": 1, "steps": 8, "precision": "fp32", "compile": None, "threads": 1}
    payload = TrialPayload(0, arch.to_model_args(), "a", train, cfg["dataset"], tp, 1.0, str(tmp_path / "locks"))
    ready = tmp_path / "ready"
    ctx = mp.get_context("spawn")
    trainer = ctx.Process(target=_train_then_signal, args=(payload.__dict__, str(ready), env))
    trainer.start()
    try:
        for _ in range(600):
            if ready.exists() or not trainer.is_alive():
                break
            time.sleep(0.1)
        assert ready.exists(), "the training process did not finish its first epoch"
        os.environ.update(env)
        layer = device_layer()
        device = layer.resolve("cpu")
        measure(payload, device, layer.lock(device, payload.lock_dir), threads=1, train_batch=32)
    finally:
        trainer.join(timeout=300)
        for k in env:
            os.environ.pop(k, None)
    holds = [json.loads(line) for f in log.glob("*.jsonl") for line in f.read_text().splitlines()]
    (m,) = [h for h in holds if h["mode"] == "exclusive" and h["pid"] == os.getpid()]
    steps = [h for h in holds if h["mode"] == "shared" and h["pid"] != os.getpid()]
    assert any(s["start"] > m["end"] for s in steps), "training went on after the measurement"
    assert any(s["end"] < m["start"] for s in steps), "training had started before the measurement"
    clash = [s for s in steps if s["start"] < m["end"] and m["start"] < s["end"]]
    assert not clash, clash[:2]


def test_the_shipped_gpu_study_validates() -> None:
    from nas.engine.config import read_study_file

    cfg, space = read_study_file(REPO / "studies" / "cifar_small_gpu.yaml")
    assert cfg.resources.gpus_per_trial == 0.25 and cfg.budget.max_concurrent == 4
    assert cfg.train.device == "cuda" and cfg.throughput.precision == "bf16"
    assert space.input.img_size == 32
