"""A REAL Optuna RDB study on SQLite, laid out exactly as docs/storage.md says, for the read-side tests.

``make_study(root)`` builds ``root/studies/<name>/study.db`` with study user attrs (nas_version, config, space,
space_hash, objectives, versions, study_dir) and trials added through Optuna's API with the trial user attrs
(arch, arch_id, placement, curve, fidelity, full_fidelity, throughput, params, flops, wall_time_s, device,
failure, pruned_at, checkpoint). Architectures are tiny real ``mixerformer`` networks (28 px, 1 channel,
10 classes); COMPLETE trials get their random-init state dict saved as a ``.safetensors`` checkpoint.

Import the ``study_env`` fixture (it chdirs into tmp_path, because study paths are relative to the working
directory) or call ``make_study`` yourself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from trainers import bitmap

OBJECTIVES = [{"name": "accuracy", "direction": "maximize"}, {"name": "throughput", "direction": "maximize"}]
T0 = datetime(2025, 1, 1, 12, 0, 0)


def _stage(dim: int, mixer: str, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"depth": 1, "dim": dim, "mixer": mixer, "knobs": {mixer: knobs} if knobs else {}}


def tiny_arch(stages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "in_chans": 1,
        "num_classes": 10,
        "img_size": 28,
        "stem": {"kernel": 3, "stride": 2},
        "downsample": {"kernel": 3, "stride": 2},
        "stages": stages,
        "mlp_ratio": 2.0,
        "head": {"hidden_ratio": 2.0, "dropout": 0.0},
    }


# (state, accuracy, throughput, full_fidelity, stages, extra attrs). Front by construction: 0, 1, 4, 6
# (2 is dominated by 0 and 1; 7 would dominate everything but is not at full fidelity).
PLAN: list[tuple[str, float | None, float | None, bool, list[dict[str, Any]], dict[str, Any]]] = [
    ("COMPLETE", 0.80, 5000.0, True, [_stage(16, "dwconv"), _stage(32, "dwconv")], {}),
    ("COMPLETE", 0.85, 3000.0, True, [_stage(16, "dwconv"), _stage(32, "mhsa", {"head_dim": 16})], {}),
    (
        "COMPLETE",
        0.78,
        2500.0,
        True,
        [_stage(16, "dwconv"), _stage(32, "cska", {"heads": 2}), _stage(32, "mhsa", {"head_dim": 16})],
        {},
    ),
    ("PRUNED", None, 4000.0, False, [_stage(16, "dwconv"), _stage(32, "key_only", {"heads": 2})], {"pruned_at": 1}),
    (
        "COMPLETE",
        0.90,
        1500.0,
        True,
        [
            _stage(16, "mhsa", {"head_dim": 16}),
            _stage(32, "mhsa", {"head_dim": 16}),
            _stage(48, "mhsa", {"head_dim": 16}),
        ],
        {},
    ),
    (
        "FAIL",
        None,
        None,
        False,
        [_stage(16, "dwconv"), _stage(32, "mhsa")],
        {"failure": "RuntimeError: CUDA out of memory at batch 256"},
    ),
    ("COMPLETE", 0.70, 6000.0, True, [_stage(16, "dwconv", {"kernel_size": 3}), _stage(32, "dwconv")], {}),
    ("COMPLETE", 0.95, 7000.0, False, [_stage(16, "dwconv"), _stage(32, "dwconv", {"kernel_size": 3})], {}),
]
EXPECTED_FRONT = [4, 1, 0, 6]  # by accuracy, best first
EPOCHS = 3
VAL_IMAGES = 1000  # the fixture's validation set: full-fidelity trials carry a correctness bitmap of it


@dataclass
class StudyFixture:
    """Handles to the built study (paths are relative to ``root``, the working directory of the test)."""

    root: Path
    name: str
    url: str
    study_dir: str
    archs: dict[int, dict[str, Any]] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)
    expected_front: list[int] = field(default_factory=list)


def _curve(final_acc: float, epochs: int) -> list[dict[str, Any]]:
    out = []
    for e in range(1, epochs + 1):
        acc = final_acc * (0.6 + 0.4 * e / EPOCHS)
        out.append(
            {
                "epoch": e,
                "val_acc": round(acc, 4),
                "val_loss": round(2.3 * (1 - acc), 4),
                "train_loss": round(2.3 * (1.05 - acc), 4),
                "seconds": 10.0,
                "images_per_s": 900.0,
            }
        )
    return out


def _arch_facts(arch: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """Resolved model_args, arch_id and placement."""
    from nas.arch import ArchSpec

    spec = ArchSpec.from_model_args(arch)
    return spec.to_model_args(), spec.arch_id, spec.placement()


def make_study(root: Path, name: str = "demo", plan: list | None = None) -> StudyFixture:
    """Build ``root/studies/<name>/study.db`` (cwd must be ``root`` for relative paths to resolve)."""
    import optuna
    import safetensors.torch
    import timm
    import torch
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import FrozenTrial, TrialState

    import nas  # noqa: F401  (registers mixerformer)

    plan = PLAN if plan is None else plan
    study_dir = f"studies/{name}"
    (root / study_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{study_dir}/study.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "maximize"])
        space = {"stages": [[16], [32], [32, 48]], "mixers": ["dwconv", "mhsa", "cska", "key_only"]}
        space_json = json.dumps(space, sort_keys=True)
        attrs = {
            "nas_version": 1,
            "config": {
                "name": name,
                "dataset": "fashion_mnist",
                "epochs": EPOCHS,
                "img_size": 28,
                "data": {"mean": [0.2860], "std": [0.3530]},
            },
            "space": space,
            "space_hash": hashlib.sha256(space_json.encode()).hexdigest(),
            "objectives": OBJECTIVES,
            "versions": {
                "torch": torch.__version__,
                "timm": timm.__version__,
                "optuna": optuna.__version__,
                "ray": "2.60.0",
                "python": "3.11",
            },
            "study_dir": study_dir,
        }
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        mixer_choices = ("dwconv", "mhsa", "cska", "key_only")
        fx = StudyFixture(
            root=root,
            name=name,
            url=url,
            study_dir=study_dir,
            expected_front=list(EXPECTED_FRONT) if plan is PLAN else [],
        )
        for n, (state, acc, thr, full, stages, extra) in enumerate(plan):
            model_args, arch_id, placement = _arch_facts(tiny_arch(stages))
            torch.manual_seed(n)
            model = timm.create_model("mixerformer", **model_args)
            n_params = sum(p.numel() for p in model.parameters())
            params = {"n_stages": len(stages), "lr": 1e-3 * (n + 1)}
            dists: dict[str, Any] = {"n_stages": IntDistribution(2, 3), "lr": FloatDistribution(1e-4, 1e-1, log=True)}
            for i, st in enumerate(stages):
                params[f"stage{i}.mixer"] = st["mixer"]
                dists[f"stage{i}.mixer"] = CategoricalDistribution(mixer_choices)
                params[f"stage{i}.dim"] = st["dim"]
                dists[f"stage{i}.dim"] = CategoricalDistribution((16, 32, 48))
            epochs = EPOCHS if state == "COMPLETE" else extra.get("pruned_at", 0)
            user_attrs: dict[str, Any] = {
                "arch": model_args,
                "arch_id": arch_id,
                "placement": placement,
                "curve": _curve(acc if acc is not None else 0.5, epochs),
                "fidelity": epochs,
                "full_fidelity": full,
                "params": n_params,
                "flops": 2 * 1000 * n_params,
                "wall_time_s": 30.0 * max(epochs, 1),
                "device": "cpu",
            }
            if thr is not None:
                user_attrs["throughput"] = {
                    "median": thr,
                    "iqr": 0.02 * thr,
                    "cv": 0.01,
                    "batch": 256,
                    "device": "cpu",
                    "precision": "fp32",
                    "resolution": 28,
                    "compile": "none",
                    "latency_ms_b1": 1000.0 / thr,
                    "repeats": 5,
                }
            if state == "COMPLETE" and full:  # which of VAL_IMAGES images it got right: the first acc * VAL_IMAGES
                right = round(acc * VAL_IMAGES)
                user_attrs["val_correct"] = bitmap.pack([True] * right + [False] * (VAL_IMAGES - right))
                user_attrs["val_set"] = "fixture-val-set0"
            user_attrs.update(extra)
            if state == "COMPLETE":
                ckpt = f"checkpoints/trial_{n}.safetensors"
                safetensors.torch.save_file(model.state_dict(), str(Path(study_dir) / ckpt))
                user_attrs["checkpoint"] = ckpt
            start = T0 + timedelta(seconds=60 * n)
            frozen = FrozenTrial(
                number=n,
                trial_id=n,
                state=TrialState[state],
                value=None,
                values=[acc, thr] if state == "COMPLETE" else None,
                datetime_start=start,
                datetime_complete=start + timedelta(seconds=user_attrs["wall_time_s"]),
                params=params,
                distributions=dists,
                user_attrs=user_attrs,
                system_attrs={},
                intermediate_values={},
            )
            study.add_trial(frozen)
            fx.archs[n] = model_args
            fx.states[n] = state
    finally:
        os.chdir(cwd)
    return fx


@pytest.fixture(scope="session")
def study_template(tmp_path_factory: pytest.TempPathFactory) -> StudyFixture:
    """Built once per session; tests get a private copy through ``study_env``."""
    root = tmp_path_factory.mktemp("study_template")
    fx = make_study(root, "demo")
    make_study(root, "other", plan=PLAN[:1])
    return fx


@pytest.fixture
def study_env(study_template: StudyFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StudyFixture:
    """The demo study (8 trials) plus a one-trial study 'other', copied into tmp_path, with cwd = tmp_path."""
    shutil.copytree(study_template.root / "studies", tmp_path / "studies")
    monkeypatch.chdir(tmp_path)
    return dataclasses.replace(study_template, root=tmp_path)
