"""benchmarks/gpu_suite.py cannot rot: its `--device cpu --tiny` mode runs every section's code path (the same code
the GPU run uses, at tiny sizes) and writes both report files. The GPU figures themselves are in RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_cpu_tiny_run_covers_every_section_and_writes_both_reports(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_suite",
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    results = report["results"]
    assert set(results) == {"env", "mixers", "model", "trainer", "repeatability", "oom", "worker"}
    assert not [name for name, r in results.items() if "error" in r]
    assert {r["mixer"] for r in results["mixers"]["rows"]} == {
        "dwconv",
        "mhsa",
        "ska",
        "cska",
        "manifold_key",
        "key_only",
    }
    assert "out of memory" in results["oom"]["oom_reason"] and results["oom"]["next"]["failed"] is None
    assert set(results["worker"]["concurrency"]) == {"1", "2"} and results["worker"]["front"]
    assert all(t["failed"] is None and 0 <= t["val_acc"] <= 1 for t in results["worker"]["trials"])
    names = {t["name"] for t in report["targets"]}
    assert any("trials per GPU-hour" in n for n in names) and any("SKA" in n for n in names)
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| target | value | goal | met |" in md and "trials/GPU-hour" in md
