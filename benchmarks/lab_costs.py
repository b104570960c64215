"""The fixed per-trial costs the search lab charges (issue 30), measured from a real study on this machine.

A replayed trial used to cost only its epochs. A real one also pays its start, the model build and, for an
architecture not measured before, the throughput measurement, during which it holds the device and the other trials
on it stand still (nas.worktime). This reads those phase times from a real run of the lab's own study settings
(``studies/fmnist_bench_costs.yaml``: the table's space, data, batch and throughput settings, one epoch per trial),
turns them into a cost model (``nas.worktime.fixed_cost_model``: medians), and writes it into the table as
``fixed_costs`` with its provenance, which ``ReplayExecutor`` and Syne Tune's simulator in the lab then charge.

The table's epoch seconds were measured on another day than the fixed costs, and this shared CPU's speed moves
from day to day; the costs are therefore scaled by the median ratio of the table's epoch seconds to the same
architectures' epoch seconds in the cost study (both on one CPU thread), so a fixed cost stays the same share of an
epoch it was when measured. The first trial of each worker also pays its process start and the data (``first
extra``): every method of a lab run has the same workers, so it is reported but not charged.

    python -m benchmarks.lab_costs                      # the study above, into table v2
    python -m benchmarks.lab_costs --study NAME --table benchmarks/tables/X.json [--storage URL] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "benchmarks" / "tables" / "fmnist_bench_v2.json"
STUDY = "fmnist_bench_costs"


def cost_model(study: Any, table: Any) -> dict[str, Any]:
    """The table's ``fixed_costs`` from the study's trials (see the module docstring)."""
    from nas import worktime
    from nas.study_record import StudyRecord
    from nas.trial_record import TrialRecord

    rows, ratios, devices = [], [], set()
    for t in study.get_trials(deepcopy=False):
        a = TrialRecord.of(t)
        if a.is_copy or not a.phases or "wall_s" not in a.phases or a.arch_id not in table.archs:
            continue
        rows.append(a.phases)
        devices.add(a.device)
        if a.phases.get("epochs_s") and a.fidelity:
            ratios.append(table.archs[a.arch_id].epoch_seconds / (a.phases["epochs_s"] / a.fidelity))
    if len(rows) < 4:
        raise SystemExit(f"error: study '{study.study_name}' has {len(rows)} trials with phase times (need 4+); run "
                         "nas search studies/fmnist_bench_costs.yaml first")  # fmt: skip
    workers = int(StudyRecord.of(study).section("budget").get("max_concurrent") or 1)
    raw = worktime.fixed_cost_model(rows, workers_per_device=workers)
    scale = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [scale, scale, scale]
    w = worktime.of_phases(rows)
    return {
        "trial_s": round(raw["trial_s"] * scale, 4),
        "measure_s": round(raw["measure_s"] * scale, 4),
        "first_extra_s": round(raw["first_extra_s"] * scale, 4),
        "provenance": {
            "study": study.study_name,
            "study_file": f"studies/{STUDY}.yaml" if study.study_name == STUDY else None,
            "device": sorted(d for d in devices if d),
            "workers_per_device": workers,
            "trials": len(rows),
            "measured": time.strftime(
                "%Y-%m-%d %H:%M UTC", time.gmtime(study.trials[-1].datetime_complete.timestamp())
            ),
            "commit": _commit(),
            "unscaled_s": raw,
            "epoch_scale": {
                "median": round(scale, 4),
                "iqr": [round(q[0], 4), round(q[2], 4)],
                "why": "table epoch seconds / the same architectures' epoch seconds in the cost study",
            },
            "fixed_share_of_worker_time": round(w.fixed_share or 0.0, 4),
        },
    }


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=STUDY)
    ap.add_argument("--storage", default=None, help="the study's storage URL (default: studies/<study>/study.db)")
    ap.add_argument("--table", default=str(TABLE))
    ap.add_argument("--dry-run", action="store_true", help="print the model, write nothing")
    args = ap.parse_args(argv)
    from nas import results
    from nas.engine.replay import Table

    table = Table.load(args.table)
    fc = cost_model(results.open_study(args.study, args.storage), table)
    p = fc["provenance"]
    dev = ", ".join(p["device"])
    print(f"fixed costs from {p['trials']} trials of '{p['study']}' ({dev}, {p['workers_per_device']} workers): "
          f"every trial {fc['trial_s']:.3f} s, a measurement {fc['measure_s']:.3f} s (incl. the other "
          f"workers' stall), a worker's first trial +{fc['first_extra_s']:.3f} s (not charged); scaled by "
          f"{p['epoch_scale']['median']:.3f} (IQR {p['epoch_scale']['iqr'][0]:.3f}–{p['epoch_scale']['iqr'][1]:.3f}) "
          f"to the table's epoch seconds; fixed share of that run's worker time "
          f"{100 * p['fixed_share_of_worker_time']:.1f} %")  # fmt: skip
    if not args.dry_run:
        raw = json.loads(Path(args.table).read_text(encoding="utf-8"))
        raw["fixed_costs"] = fc
        Path(args.table).write_text(json.dumps(raw, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"wrote fixed_costs into {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
