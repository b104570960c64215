"""`nas search` refuses what cannot run before it writes anything: one ``error:`` line, exit code 2, no study folder
or database, in well under 30 s. Each case is a fresh `nas search` process, as a user would run it."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from nas.errors import ConfigError
from tests.engine_fixtures import SPACE, study_dict, write_study

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _nas_search(tmp_path: Path, study: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", str(study), *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out, time.monotonic() - t0


def _assert_refused(tmp_path: Path, study: Path, expected: str, *args: str) -> str:
    out, seconds = _nas_search(tmp_path, study, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stdout[-800:], out.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-1500:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "studies").exists(), list((tmp_path / "studies").rglob("*"))
    assert seconds < 30, f"took {seconds:.1f} s"
    return lines[0]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


FILE_CASES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "binary": (lambda p: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    "utf16": (lambda p: codecs.BOM_UTF16_LE + p.read_text().encode("utf-16-le"), "UTF-16 text; save it as UTF-8"),
    "latin1": (lambda p: p.read_bytes() + "# r\xe9sum\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
    "empty": (lambda p: b"", "the file is empty"),
    "comments only": (lambda p: b"# nothing here yet\n\n", "the file is empty"),
    "duplicate key": (lambda p: p.read_bytes() + b"seed: 3\nseed: 4\n", "key 'seed' is written twice"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unreadable_study_file(tmp_path: Path, case: str) -> None:
    study = write_study(tmp_path, "bad")
    make, expected = FILE_CASES[case]
    _write(study, make(study))
    line = _assert_refused(tmp_path, study, expected)
    assert str(study) in line


def test_duplicate_key_in_the_space_file_names_key_and_lines(tmp_path: Path) -> None:
    study = write_study(tmp_path, "bad")
    space = tmp_path / "space.yaml"
    text = space.read_text()
    space.write_text(text.replace("name: tiny\n", "name: tiny\nmlp_ratio: 3\n", 1))
    line = _assert_refused(tmp_path, study, "key 'mlp_ratio' is written twice")
    assert "space.yaml: line" in line and "(first at line" in line


def test_constraints_no_architecture_can_meet(tmp_path: Path) -> None:
    study = write_study(tmp_path, "bad")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, "constraints": {"max_params": 1000}}))
    line = _assert_refused(tmp_path, study, "constraints.max_params 1,000 is below the smallest architecture")
    assert "raise max_params to at least" in line


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"resources": {"gpus_per_trial": 1}}, "resources.gpus_per_trial: 1 GPU per trial asked, but the Ray cluster"),
        ({"resources": {"cpus_per_trial": 3}}, "resources.cpus_per_trial: 3 per trial asked, but the largest node"),
        ({"budget": {"max_concurrent": 3}}, "budget.max_concurrent: 3 trials at once asked"),
    ],
    ids=["gpu-on-cpu-cluster", "cpus-over-largest-node", "max-concurrent-over-capacity"],
)
def test_resources_the_cluster_cannot_place(tmp_path: Path, over: dict, expected: str) -> None:
    study = write_study(tmp_path, "bad", ray={"num_cpus": 2}, **over)
    line = _assert_refused(tmp_path, study, expected)
    assert "2 CPU/0 GPU" in line


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("cuda", 0, "train.device is 'cuda' but resources.gpus_per_trial is 0"),
        ("cuda:1", 0, "train.device is 'cuda:1' but resources.gpus_per_trial is 0"),
        ("cpu", 0.5, "train.device is 'cpu' but resources.gpus_per_trial is 0.5"),
    ],
)
def test_device_and_gpu_share_that_disagree(tmp_path: Path, device: str, gpus: float, expected: str) -> None:
    """Before: the study started and every trial failed ~100 s later, then `nas search` exited 0 with FAIL rows."""
    study = write_study(tmp_path, "bad", train={"device": device}, resources={"gpus_per_trial": gpus})
    line = _assert_refused(tmp_path, study, expected)
    assert "set resources.gpus_per_trial" in line and "train.device: auto" in line


def test_sampler_and_pruner_errors_come_before_the_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampler that cannot be built (here: made to fail) leaves no empty study database behind."""
    from nas.engine import run

    def broken(*args: object) -> None:
        raise ConfigError("sampler: cannot be built")

    monkeypatch.setattr(run, "make_sampler", broken)
    study = write_study(tmp_path, "bad")
    with pytest.raises(ConfigError, match="cannot be built"):
        run.run_study(study, base_dir=tmp_path / "studies")
    assert not (tmp_path / "studies").exists()


def test_a_valid_file_still_reads_with_safe_load_semantics(tmp_path: Path) -> None:
    from nas.yamlfile import read_yaml

    path = tmp_path / "ok.yaml"
    body = yaml.safe_dump(study_dict("ok")) + "anchors: {base: &b {x: 1}, more: {<<: *b, x: 2}}\n"
    path.write_bytes(codecs.BOM_UTF8 + body.encode())
    got = read_yaml(path, "missing")
    assert got["anchors"]["more"] == {"x": 2} and got == yaml.safe_load(body)  # a merge may override a key


def test_an_existing_study_with_other_directions_is_refused_in_one_line(tmp_path: Path) -> None:
    """The study exists in the storage with other objective directions: one line naming the study, the stored
    directions and the file's; the stored study gains no trial and no attribute (nothing merged into it)."""
    import optuna

    study = write_study(tmp_path, "dirs")
    db = tmp_path / "studies" / "dirs" / "study.db"
    db.parent.mkdir(parents=True)
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="dirs", storage=url, directions=["minimize", "maximize"])
    out, _ = _nas_search(tmp_path, study)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-1500:])
    assert lines[0] == (
        "error: study 'dirs' already exists in sqlite:///studies/dirs/study.db with directions "
        "['minimize', 'maximize'], but the study file asks for ['maximize', 'maximize']; give the study a new name"
    )
    stored = optuna.load_study(study_name="dirs", storage=url)
    assert stored.trials == [] and stored.user_attrs == {}


def test_a_study_whose_validation_images_changed_is_refused_in_one_line(tmp_path: Path) -> None:
    """The study's trials were evaluated on other validation images (another val_fraction, split seed or root):
    accuracies, paired comparisons and replicates would mix two sets of images, so the run is refused in one line
    naming the dataset field and both fingerprints, and nothing is written."""
    import optuna

    study = write_study(tmp_path, "vals")
    db = tmp_path / "studies" / "vals" / "study.db"
    db.parent.mkdir(parents=True)
    url = f"sqlite:///{db}"
    stored = optuna.create_study(study_name="vals", storage=url, directions=["maximize", "maximize"])
    stored.set_user_attr("val_set", {"images": 123, "fingerprint": "0123456789abcdef"})
    out, _ = _nas_search(tmp_path, study)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-1500:])
    assert lines[0].startswith(f"error: {study}: dataset: the validation images are not those study 'vals' was "
                               "evaluated on (123 images, fingerprint 0123456789abcdef; now ")  # fmt: skip
    assert lines[0].endswith("restore dataset.val_fraction / split_seed / root, or give the study a new name")
    again = optuna.load_study(study_name="vals", storage=url)
    assert again.trials == [] and again.user_attrs == {"val_set": {"images": 123, "fingerprint": "0123456789abcdef"}}
