"""The lab table's extra training seeds (table v2): one *seed column* per build study, kept in git while it grows.

Seed 0 of every architecture is the table itself (benchmarks/tables/fmnist_bench.json); seeds 1 and 2 are built by
the engine as the grid studies studies/fmnist_bench_build_s1.yaml / _s2.yaml (``train.seed: 1`` / ``2``; same
training subset, same 3,000 validation images, same 8 epochs). A build takes hours on a CPU and may be cut by the
end of a session, so what it has finished is written to a small *column* file
(benchmarks/tables/fmnist_bench.seed<k>.json: per architecture its curves and which validation images its final
model got right, plus provenance: device, dates, commit, how many are done), and a study can be **resumed on
another machine from that file**: ``import_column`` stores the finished architectures in a new study database as
COMPLETE trials under the study's training key, so the grid driver copies them instead of training them again.

    python -m benchmarks.search_lab column --study studies/fmnist_bench_build_s1.yaml    # study -> column (partial ok)
    python -m benchmarks.search_lab resume --study studies/fmnist_bench_build_s1.yaml    # column -> new study db
    nas search studies/fmnist_bench_build_s1.yaml --max-concurrent 2                     # trains only the rest
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COLUMN_FORMAT = "mixer-nas-seed-column/1"
IMPORTED = "nas:imported_from"  # system attribute of a trial a column put in a study (not trained there)
ROOT = Path(__file__).resolve().parents[1]


def column_path(table: Path, seed: int) -> Path:
    """Where seed ``seed``'s column of ``table`` lives (beside it)."""
    return table.with_name(f"{table.stem}.seed{seed}.json")


def export_column(study_file: Path, table: Path) -> Path:
    """Write the finished architectures of a seed build study (partial builds too) to its column file."""
    import optuna

    from nas import layout
    from nas.engine.config import read_study_file
    from nas.engine.samplers import grid_id_of, grid_space_of
    from nas.study_record import StudyRecord
    from nas.trial_record import TrialRecord

    cfg, space = read_study_file(study_file)
    study = optuna.load_study(study_name=cfg.name, storage=layout.open_storage(cfg.storage_url()))
    done = [t for t in study.trials if t.state.name == "COMPLETE" and TrialRecord.of(t).full_fidelity]
    archs: dict[str, Any] = {}
    for t in done:
        a = TrialRecord.of(t)
        if a.arch_id in archs:
            continue
        rows = a.curve_rows
        archs[a.arch_id] = {
            "params": dict(t.params),
            "grid_id": grid_id_of(t),
            "val_acc": [round(r["val_acc"], 5) for r in rows],
            "val_loss": [round(r["val_loss"], 5) for r in rows],
            "train_loss": [round(r["train_loss"], 5) for r in rows],
            "seconds": [round(r["seconds"], 3) for r in rows],
            "val_correct": a.val_correct,
            "throughput": a.throughput,
            "device": a.device,
            "wall_time_s": a.wall_time_s,
        }
    expected = 1
    for values in space.param_grid().values():
        expected *= len(values)
    own = [t for t in done if not TrialRecord.of(t).is_copy and IMPORTED not in t.system_attrs]  # trained here
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out = column_path(table, cfg.train.seed)
    previous = _provenance_of(out)
    started = min(t.datetime_start for t in own).isoformat() if own else None
    grid = next((g for t in done if (g := grid_space_of(t)) is not None), None)
    provenance = {
        "study_file": study_file.name,
        "train_seed": cfg.train.seed,
        "val_set": StudyRecord.of(study).val_set or _val_set_of(done),
        "devices": sorted({str(v["device"]) for v in archs.values()}),
        "machine": "2-core shared CPU; trials trained one or two at a time, one thread each",
        "versions": StudyRecord.of(study).versions,
        "sessions": [*(s for s in previous.get("sessions", []) if s.get("started") != started), {
            "started": started,
            "built": f"{started[:16]} to {max(t.datetime_complete for t in own):%Y-%m-%dT%H:%M} UTC" if own else "none",
            "trained_here": len(own),
            "commit": commit.stdout.strip(),
        }],
        "grid_search_space": grid,
        "done": len(archs),  # architectures
        "of": expected,  # grid points (the lab's space: one architecture each)
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }  # fmt: skip
    write_column(out, provenance, archs)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB): seed {cfg.train.seed}, {len(archs)} of {expected} done")
    return out


def write_column(out: Path, provenance: dict[str, Any], archs: dict[str, Any]) -> None:
    """The one writer of a column file (``read_column`` reads it): whichever machine or tool built the seed."""
    out.write_text(json.dumps({"format": COLUMN_FORMAT, "provenance": provenance, "archs": archs},
                              separators=(",", ":")) + "\n")  # fmt: skip


def _provenance_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["provenance"] if path.is_file() else {}


def _val_set_of(trials: list[Any]) -> dict[str, Any] | None:
    from nas.trial_record import TrialRecord

    for t in trials:
        a = TrialRecord.of(t)
        if a.val_set and a.val_correct:
            return {"images": int(a.val_correct.split(":", 1)[0]), "fingerprint": a.val_set}
    return None


def read_column(path: Path) -> dict[str, Any]:
    """A column file, checked.

    Raises:
        SystemExit: not a column file of this format (one line).
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: not a seed column ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != COLUMN_FORMAT:
        raise SystemExit(f"error: {path}: not a seed column of format {COLUMN_FORMAT!r}")
    return raw


def import_column(study_file: Path, table: Path) -> int:
    """Store a column's finished architectures in the (new) study of ``study_file`` as COMPLETE trials, so the
    grid driver reuses them; returns how many. Refuses a study that already has trials (resume that one instead).
    """
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import FixedTrial, TrialState, create_trial

    from nas import layout
    from nas.cost import arch_cost
    from nas.engine.config import read_study_file
    from nas.engine.samplers import grid_point_attrs
    from nas.study_record import write
    from nas.trial_record import encode

    cfg, space = read_study_file(study_file)
    col = read_column(column_path(table, cfg.train.seed))
    storage = layout.create_storage(cfg.storage_url())
    study = optuna.create_study(study_name=cfg.name, storage=storage, directions=cfg.directions, load_if_exists=True)
    if study.trials:
        raise SystemExit(f"error: study {cfg.name} already has {len(study.trials)} trials: resume it with nas search")
    grid = space.param_grid()
    train_key = cfg.train_key()
    val_set = col["provenance"].get("val_set") or {}
    write(study, val_set=val_set)
    for arch_id, a in col["archs"].items():
        arch = space.sample(FixedTrial(a["params"]).suggest_categorical, 10)
        assert arch.arch_id == arch_id, f"column {arch_id} rebuilt as {arch.arch_id}: the space changed"
        args, cost = arch.to_model_args(), arch_cost(arch.to_model_args())
        curve = [dict(epoch=i + 1, val_acc=v, val_loss=a["val_loss"][i], train_loss=a["train_loss"][i],
                      seconds=a["seconds"][i], images_per_s=0.0) for i, v in enumerate(a["val_acc"])]  # fmt: skip
        attrs = encode(dict(arch=args, arch_id=arch_id, placement=arch.placement(), train_key=train_key,
                            params=cost.params, flops=cost.flops, curve=curve, fidelity=len(curve),
                            full_fidelity=True, throughput=a["throughput"], device=a["device"],
                            wall_time_s=a["wall_time_s"], val_correct=a["val_correct"],
                            val_set=val_set.get("fingerprint")))  # fmt: skip
        dists = {k: CategoricalDistribution(grid[k]) for k in a["params"]}
        values = [a["val_acc"][-1], float(a["throughput"]["median"])]
        visited = {**grid_point_attrs(a["grid_id"], col["provenance"]["grid_search_space"]),  # the grid skips it
                   IMPORTED: column_path(table, cfg.train.seed).name}  # fmt: skip
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=a["params"], distributions=dists,
                                     values=values, user_attrs=attrs, system_attrs=visited))  # fmt: skip
    print(
        f"{cfg.name}: {len(col['archs'])} finished architectures imported from the column; "
        f"now run `nas search {study_file}` to train the other {col['provenance']['of'] - len(col['archs'])}"
    )
    return len(col["archs"])


def add_columns(table_path: Path, out: Path | None = None) -> Any:
    """Table v2: the table (seed 0) with every complete seed column beside it (each architecture's other seeds in
    ``extra_seeds``), the columns' provenance under ``provenance.seeds``; written to ``out`` (default: in place).

    Raises:
        SystemExit: no column, a column that is not complete, or columns on different validation images.
    """
    import dataclasses

    from nas.engine.replay import SeedCurve, Table

    table = Table.load(table_path)
    paths = sorted(table_path.parent.glob(f"{table_path.stem}.seed*.json"))
    if not paths:
        raise SystemExit(f"error: no seed column beside {table_path} (build one: see benchmarks/lab_seeds.py)")
    cols = [read_column(p) for p in paths]
    for p, c in zip(paths, cols, strict=True):
        missing = sorted(set(table.archs) - set(c["archs"]))
        if missing:
            build = f"nas search studies/{c['provenance']['study_file']}"
            raise SystemExit(f"error: {p}: {len(c['archs'])} of the table's {len(table.archs)} architectures are "
                             f"done; finish the build ({build}) first")  # fmt: skip
    val_sets = {json.dumps(c["provenance"].get("val_set"), sort_keys=True) for c in cols}
    if len(val_sets) != 1:
        raise SystemExit(f"error: the seed columns {[p.name for p in paths]} were evaluated on different images")
    fields = [f.name for f in dataclasses.fields(SeedCurve)]
    archs = {}
    for arch_id, a in table.archs.items():
        extra = [{"seed": c["provenance"]["train_seed"], **{k: c["archs"][arch_id].get(k) for k in fields[1:]}}
                 for c in cols]  # fmt: skip
        archs[arch_id] = dataclasses.replace(a, extra_seeds=extra)
    seed0 = {k: v for k, v in table.provenance.items() if k != "seeds"}
    provenance = {**seed0, "val_set": cols[0]["provenance"].get("val_set"),
                  "seeds": [{"seed": 0, **seed0},
                            *({"seed": c["provenance"]["train_seed"], **c["provenance"]} for c in cols)]}  # fmt: skip
    v2 = dataclasses.replace(table, archs=archs, provenance=provenance)
    out = out or table_path
    out.write_text(json.dumps(v2.to_json(), separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB): {v2.n_seeds} training seeds per architecture")
    return v2
