"""A study name means one space and one training (issue 30): a study file whose name exists with another space or
another training is refused in one line, exit 2, naming what differs and the fix, with the database untouched (it
used to end in a 100-line Optuna traceback, a trial left RUNNING, and the stored config overwritten). What may change
between two runs of a study (budget, resources, where the data lives) still may."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from nas.engine.config import read_study_file
from nas.engine.progress import Progress
from nas.engine.run import run_config
from nas.errors import StudyError
from tests.engine_fixtures import SPACE, PlantedExecutor, write_study


def _ex() -> PlantedExecutor:
    return PlantedExecutor(lambda i: (0.6 + 0.01 * i, 5000.0 - 100.0 * i), seed_sd=0.0)


def _run(tmp_path: Path, study: Path) -> None:
    cfg, space = read_study_file(study)
    run_config(cfg, space, str(study), tmp_path / "studies", Progress(quiet=True), executor=_ex())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(path: Path) -> list[str]:
    """Every row of every table, as SQL: what a study holds (Optuna's RDBStorage rewrites pages of the file the
    first time a process opens it, with or without us, so bytes can only be compared within one process)."""
    with sqlite3.connect(path) as con:
        return list(con.iterdump())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"space": {**SPACE, "stages": [*SPACE["stages"][:-1], {**SPACE["stages"][-1], "dim": 32}]}}, "another space"),
        ({"train_over": {"epochs": 3}}, "train.epochs is 2 there and 3 here"),
        ({"train_over": {"train_fraction": 0.5}}, "train.train_fraction"),
        ({"dataset": {"name": "fashion_mnist", "hflip": True}}, "dataset.hflip"),
    ],
)
def test_a_changed_space_or_training_is_refused_and_nothing_is_written(
    tmp_path: Path, change: dict, named: str
) -> None:
    first = write_study(tmp_path, "same", budget={"n_trials": 4, "max_concurrent": 1})
    _run(tmp_path, first)
    db = tmp_path / "studies" / "same" / "study.db"
    before, raw = _digest(db), yaml.safe_load(first.read_text())
    space = change.get("space")
    if "train_over" in change:
        raw["train"] = {**raw["train"], **change["train_over"]}
    if "dataset" in change:
        raw["dataset"] = {**raw.get("dataset", {}), **change["dataset"]}
    other = tmp_path / "other"
    other.mkdir()
    (other / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    (other / "same.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError) as e:
        _run(tmp_path, other / "same.yaml")
    msg = str(e.value)
    assert "\n" not in msg and named in msg and "give the study a new name (name: same-2)" in msg
    assert _digest(db) == before  # byte for byte: no trial, no attribute, no config written
    study = optuna.load_study(study_name="same", storage=f"sqlite:///{db}")
    assert all(t.state.is_finished() for t in study.trials)


def test_what_may_change_between_runs_still_may(tmp_path: Path) -> None:
    """More trials, another concurrency, another data root (the images are checked apart): the study goes on."""
    first = write_study(tmp_path, "grow", budget={"n_trials": 3, "max_concurrent": 1})
    _run(tmp_path, first)
    raw = yaml.safe_load(first.read_text())
    raw["budget"] = {"n_trials": 3, "max_concurrent": 2}
    raw["dataset"] = {**raw.get("dataset", {}), "download": False}
    first.write_text(yaml.safe_dump(raw))
    _run(tmp_path, first)
    study = optuna.load_study(study_name="grow", storage=f"sqlite:///{tmp_path / 'studies' / 'grow' / 'study.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 4


def test_the_cli_refuses_a_changed_space_in_one_line_with_exit_2(tmp_path: Path) -> None:
    first = write_study(tmp_path, "cli", budget={"n_trials": 2, "max_concurrent": 1})
    _run(tmp_path, first)
    wider = {**SPACE, "stages": [*SPACE["stages"][:-1], {**SPACE["stages"][-1], "dim": 32}]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(wider))
    db = tmp_path / "studies" / "cli" / "study.db"
    # the planted images are not Fashion-MNIST's, which the real run checks first (its own test): forget them
    optuna.load_study(study_name="cli", storage=f"sqlite:///{db}").set_user_attr("val_set", None)
    before = _content(db)
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", str(first), "--storage", f"sqlite:///{db}", "--plain"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: study 'cli' already exists") and "another space" in lines[0]
    assert _content(db) == before
