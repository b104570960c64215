"""nas.export: a timm local-dir folder that stock timm rebuilds, in a FRESH process, to identical logits."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import nas  # noqa: F401  (registers mixerformer)
from nas import export, results
from nas.errors import StudyError

pytest.register_assert_rewrite("tests.conftest_study")  # before the import below
from tests.conftest_study import StudyFixture  # noqa: E402

pytest_plugins = ("tests.conftest_study",)  # the study_env fixture

REPO = Path(__file__).resolve().parents[1]

# The child has only the light core: the search engine's packages cannot be imported there (as after a plain
# `pip install mixer-nas`), and `import nas` itself imports nothing heavy until timm does.
ENGINE_ONLY = ("ray", "optuna", "sqlalchemy", "plotly", "typer", "rich", "pydantic", "scipy", "alembic")
CHILD = f"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ENGINE_ONLY!r}:
            raise ImportError(f"{{name}} is not installed (light core)")
        return None

sys.meta_path.insert(0, Block())
import nas
assert "torch" not in sys.modules and "timm" not in sys.modules, "import nas pulled in torch/timm"
import torch, timm  # timm's import registers mixerformer (nas's import hook)
d, k = sys.argv[1], int(sys.argv[2])
x = torch.load(sys.argv[3])
m = timm.create_model("local-dir:" + d, pretrained=True).eval()
fresh = timm.create_model("local-dir:" + d, num_classes=k).eval()
with torch.no_grad():
    torch.save({{"logits": m(x), "fresh": fresh(x)}}, sys.argv[4])
blocked = sorted(m for m in sys.modules if m.split(".")[0] in {ENGINE_ONLY!r})
print(json.dumps({{"pretrained_cfg": dict(m.pretrained_cfg), "fresh_classes": fresh.num_classes, "blocked": blocked}}))
"""


@pytest.fixture
def st(study_env: StudyFixture):
    return results.open_study("demo")


def _reference(study_env: StudyFixture, n: int) -> torch.nn.Module:
    """The trial's network built here from the stored arch + the checkpoint file, without nas.export."""
    m = timm.create_model("mixerformer", **study_env.archs[n])
    sd = safetensors.torch.load_file(str(Path(study_env.study_dir) / f"checkpoints/trial_{n}.safetensors"))
    m.load_state_dict(sd)
    return m.eval()


def test_export_with_weights_reloads_identically_in_a_fresh_process(
    st, study_env: StudyFixture, tmp_path: Path
) -> None:
    out = export.export_trial(st, 1, tmp_path / "exported", weights=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = _reference(study_env, 1)(x)
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), "7", str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "y.pt")
    assert torch.equal(got["logits"], ref)
    assert got["fresh"].shape == (3, 7)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["fresh_classes"] == 7 and info["blocked"] == []
    assert info["pretrained_cfg"]["input_size"] == [1, 28, 28]


def test_config_json_follows_timm_hub_format(st, study_env: StudyFixture, tmp_path: Path) -> None:
    from timm.models._pretrained import PretrainedCfg

    out = export.export_trial(st, 4, tmp_path / "e", weights=False)
    assert [p.name for p in out.iterdir()] == ["config.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "mixerformer" and cfg["global_pool"] == "avg"
    assert cfg["model_args"] == study_env.archs[4]
    assert cfg["num_classes"] == 10 and cfg["num_features"] == study_env.archs[4]["stages"][-1]["dim"]
    assert set(cfg["pretrained_cfg"]) <= {f.name for f in dataclasses.fields(PretrainedCfg)}
    assert cfg["pretrained_cfg"]["mean"] == [0.2860] and cfg["pretrained_cfg"]["input_size"] == [1, 28, 28]
    prov = cfg["nas"]
    assert prov["study"] == "demo" and prov["trial"] == 4
    assert prov["objectives"] == [
        {"name": "accuracy", "direction": "maximize", "value": 0.9},
        {"name": "throughput", "direction": "maximize", "value": 1500.0},
    ]
    assert prov["throughput"]["iqr"] == pytest.approx(30.0)
    assert prov["arch_id"] and prov["search_space_hash"] == st.user_attrs["space_hash"]
    assert prov["storage"] == study_env.url and prov["weights_sha256"] is None
    assert {"torch", "timm"} <= set(prov["export_versions"])
    # architecture-only export: stock timm builds the same network (random init)
    m = timm.create_model(f"local-dir:{out}")
    assert sum(p.numel() for p in m.parameters()) == results.get_record(st, 4).params


def test_pretrained_with_new_head_keeps_the_body(st, study_env: StudyFixture, tmp_path: Path) -> None:
    out = export.export_trial(st, 0, tmp_path / "e", weights=True)
    m = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=3)
    ref = _reference(study_env, 0)
    assert torch.equal(m.stem.conv.weight, ref.stem.conv.weight)
    assert torch.equal(m.head.fc1.weight, ref.head.fc1.weight)  # only the classifier (head.fc2) is dropped
    assert m(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


def test_refuses_pruned_failed_unknown_and_nonempty_out(st, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="trial 3 is pruned at epoch 1"):
        export.export_trial(st, 3, tmp_path / "a")
    with pytest.raises(StudyError, match="trial 5 is failed: RuntimeError: CUDA out of memory"):
        export.export_trial(st, 5, tmp_path / "a")
    with pytest.raises(StudyError, match="no trial 42"):
        export.export_trial(st, 42, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(StudyError, match="exists and is not empty"):
        export.export_trial(st, 1, busy, weights=True)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export.export_trial(st, 1, empty) / "config.json").is_file()


def test_nothing_half_written_on_failure(st, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export.export_trial(st, 1, tmp_path / "out", weights=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == []


def test_missing_or_mismatched_checkpoint(st, study_env: StudyFixture, tmp_path: Path) -> None:
    ckpt = Path(study_env.study_dir) / "checkpoints/trial_6.safetensors"
    ckpt.unlink()
    with pytest.raises(StudyError, match="checkpoint of trial 6 not found"):
        export.export_trial(st, 6, tmp_path / "x", weights=True)
    assert (export.export_trial(st, 6, tmp_path / "y", weights=False) / "config.json").is_file()
    # trial 0's weights under trial 6's name: a different network, caught before anything is written
    other = Path(study_env.study_dir) / "checkpoints/trial_4.safetensors"
    ckpt.write_bytes(other.read_bytes())
    with pytest.raises(StudyError, match="does not match the stored arch"):
        export.export_trial(st, 6, tmp_path / "z", weights=True)
    assert not (tmp_path / "z").exists()


def test_weights_come_from_the_uri_tune_stored_them_at(st, study_env: StudyFixture, tmp_path: Path) -> None:
    """Checkpoints written through Ray Tune's storage are recorded as URIs (file://, s3://...)."""
    folder = tmp_path / "tune" / "checkpoint_000000"
    folder.mkdir(parents=True)
    ref = _reference(study_env, 1)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    safetensors.torch.save_file(sd, str(folder / "model.safetensors"))
    rec = dataclasses.replace(results.get_record(st, 1), checkpoint=folder.as_uri())
    out = export.export_trial(st, rec, tmp_path / "e", weights=True)
    got = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    gone = dataclasses.replace(rec, checkpoint=(tmp_path / "gone").as_uri())
    with pytest.raises(StudyError, match=r"cannot be read at file://.*gone/model\.safetensors.*ray\.storage_path"):
        export.export_trial(st, gone, tmp_path / "e2", weights=True)
