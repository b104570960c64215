"""The lab's truth (issue 28): a replayed search never sees the training seeds its score is computed from, the
held-out seed rotates with the search seed, the ceiling is the front of everything visible, and the target truth
comes from columns no replay reads."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import lab_runs, lab_truth, search_lab
from nas.engine.replay import Table
from tests.test_replay import _study, make_table

REPO = Path(__file__).resolve().parents[1]

HELD_SHIFT = 0.0437  # each seed's curve is seed 0's plus a per-seed shift: a value tells which seed it came from


def _marked(tmp_path: Path) -> tuple[Path, Table]:
    """A three-seed table whose seed k's accuracies are seed 0's + k * HELD_SHIFT (so every value names its seed)."""
    path, table = make_table(tmp_path, _study(tmp_path, "truth"), seeds=3)
    archs = {}
    for arch_id, a in table.archs.items():
        extra = [{**s, "val_acc": [round(v + k * HELD_SHIFT, 4) for v in a.val_acc], "val_correct": None}
                 for k, s in enumerate(a.extra_seeds, 1)]  # fmt: skip
        archs[arch_id] = dataclasses.replace(a, extra_seeds=extra)
    marked = dataclasses.replace(table, archs=archs)
    path.write_text(json.dumps(marked.to_json()))
    return path, Table.load(path)


def _seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, float]]:
    """Every epoch result any replayed search is shown: (architecture, epoch, accuracy)."""
    seen: list[tuple[str, int, float]] = []
    original = Table.report

    def report(self: Table, a, epoch, cfg, img_size, curve=None, throughput=None):
        r = original(self, a, epoch, cfg, img_size, curve, throughput)
        seen.append((a.arch_id, epoch, r.val_acc))
        return r

    monkeypatch.setattr(Table, "report", report)
    return seen


def _seed_of(table: Table, arch_id: str, epoch: int, acc: float) -> int:
    matches = [k for k, c in enumerate(table.archs[arch_id].curves()) if c.val_acc[epoch - 1] == pytest.approx(acc)]
    assert len(matches) == 1, (arch_id, epoch, acc)
    return matches[0]


@pytest.mark.parametrize("run_seed", [0, 1, 2, 4])
def test_a_replayed_search_with_replicates_never_sees_its_held_out_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_seed: int
) -> None:
    _, table = _marked(tmp_path)
    seen = _seen(monkeypatch)
    race = next(m for m in search_lab.methods() if m.name == "ours-race")  # replicates: what would see every seed
    truth = lab_truth.make("heldout", table, run_seed)
    curve = lab_runs.run_engine(
        table, search_lab.base_config(table), race, run_seed, lab_runs.RunSettings(3, 400), truth
    )
    held = run_seed % 3
    assert truth.visible == tuple(k for k in range(3) if k != held)
    assert truth.acc == {a: t.curves()[held].val_acc[-1] for a, t in table.archs.items()}
    assert curve.points and len(seen) > 20
    shown = {_seed_of(table, a, e, v) for a, e, v in seen}
    assert held not in shown
    assert shown == set(truth.visible)  # its replicates did see the other visible seed


def test_a_syne_tune_search_never_sees_its_held_out_seed(tmp_path: Path) -> None:
    _, table = _marked(tmp_path)
    truth = lab_truth.make("heldout", table, 1)
    bb, _ = lab_runs._blackbox(truth.search_table(table), 1)
    errors = {round(1 - float(x), 4) for x in bb.objectives_evaluations[..., 0].ravel()}
    visible = {round(v, 4) for a in table.archs.values() for k in truth.visible for v in a.curves()[k].val_acc}
    held = {round(v, 4) for a in table.archs.values() for v in a.curves()[1].val_acc}
    assert errors <= visible and not errors & held


def test_with_seeds_keeps_the_chosen_curves_their_images_and_the_table_s_cost(tmp_path: Path) -> None:
    _, table = make_table(tmp_path, _study(tmp_path, "view"), seeds=3)
    a = next(iter(table.archs.values()))
    bits = dataclasses.replace(a, extra_seeds=[{**s, "val_correct": f"bits{k}"} for k, s in enumerate(a.extra_seeds)])
    table.archs[a.arch_id] = bits
    view = table.with_seeds([2, 0])
    v = view.archs[a.arch_id]
    assert view.n_seeds == 2 and [c.val_acc for c in v.curves()] == [bits.curves()[2].val_acc, bits.val_acc]
    assert v.curves()[0].val_correct == "bits1" and v.epoch_seconds == bits.epoch_seconds
    assert view.source.endswith("#seeds=2,0")
    for bad in ([], [0, 0], [3]):
        with pytest.raises(ValueError, match="distinct positions"):
            table.with_seeds(bad)


def test_the_ceiling_is_the_front_of_every_architecture_at_its_visible_mean(tmp_path: Path) -> None:
    """By hand on three architectures, seed 0 held out: b looks better than c on seeds 1-2 but is worse on seed 0."""
    from nas.engine.replay import TableArch

    def arch(name: str, finals: list[float], tp: float) -> TableArch:
        extra = [{"seed": k, "val_acc": [f], "val_loss": [0.0], "train_loss": [0.0], "seconds": [1.0]}
                 for k, f in enumerate(finals[1:], 1)]  # fmt: skip
        return TableArch(name, {"x": name}, name, 1, 1, {"median": tp}, [finals[0]], [0.0], [0.0], [1.0], extra)

    archs = [arch("a", [0.90, 0.90, 0.90], 100), arch("b", [0.70, 0.85, 0.85], 200), arch("c", [0.80, 0.60, 0.60],
             200), arch("d", [0.60, 0.60, 0.60], 50)]  # fmt: skip
    table = Table("hand", {}, "", {}, 10, 1, {x.arch_id: x for x in archs}, source="hand")
    t = lab_truth.heldout(table, 3)  # 3 mod 3 = seed position 0
    assert t.front(table) == ["a", "c"]  # at seed 0: c (0.80, 200) beats b (0.70, 200)
    # visible means: b 0.85 > c 0.60 at the same throughput, so the best a search can report is {a, b}
    assert t.ceiling(table) == pytest.approx(t.hv(table, ["a", "b"]) / t.hv(table, ["a", "b", "c", "d"]))
    assert t.ceiling(table) < 1
    # a search that reports {a, b} scores 1 relative to the ceiling, and the same share of the front as the ceiling
    f = lab_runs.ReportedFront(table, t)
    f.add("a", 0.9)
    assert f.add("b", 0.85) == pytest.approx(1.0)
    g = lab_runs.ReportedFront(table, lab_truth.make("heldout", table, 3, relative="front"))
    g.add("a", 0.9)
    assert g.add("b", 0.85) == pytest.approx(t.ceiling(table))


def _column(path: Path, seed: int, accs: dict[str, float], of: int) -> None:
    archs = {a: {"val_acc": [v]} for a, v in accs.items()}
    path.write_text(json.dumps({"format": "mixer-nas-seed-column/1", "archs": archs,
                                "provenance": {"train_seed": seed, "of": of}}))  # fmt: skip


def test_the_target_truth_is_the_mean_of_complete_target_columns_and_refuses_a_partial_one(tmp_path: Path) -> None:
    _, table = make_table(tmp_path, _study(tmp_path, "target"), seeds=3)
    ids = list(table.archs)
    where = tmp_path / "tables" / "t.json"
    where.parent.mkdir()
    with pytest.raises(SystemExit, match="no target column"):
        lab_truth.target(table, path=where)
    _column(where.with_name("t.seed10.json"), 10, {a: 0.5 + i / 1000 for i, a in enumerate(ids)}, len(ids))
    _column(where.with_name("t.seed11.json"), 11, {a: 0.6 for a in ids[:-1]}, len(ids))
    with pytest.raises(SystemExit, match=r"incomplete \(t.seed10.json \d+, t.seed11.json \d+ of \d+\)"):
        lab_truth.target(table, path=where)
    _column(where.with_name("t.seed11.json"), 11, {a: 0.6 for a in ids}, len(ids))
    t = lab_truth.target(table, path=where)
    assert t.acc[ids[3]] == pytest.approx((0.503 + 0.6) / 2) and t.visible == (0, 1, 2)
    assert t.search_table(table) is table  # the search replays the proxy seeds; the target is never in a table


def test_the_lab_runs_on_held_out_search_seeds_and_counts_unreached_seeds(tmp_path: Path) -> None:
    import subprocess

    path, _ = _marked(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_lab", "run", "--table", str(path), "--seeds", "2",
         "--seed-start", "100", "--truth", "heldout", "--procs", "1", "--no-plot", "--out", str(tmp_path / "ho"),
         "--methods", "tpe", "ours-race"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "ho.json").read_text())
    assert {c["seed"] for c in report["curves"]} == {100, 101} and report["truth"] == "heldout"
    assert report["relative"] == "ceiling" and len(report["ceilings"]) == 3
    assert "restricted means, every seed" in out.stdout and "| method | 90 %: restricted mean |" in out.stdout
    assert "seed position 1 held out" in out.stderr


def test_summary_charges_an_unreached_seed_the_horizon() -> None:
    c = [lab_runs.Curve("m", 0, [(1, 100.0, 0.96)]), lab_runs.Curve("m", 1, [(1, 300.0, 0.5)])]
    row = search_lab.summarize(c, horizon=1000.0)["m"]["0.95"]
    assert row["reached"] == 1 and row["seconds"][0] == 100.0
    assert row["restricted"][0] == pytest.approx(550.0) and row["median"] == float("inf")


def test_the_transfer_report_finds_a_planted_target_effect_and_reads_partial_columns(tmp_path: Path) -> None:
    """At the target, architectures with one planted choice are 5 points better (2 target seeds, 0.05 pt of seed
    noise); the proxy knows nothing of it. The report shows the target's own ceiling τ, the planted effect beyond the
    noise at the target only, and which proxy-front members are on the target front; on a column that has fewer
    than five architectures so far, it says so instead."""
    import random

    from benchmarks import lab_transfer

    _, table = make_table(tmp_path, _study(tmp_path, "transfer"), seeds=3)
    ids = list(table.archs)
    key = sorted(table.archs[ids[0]].params)[0]
    value = table.archs[ids[0]].params[key]
    rng = random.Random(3)
    base = {a: rng.uniform(0.70, 0.71) for a in ids}
    where = tmp_path / "tables" / "t.json"
    where.parent.mkdir()
    for seed in (10, 11):
        accs = {a: base[a] + 0.05 * (table.archs[a].params[key] == value) + rng.gauss(0, 0.0005) for a in ids}
        _column(where.with_name(f"t.seed{seed}.json"), seed, accs, len(ids))
    report = lab_transfer.transfer(Path(table.source), where, resamples=200)
    ceiling = next(line for line in report.splitlines() if "(the target's ceiling)" in line)
    assert ceiling.startswith("| target seed 10 vs target seed 11") and float(ceiling.split(" | ")[1][:4]) > 0.8
    row = next(line for line in report.splitlines() if line.startswith(f"| {key} = {value} |"))
    est, lo, _ = (float(x) for x in re.findall(r"[+-]\d+\.\d+", row.split(" | ")[3]))
    share = sum(table.archs[a].params[key] == value for a in ids) / len(ids)
    assert est == pytest.approx(5 * (1 - share), abs=0.3) and lo > 0  # with the choice minus all, in points
    assert "Proxy mean front:" in report and "P(target front)" in report
    _column(where.with_name("t.seed11.json"), 11, {a: 0.6 for a in ids[:3]}, len(ids))
    assert "only 3 architectures" in lab_transfer.transfer(Path(table.source), where)


def test_the_default_truth_is_the_target_once_complete_else_held_out_seeds(tmp_path: Path) -> None:
    _, table = make_table(tmp_path, _study(tmp_path, "default"), seeds=3)
    (tmp_path / "one").mkdir()
    _, one = make_table(tmp_path / "one", _study(tmp_path, "default1"))
    where = tmp_path / "tables" / "t.json"
    where.parent.mkdir()
    assert lab_truth.default_kind(table, where) == "heldout" and lab_truth.default_kind(one, where) == "proxy"
    ids = list(table.archs)
    _column(where.with_name("t.seed10.json"), 10, {a: 0.5 for a in ids[:-1]}, len(ids))
    assert lab_truth.default_kind(table, where) == "heldout"  # a partial target column is no truth yet
    _column(where.with_name("t.seed10.json"), 10, {a: 0.5 for a in ids}, len(ids))
    assert lab_truth.default_kind(table, where) == "target"


def test_ceilings_compare_the_visible_mean_with_one_visible_seed(tmp_path: Path) -> None:
    """Identical seeds: knowing one visible seed or their mean gives the whole held-out front (1.000 both); with
    seed 2 shifted so it reorders the front, one visible seed per architecture (mixing seeds) loses some of it."""
    _, marked = _marked(tmp_path)
    row0 = lab_truth.ceilings(marked, draws=20).splitlines()[2].split(" | ")
    assert row0[1] == "1.000" and float(row0[2].split()[0]) < 0.999  # the mean of 1 and 2 is seed 0 + a constant
    table = marked
    same = {a: dataclasses.replace(t, extra_seeds=[{**s, "val_acc": t.val_acc} for s in t.extra_seeds])
            for a, t in table.archs.items()}  # fmt: skip
    table = dataclasses.replace(table, archs=same)
    rows = [r for r in lab_truth.ceilings(table, draws=5).splitlines() if r[:4] in ("| 0 ", "| 1 ", "| 2 ")]
    assert len(rows) == 3 and all(r.split(" | ")[1:] == ["1.000", "1.000 (1.000–1.000) |"] for r in rows)
