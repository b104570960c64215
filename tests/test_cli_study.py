"""nas.cli_study through typer's CliRunner: happy paths, and user errors as ONE line + exit code 2."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nas import cli_study
from nas.errors import ConfigError

pytest.register_assert_rewrite("tests.conftest_study")  # before the import below
from tests.conftest_study import StudyFixture, _arch_facts, _stage, tiny_arch  # noqa: E402

pytest_plugins = ("tests.conftest_study",)  # the study_env fixture


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    cli_study.register(a)
    return a


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, list(args))


def assert_user_error(res, pattern: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in res.output + res.stderr


def test_studies_status_pareto(app, study_env: StudyFixture) -> None:
    res = run(app, "studies")
    assert res.exit_code == 0, res.output
    assert "demo" in res.stdout and "other" in res.stdout and "accuracy:max" in res.stdout
    res = run(app, "status", "demo")
    assert res.exit_code == 0, res.output
    assert "trials 8 (complete 6, fail 1, pruned 1)" in res.stdout
    assert "trial-epochs 19" in res.stdout and "Pareto front (4 trials)" in res.stdout
    res = run(app, "pareto", "demo", "--format", "json")
    rows = json.loads(res.stdout)
    assert [r["trial"] for r in rows] == study_env.expected_front
    assert rows[0]["accuracy"] == 0.9 and rows[0]["placement"]
    res = run(app, "pareto", "demo", "--format", "csv", "--storage", study_env.url)
    got = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [int(r["trial"]) for r in got] == study_env.expected_front
    assert [float(r["throughput"]) for r in got] == [1500.0, 3000.0, 5000.0, 6000.0]
    res = run(app, "pareto", "demo")
    assert res.exit_code == 0 and all(r["placement"] in res.stdout for r in rows)


def test_dashboard_and_export(app, study_env: StudyFixture, tmp_path: Path) -> None:
    res = run(app, "dashboard", "demo", "--out", "dash.html")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dash.html").stat().st_size > 1_000_000
    res = run(app, "dashboard", "demo")
    assert res.exit_code == 0 and (tmp_path / "studies/demo/dashboard.html").is_file()
    res = run(app, "export", "demo", "--pick", "max-accuracy", "--min-throughput", "2000", "--out", "e1", "--weights")
    assert res.exit_code == 0, res.output
    assert "exported trial 1" in res.stdout
    assert json.loads((tmp_path / "e1/config.json").read_text())["nas"]["trial"] == 1
    assert (tmp_path / "e1/model.safetensors").is_file()
    res = run(app, "export", "demo", "--pick", "knee", "--out", "e2")
    assert res.exit_code == 0 and "exported trial 0" in res.stdout
    res = run(app, "export", "demo", "--trial", "6", "--out", "e3")
    assert res.exit_code == 0 and not (tmp_path / "e3/model.safetensors").exists()


def test_user_errors_are_one_line_exit_2(app, study_env: StudyFixture, tmp_path: Path) -> None:
    assert_user_error(run(app, "status", "nope"), "unknown study 'nope'")
    assert_user_error(run(app, "pareto", "demo", "--storage", "sqlite:///nowhere/x.db"), "no database file")
    assert_user_error(run(app, "pareto", "demo", "--format", "xml"), "--format: unknown format 'xml'")
    assert_user_error(run(app, "export", "demo", "--trial", "99", "--out", "x"), "no trial 99")
    assert_user_error(run(app, "export", "demo", "--trial", "3", "--out", "x"), "trial 3 is pruned")
    assert_user_error(run(app, "export", "demo", "--out", "x"), "exactly one of --trial N or --pick")
    assert_user_error(run(app, "export", "demo", "--trial", "1", "--pick", "knee", "--out", "x"), "exactly one")
    assert_user_error(
        run(app, "export", "demo", "--pick", "knee", "--min-throughput", "1e9", "--out", "x"),
        "none of the 5 complete full-fidelity trials satisfies throughput >= 1e+09",
    )
    assert_user_error(run(app, "export", "demo", "--pick", "best", "--out", "x"), "unknown --pick 'best'")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/a.txt").write_text("x")
    assert_user_error(run(app, "export", "demo", "--trial", "1", "--out", "full"), "is not empty")
    assert not (tmp_path / "x").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert_user_error(run(app, "dashboard", "demo", "--serve", "--port", str(port)), f"port {port}")


def test_help_texts_carry_an_example(app) -> None:
    for cmd in ("studies", "status", "pareto", "dashboard", "export"):
        res = run(app, cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.stdout, (cmd, res.stdout)


def test_cli_errors_wrapper_passes_results_and_other_exceptions() -> None:
    @cli_study.cli_errors
    def ok(x: int) -> int:
        return x + 1

    @cli_study.cli_errors
    def bad() -> None:
        raise ConfigError("stage 2: knob 'heads' must divide dim 48; use 3 or 6")

    @cli_study.cli_errors
    def bug() -> None:
        raise KeyError("programming error")

    assert ok(1) == 2
    with pytest.raises(typer.Exit) as e:
        bad()
    assert e.value.exit_code == 2
    with pytest.raises(KeyError):  # not a user error: must surface, not be swallowed
        bug()


HEAVY = ("torch", "timm", "ray")


def _modules_after(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run `nas ARGS` in a fresh interpreter; which heavy packages did it import?"""
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        f"sys.argv = ['nas', *{args!r}]\n"
        "try:\n    runpy.run_module('nas.cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code or 0\n"
        "else:\n    code = 0\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY"))
    heavy = json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0].replace("'", '"'))
    return int(line.rsplit(" ", 1)[1]), heavy, out.stdout + out.stderr


@pytest.mark.parametrize("args", [["--help"], ["studies"], ["status", "demo"], ["pareto", "demo", "--format", "csv"]])
def test_reading_commands_import_neither_torch_nor_ray(study_env: StudyFixture, args: list[str]) -> None:
    code, heavy, output = _modules_after(args, study_env.root)
    assert code == 0, output[-1500:]
    assert heavy == [], f"`nas {' '.join(args)}` imported {heavy}"


def test_export_pick_chooses_among_settled_members_and_says_so(app, tmp_path: Path, monkeypatch) -> None:
    """`star` is the most accurate by 10 points (settled on the front); `left` and `right` are the fastest with
    exactly the same accuracy on other images (each a coin flip for the fast end of the front). --pick knee
    picks among settled members only, and says so; `nas pareto` shows each member's P(front)."""
    import numpy as np
    import optuna
    from optuna.trial import TrialState, create_trial

    from trainers import bitmap

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies" / "coin").mkdir(parents=True)
    url = "sqlite:///studies/coin/study.db"
    st = optuna.create_study(study_name="coin", storage=url, directions=["maximize", "maximize"])
    st.set_user_attr("objectives", [{"name": "accuracy", "direction": "maximize"},
                                    {"name": "throughput", "direction": "maximize"}])  # fmt: skip
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.85
    other = base.copy()
    other[rng.choice(np.flatnonzero(base), 60, replace=False)] = False
    other[rng.choice(np.flatnonzero(~base), 60, replace=False)] = True
    star = rng.random(2000) < 0.95
    archs = [("star", star, 1000.0, "mhsa"), ("left", base, 5000.0, "dwconv"), ("right", other, 5000.0, "ska")]
    for name, bits, tp, mixer in archs:
        args, arch_id, _ = _arch_facts(tiny_arch([_stage(16, "dwconv"), _stage(32, mixer)]))
        attrs = {"arch": args, "arch_id": arch_id, "placement": name, "full_fidelity": True,
                 "val_correct": bitmap.pack(bits), "val_set": "same", "throughput": {"median": tp}}  # fmt: skip
        st.add_trial(create_trial(state=TrialState.COMPLETE, values=[float(bits.mean()), tp], user_attrs=attrs))
    res = run(app, "export", "coin", "--pick", "knee", "--out", "k")
    assert res.exit_code == 0, res.output
    assert "picked among the 1 architectures settled on the front (P(front) >= 0.9" in res.stdout
    assert "exported trial 0 (star" in res.stdout
    rows = json.loads(run(app, "pareto", "coin", "--format", "json").stdout)
    p = {r["placement"]: r["p_front"] for r in rows}
    assert p["star"] == 1.0 and all(0.2 < v < 0.8 for k, v in p.items() if k != "star")


# ---------------------------------------------------------------------------------------------- nas bench
REPO = Path(__file__).resolve().parents[1]


def test_bench_without_the_lab_beside_the_package_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """An installed package without the repository has no benchmarks/: `nas bench` says so in one line."""
    from nas import cli

    monkeypatch.setattr(cli, "BENCHMARKS", tmp_path / "benchmarks")
    assert_user_error(CliRunner().invoke(cli.app, ["bench", "mixers"]), "mixers.py not found next to the package")
    assert_user_error(CliRunner().invoke(cli.app, ["bench", "nope"]), "unknown benchmark 'nope'")


def test_bench_puts_the_repository_on_the_path_only_when_the_lab_is_not_importable(monkeypatch) -> None:
    """The `nas` script starts outside the repository, where `benchmarks` is not importable: then (and only then)
    the repository's root goes first on sys.path, as `python -m` from the root has it."""
    import importlib.util
    import sys

    from nas import cli

    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    cli._lab_importable()  # pytest runs from the root: the lab is importable already
    assert sys.path == before
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    cli._lab_importable()
    assert sys.path == [str(REPO), *before]


@pytest.mark.slow
def test_nas_bench_runs_the_lab_as_a_module_whose_processes_import_it(tmp_path: Path) -> None:
    """`nas bench search-lab` runs benchmarks.search_lab from another working directory, and the pool process it
    spawns for a seed imports the lab by that name (a one-seed run on a small table)."""
    import os
    import subprocess
    import sys

    from tests.test_replay import _study, make_table

    table, _ = make_table(tmp_path, _study(tmp_path, "bench"))
    code = "import sys\nfrom nas.cli import main\nsys.argv = ['nas', *sys.argv[1:]]\nmain()\n"
    args = ["bench", "search-lab", "--", "run", "--table", str(table), "--seeds", "1", "--procs", "1", "--no-plot",
            "--methods", "random", "--out", str(tmp_path / "lab")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's nas, whichever one is installed
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "1 runs in" in out.stdout and json.loads((tmp_path / "lab.json").read_text())["curves"]
