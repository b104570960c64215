"""End-to-end trust tools on a tiny real study (real Ray, SQLite, Fashion-MNIST slices): ``nas validate`` killed
mid-way resumes without retraining what it had finished; ``nas status`` / ``nas report`` / ``nas export
--validated`` read the results. ``nas calibrate`` runs its sub-studies through the same engine entry point
(``run_config``); its ladder, ceiling and recommendation are checked number by number through the replay executor on
the lab's tables (tests/test_trust_replay.py)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.engine_fixtures import write_study
from tests.test_engine_ray import ENV, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray]
NAS = [sys.executable, "-m", "nas.cli"]


def _nas(tmp_path: Path, *args: str, timeout: int = 500) -> str:
    out = subprocess.run([*NAS, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _trained_once(study: optuna.Study) -> collections.Counter:
    """(arch_id, seed replicate) -> trainings: each seed of each architecture trained once."""
    trained = collections.Counter(
        (t.user_attrs["arch_id"], t.user_attrs.get("replicate") or 0)
        for t in study.trials
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs
    )
    assert all(n == 1 for n in trained.values()), f"an architecture was trained twice with one seed: {trained}"
    return trained


def test_validate_resumes_after_a_kill_and_the_reading_commands_report_it(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        "trust",
        budget={"n_trials": 5, "max_concurrent": 1},
        pruner={"name": "none"},
        fidelity={"rungs": []},
        train={"epochs": 1, "max_batches_per_epoch": 8},
    )
    _nas(tmp_path, "search", str(path), "--quiet")
    db = tmp_path / "studies" / "trust" / "study.db"
    url = f"sqlite:///{db}"
    main = optuna.load_study(study_name="trust", storage=url)
    distinct = {t.user_attrs["arch_id"] for t in main.trials if t.state == TrialState.COMPLETE}
    assert len(distinct) >= 3, "the tiny space has 12 architectures: five random draws give at least three"

    cmd = [*NAS, "validate", "trust", "--top", "2", "--random", "1", "--epochs", "4", "--plain"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )

    def one_done_one_running() -> bool:
        try:
            st = optuna.load_study(study_name="trust.validate", storage=url)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):
            return False
        states = [t.state for t in st.trials]
        return TrialState.COMPLETE in states and TrialState.RUNNING in states

    try:
        _wait_for(one_done_one_running, 400, "a COMPLETE and a RUNNING validation trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    sub = optuna.load_study(study_name="trust.validate", storage=url)
    finished = {
        (t.user_attrs["arch_id"], t.user_attrs.get("replicate") or 0): t.values
        for t in sub.trials
        if t.state == TrialState.COMPLETE
    }
    assert "validation" not in optuna.load_study(study_name="trust", storage=url).user_attrs

    out = _nas(tmp_path, "validate", "trust", "--top", "2", "--random", "1", "--epochs", "4", "--plain")
    assert "Kendall tau proxy vs validated" in out
    sub = optuna.load_study(study_name="trust.validate", storage=url)
    trained = _trained_once(sub)
    for key, values in finished.items():  # what the killed run finished is kept, not retrained
        assert trained[key] == 1
        same = [t for t in sub.trials if (t.user_attrs.get("arch_id"), t.user_attrs.get("replicate") or 0) == key]
        assert [t.values for t in same if t.values] == [values]
    assert not [t for t in sub.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = [t for t in sub.trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and "interrupted" in killed[0].user_attrs["failure"]
    assert len(sub.trials) == 7, "three architectures x two seeds, one interrupted attempt: nothing queued twice"
    sub_dir = (tmp_path / "studies" / "trust" / "trust.validate").resolve()  # the sub-study's files: in its parent's
    for t in sub.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["fidelity"] == 4 and len(t.user_attrs["curve"]) == 4
            if "reused_from" not in t.user_attrs:
                assert t.user_attrs["checkpoint"].startswith(f"file://{sub_dir}/ray/"), t.user_attrs["checkpoint"]
    assert "trials 7 (complete 6, fail 1)" in _nas(tmp_path, "status", "trust.validate")  # found by name alone
    v = optuna.load_study(study_name="trust", storage=url).user_attrs["validation"]
    assert len(v["pairs"]) == 3 and v["budget"]["epochs"] == 4 and v["proxy_budget"]["epochs"] == 1
    assert v["tau"] is None or -1 <= v["tau"] <= 1
    assert v["seeds"] == 2 and all(p["seeds"] == 2 for p in v["pairs"])  # the validated accuracy: a 2-seed mean
    for p in v["pairs"]:
        assert p["validated_acc"] == pytest.approx(sum(p["seed_accs"]) / 2) and 0 <= p["p_validated_front"] <= 1
    assert v["survivors"] or v["lost"], "the validated architectures include proxy-front members"
    s = v["survival"]  # the 90 % range of the survivor count; its mean may lie outside a narrow range
    assert 0 <= s["lo"] <= s["hi"] <= s["of"] and 0 <= s["mean"] <= s["of"]
    for p in v["pairs"]:
        arch = main.trials[p["trial"]].user_attrs["arch_id"]
        assert trained[(arch, 0)] == trained[(arch, 1)] == 1

    status = _nas(tmp_path, "status", "trust")
    assert "proxy-front members stay on the validated front" in status and "2 seeds each" in status
    assert "wrote" in _nas(tmp_path, "report", "trust")
    text = (tmp_path / "studies" / "trust" / "report.md").read_text()
    assert "## How far to trust it" in text and "proxy-front members stay on the validated front" in text
    out = _nas(tmp_path, "export", "trust", "--validated", "--pick", "max-accuracy", "--weights", "--out", "exported")
    best = max((p for p in v["pairs"]), key=lambda p: p["validated_acc"])
    assert f"exported trial {best['validated_trial']} " in out  # a trial of the validation sub-study, its weights
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["architecture"] == "mixerformer"
