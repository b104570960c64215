"""benchmarks/gpu_column.py's column writer: a build's JSON lines become the seed's column, and lines of a later
session join the committed column instead of replacing it (a target build goes on over several machines)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import gpu_column, lab_seeds

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path, archs: list[dict], acc: float) -> None:
    rows = [{"arch_id": a["arch_id"], "params": a["params"], "failed": None, "val_acc": [0.5, 0.6, acc],
             "val_loss": [1.0] * 3, "train_loss": [1.0] * 3, "seconds": [9.0] * 3, "val_correct": "10000:abc",
             "val_set": "fp", "throughput": {"median": 1.0}, "device": "cpu", "wall_time_s": 30.0}
            for a in archs]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_later_lines_join_the_committed_column(tmp_path: Path) -> None:
    archs = json.loads((REPO / "benchmarks" / "tables" / "fmnist_bench.json").read_text())["archs"][:3]
    study, table = REPO / "studies" / "fmnist_target_s10.yaml", tmp_path / "t.json"
    _lines(tmp_path / "a.jsonl", archs[:2], 0.8)
    out = gpu_column.to_column(study, tmp_path / "a.jsonl", "cpu", table)
    assert out == lab_seeds.column_path(table, 10) and len(lab_seeds.read_column(out)["archs"]) == 2
    gpu_column.to_column(study, tmp_path / "a.jsonl", "cpu", table)  # the same lines again: nothing doubles
    _lines(tmp_path / "b.jsonl", archs[1:], 0.9)  # another session: one new, one trained again
    gpu_column.to_column(study, tmp_path / "b.jsonl", "gpu", table)
    col = lab_seeds.read_column(out)
    assert sorted(col["archs"]) == sorted(a["arch_id"] for a in archs) and col["provenance"]["done"] == 3
    assert (
        col["archs"][archs[0]["arch_id"]]["val_acc"][-1] == 0.8
        and col["archs"][archs[2]["arch_id"]]["val_acc"][-1] == 0.9
    )
    assert [s["device"] for s in col["provenance"]["sessions"]] == ["cpu", "gpu"]
    assert col["provenance"]["devices"] == ["cpu", "gpu"] and col["provenance"]["of"] == 216
