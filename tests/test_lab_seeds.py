"""A seed build of the lab table survives the end of a machine (benchmarks/lab_seeds.py): what a grid build has
finished goes to a column file, a new machine imports it into a fresh study, and the grid driver then trains only
the architectures that are left — none twice, every one once in the end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from benchmarks import lab_seeds
from nas.engine.config import read_study_file
from nas.engine.progress import Progress
from nas.engine.run import run_config
from nas.trial_record import TrialRecord
from tests.engine_fixtures import PlantedExecutor, write_study

GRID = {"sampler": {"name": "grid"}, "pruner": {"name": "none"}, "fidelity": {"rungs": []}}


def _build(tmp_path: Path, n_trials: int | None, ex: PlantedExecutor) -> Path:
    study = write_study(tmp_path, "tiny_build_s1", **GRID, train={"seed": 1},
                        budget={"n_trials": n_trials, "max_concurrent": 1})  # fmt: skip
    cfg, space = read_study_file(study)
    run_config(cfg, space, str(study), None, Progress(quiet=True), executor=ex)
    return study


def test_a_partial_seed_build_resumes_on_a_new_machine_from_its_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default storage: studies/<name>/study.db under the working directory
    table = tmp_path / "tables" / "tiny.json"
    table.parent.mkdir()
    first = PlantedExecutor(lambda i: (0.8 + 0.01 * i, 1000.0 + i), seed_sd=0.0)
    study_file = _build(tmp_path, 4, first)
    column = lab_seeds.export_column(study_file, table)
    assert column == tmp_path / "tables" / "tiny.seed1.json"
    col = json.loads(column.read_text())
    assert col["provenance"]["done"] == 4 and col["provenance"]["train_seed"] == 1
    assert all(a["val_correct"] and a["grid_id"] is not None for a in col["archs"].values())
    total = col["provenance"]["of"]

    shutil.rmtree(tmp_path / "studies")  # a new machine: only the column (in git) is left
    assert lab_seeds.import_column(study_file, table) == 4
    rest = PlantedExecutor(lambda i: (0.7, 900.0), seed_sd=0.0)
    _build(tmp_path, None, rest)
    assert {a for a, _ in rest.trained}.isdisjoint(col["archs"])  # nothing finished is trained again
    assert len(set(rest.trained)) == len(rest.trained) and all(seed == 1 for _, seed in rest.trained)
    study = optuna.load_study(study_name="tiny_build_s1", storage="sqlite:///studies/tiny_build_s1/study.db")
    done = {TrialRecord.of(t).arch_id for t in study.trials if t.state.name == "COMPLETE"}
    assert len(done) == 4 + len(rest.trained)  # every architecture of the grid, each trained once
    assert len(study.trials) == total  # every grid point proposed (points that name the same architecture: copies)

    lab_seeds.export_column(study_file, table)
    again = json.loads(column.read_text())["provenance"]
    assert again["done"] == len(done)
    assert [s["trained_here"] for s in again["sessions"]] == [4, len(rest.trained)]  # both machines, in order


def test_import_refuses_a_study_that_already_has_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "tiny.json"
    study_file = _build(tmp_path, 2, PlantedExecutor(lambda i: (0.8, 1000.0), seed_sd=0.0))
    lab_seeds.export_column(study_file, table)
    with pytest.raises(SystemExit, match="already has 2 trials: resume it with nas search"):
        lab_seeds.import_column(study_file, table)


def test_seed_columns_join_the_table_as_format_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two complete seed columns beside a one-seed table make a three-seed table (format 2) whose extra seeds are
    the columns' curves and bitmaps; an incomplete column, or one on other validation images, is refused."""
    from nas.engine.replay import Table, TableArch

    monkeypatch.chdir(tmp_path)
    table_path = tmp_path / "tables" / "tiny.json"
    table_path.parent.mkdir()
    cols = {}
    for seed in (1, 2):
        study = write_study(tmp_path, f"tiny_s{seed}", **GRID, train={"seed": seed},
                            budget={"n_trials": None, "max_concurrent": 1})  # fmt: skip
        cfg, space = read_study_file(study)
        run_config(cfg, space, str(study), None, Progress(quiet=True),
                   executor=PlantedExecutor(lambda i: (0.8 + 0.01 * i, 1000.0 + i), seed_sd=0.01))  # fmt: skip
        cols[seed] = json.loads(lab_seeds.export_column(study, table_path).read_text())
    some = cols[1]["archs"]
    archs = {a: TableArch(arch_id=a, params=c["params"], placement="p", n_params=1, flops=2,
                          throughput={"median": 1.0, "iqr": 0.0, "cv": 0.0}, val_acc=[0.5, 0.6], val_loss=[1, 1],
                          train_loss=[1, 1], seconds=[1, 1]) for a, c in some.items()}  # fmt: skip
    table_path.write_text(json.dumps(Table("tiny", {}, "h", {}, 10, 2, archs, {"device": "cpu"}).to_json()))
    v2 = lab_seeds.add_columns(table_path)
    again = Table.load(table_path)
    assert v2.n_seeds == again.n_seeds == 3 and json.loads(table_path.read_text())["format"] == "mixer-nas-table/2"
    for a in again.archs.values():
        curves = a.curves()
        assert [c.seed for c in curves] == [0, 1, 2]
        for c in curves[1:]:
            assert c.val_acc == cols[c.seed]["archs"][a.arch_id]["val_acc"] and c.val_correct
        assert a.mean_final == pytest.approx(sum(c.val_acc[-1] for c in curves) / 3)
    assert [s["seed"] for s in again.provenance["seeds"]] == [0, 1, 2]

    column = lab_seeds.column_path(table_path, 2)
    raw = json.loads(column.read_text())
    raw["provenance"]["val_set"] = {"images": 1, "fingerprint": "other"}
    column.write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match="evaluated on different images"):
        lab_seeds.add_columns(table_path)
    raw["archs"].popitem()
    column.write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match=f"{len(some) - 1} of the table's {len(some)} architectures are done"):
        lab_seeds.add_columns(table_path)
