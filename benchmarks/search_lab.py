"""The search-quality lab: our search against Optuna, Ray Tune and Syne Tune on a tabulated benchmark of our space.

    python -m benchmarks.search_lab table      # the built study (studies/fmnist_bench_build.yaml) -> the table
    python -m benchmarks.search_lab column --study studies/fmnist_bench_build_s1.yaml   # a seed build -> its column
    python -m benchmarks.search_lab resume --study studies/fmnist_bench_build_s1.yaml   # its column -> a new study
    python -m benchmarks.search_lab seeds      # the table + every finished seed column -> table v2 (_v2.json)
    python -m benchmarks.search_lab run        # every method x 20 seeds, replayed: report + plot (14 min on 2 CPUs)
    python -m benchmarks.search_lab fidelity   # how well an early epoch ranks like the last one
    python -m benchmarks.search_lab transfer   # proxy vs the target-scale columns: τ, fronts, per-stage effects
    python -m benchmarks.search_lab run --oracle --methods tpe ours-tpe oracle-tpe   # + ours with a perfect signal

``run`` replays every method with every seed against table v2, ``benchmarks/tables/fmnist_bench_v2.json`` (three
training seeds per architecture: each trial sees one seed's curve; benchmarks/lab_runs.py says how one run is
simulated, how compute is counted and how the front a search reports is scored), then prints the Markdown table of
RESULTS.md and writes ``benchmarks/search_lab.html`` + ``.png`` (normalised hypervolume vs worker-seconds, mean and
95 % band per method) and ``benchmarks/search_lab.json`` (every curve). Figures: compute until the front the search
reports reaches 90 / 95 / 99 % of the mean-truth front's hypervolume, mean over the seeds that reached it with a
95 % bootstrap interval, and ratios against the baselines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import lab_plot, lab_runs, lab_truth
from benchmarks.lab_runs import Curve, Method, RunSettings
from nas.engine.replay import Table, TableArch, training_of

ROOT = Path(__file__).resolve().parents[1]
SEED0 = ROOT / "benchmarks" / "tables" / "fmnist_bench.json"  # the built table: seed 0 (format 1); columns beside it
TABLE = SEED0.with_name("fmnist_bench_v2.json")  # table v2: seed 0 + every seed column (``seeds``); what ``run`` reads
BUILD = ROOT / "studies" / "fmnist_bench_build.yaml"
SHARES = (0.90, 0.95, 0.99)
# Ours: what the shipped study files use (the lab chose it, RESULTS.md "Search-quality lab"): rungs at 1/4 and 1/2 of
# the training epochs, keep the better half, and a rung prunes only once 8 trials have reached it.
OURS = {"name": "pareto", "eta": 2, "min_trials": 8}
OURS_RUNGS = (2, 4)
# Racing (issue 17): ours with the product's default ``replicates:`` block; against it the naive way to beat seed
# noise, every architecture trained with three seeds (TPE, no pruning, as NAS-Bench-101/201 tabulate)
RACING = {"max_per_arch": 3, "budget_share": 0.25}
# ... and its pruner: ours (a study with replicates gets the same default rungs since issue 28; racing's own default,
# one rung at 1/8 keeping the top quarter, was chosen on the proxy truth and lost held out: RESULTS.md)
RACING_RUNGS = OURS_RUNGS
RACING_PRUNER = OURS
THREE_SEEDS = {"policy": "every", "max_per_arch": 3, "budget_share": 0.7}
# seconds one run takes on one CPU (2026-11-30), so the pool starts the long runs first and ends together
_SLOW = {"gp": 300, "syne-moasha": 40, "ours-gp": 30, "ours-race": 70, "tpe-3seeds": 40}


def methods(
    eta: int = 3,
    ours: dict[str, Any] | None = None,
    rungs: tuple[int, ...] = OURS_RUNGS,
    oracle: bool = False,
    race_rungs: tuple[int, ...] = RACING_RUNGS,
    racing: dict[str, Any] | None = None,
) -> list[Method]:
    """Every method of the lab; ``ours``/``rungs``/``race_rungs`` replace our pruner's settings (other defaults),
    ``racing`` ours-race's ``replicates:`` settings;
    ``oracle`` adds oracle-<sampler>: ours ranking on the final accuracies (lab_runs.OraclePruner, a bound).
    The two replicate methods (ours-race, tpe-3seeds) need a table of three seeds (``Table.n_seeds``)."""
    engine = []
    for sampler in ("random", "tpe", "nsga2", "gp"):
        engine.append(Method(sampler, "engine", sampler=sampler))
        mine = Method(f"ours-{sampler}", "engine", sampler=sampler, pruner=ours or OURS, rungs=rungs)
        engine += [mine, dataclasses.replace(mine, name=f"oracle-{sampler}", oracle=True)] if oracle else [mine]
    race = racing or RACING
    return [
        *engine,
        Method("ours-race", "engine", sampler="tpe", pruner=ours or RACING_PRUNER, rungs=race_rungs, replicates=race),
        Method("tpe-3seeds", "engine", sampler="tpe", replicates=THREE_SEEDS),
        Method("ray-asha", "engine", sampler="random", ray_asha=True, eta=eta),
        Method("syne-moasha", "syne", syne="moasha", eta=eta),
        Method("syne-morea", "syne", syne="morea"),
    ]


# ---------------------------------------------------------------------------------------------- the table
def export_table(study_file: Path, out: Path) -> Table:
    """Every COMPLETE full-fidelity architecture of the built grid study, with its curves, costs and provenance."""
    import optuna

    from nas import layout
    from nas.engine.config import read_study_file
    from nas.study_record import StudyRecord
    from nas.trial_record import TrialRecord

    cfg, space = read_study_file(study_file)
    study = optuna.load_study(study_name=cfg.name, storage=layout.open_storage(cfg.storage_url()))
    done = [t for t in study.trials if t.state.name == "COMPLETE" and TrialRecord.of(t).full_fidelity]
    done = [t for t in done if not TrialRecord.of(t).is_copy]
    expected = 1
    for values in space.param_grid().values():
        expected *= len(values)
    archs: dict[str, TableArch] = {}
    for t in done:
        a = TrialRecord.of(t)
        curve, tp = a.curve_rows, a.throughput or {}
        archs[a.arch_id] = TableArch(
            arch_id=a.arch_id,
            params=dict(t.params),
            placement=a.placement,
            n_params=int(a.params),
            flops=int(a.flops),
            throughput={k: round(float(tp[k]), 2 if k != "cv" else 5) for k in ("median", "iqr", "cv")},
            val_acc=[round(r["val_acc"], 5) for r in curve],
            val_loss=[round(r["val_loss"], 5) for r in curve],
            train_loss=[round(r["train_loss"], 5) for r in curve],
            seconds=[round(r["seconds"], 3) for r in curve],
        )
    if len(archs) != expected:
        raise SystemExit(f"error: {study_file}: {len(archs)} of the space's {expected} architectures are done; "
                         "finish the build (run `nas search` on it again) first")  # fmt: skip
    starts = [t.datetime_start for t in done]
    ends = [t.datetime_complete for t in done]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    provenance = {
        "study_file": str(study_file.resolve().relative_to(ROOT))
        if study_file.resolve().is_relative_to(ROOT)
        else study_file.name,
        "device": TrialRecord.of(done[0]).device,
        "machine": "2-core shared CPU; two trials trained at once, one thread each",
        "versions": StudyRecord.of(study).versions,
        "built": f"{min(starts):%Y-%m-%d %H:%M} to {max(ends):%Y-%m-%d %H:%M} UTC",
        "build_hours": round((max(ends) - min(starts)).total_seconds() / 3600, 2),
        "commit": commit.stdout.strip(),
        "trials": len(done),
    }
    table = Table(cfg.name.removesuffix("_build"), space.model_dump(mode="json"), space.space_hash(),
                  training_of(cfg), 10, cfg.train.epochs, archs, provenance)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table.to_json(), separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(archs)} architectures, {cfg.train.epochs} epochs)")
    return table


def base_config(table: Table) -> dict[str, Any]:
    """A study configuration whose training matches the table (what a replay needs)."""
    train = {k: v for k, v in table.training["train"].items()}
    return {"dataset": table.training["dataset"], "train": train, "throughput": table.training["throughput"]}


# ---------------------------------------------------------------------------------------------- statistics
def mean_ci(values: list[float], n_boot: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95 % bootstrap percentile interval of the mean."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    boots = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return statistics.fmean(values), boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def summarize(curves: list[Curve], horizon: float = float("inf")) -> dict[str, Any]:
    """Per method and share: the seeds that reached it, the mean compute over them (95 % CI), and — so a seed that
    never reached it counts — the restricted mean (a seed that did not reach the share at the budget is charged the
    ``horizon``, the worker-seconds of training every architecture once: what the budget allows) and the median
    with unreached seeds as +inf."""
    by: dict[str, list[Curve]] = {}
    for c in curves:
        by.setdefault(c.method, []).append(c)
    out: dict[str, Any] = {}
    for name, cs in by.items():
        row: dict[str, Any] = {"seeds": len(cs), "unique_archs": statistics.fmean(c.unique_archs for c in cs)}
        for share in SHARES:
            secs = [c.compute_to(share, 1) for c in cs]
            eps = [c.compute_to(share, 0) for c in cs]
            reached = [s for s in secs if s is not None]
            censored = [horizon if x is None else min(x, horizon) for x in secs]
            ordered = sorted(float("inf") if x is None else x for x in secs)
            row[f"{share:.2f}"] = {
                "reached": len(reached),
                "seconds": mean_ci(reached),
                "epochs": mean_ci([e for e in eps if e is not None]),
                "restricted": mean_ci(censored),
                "median": statistics.median(ordered) if ordered else float("nan"),
                "per_seed": secs,
            }
        out[name] = row
    return out


def ratio(
    summary: dict[str, Any], slow: str, fast: str, share: str = "0.95", horizon: float | None = None
) -> tuple[float, float, float] | None:
    """slow / fast compute to reach ``share``, paired by seed, bootstrap 95 % interval: over the seeds where both
    reached it, or (``horizon`` given) over every seed, one that never reached it charged the horizon (the ratio of
    restricted means)."""
    a, b = summary[slow][share]["per_seed"], summary[fast][share]["per_seed"]
    if horizon is not None:
        a, b = ([horizon if x is None else min(x, horizon) for x in v] for v in (a, b))
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None]
    if not pairs:
        return None
    rng = random.Random(1)
    est = statistics.fmean(x for x, _ in pairs) / statistics.fmean(y for _, y in pairs)
    boots = []
    for _ in range(4000):
        s = rng.choices(pairs, k=len(pairs))
        boots.append(statistics.fmean(x for x, _ in s) / statistics.fmean(y for _, y in s))
    boots.sort()
    return est, boots[100], boots[3899]


def markdown(summary: dict[str, Any], budget: int, horizon: float = float("inf")) -> str:
    lines = [
        "| method | 90 % HV: worker-s (95 % CI) | reached | 95 % HV: worker-s (95 % CI) | reached | 99 % HV: worker-s "
        "(95 % CI) | reached | 95 %: trial-epochs | architectures completed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        cells = [name]
        for share in SHARES:
            m, lo, hi = row[f"{share:.2f}"]["seconds"]
            cells += [
                f"{m:,.0f} ({lo:,.0f}–{hi:,.0f})" if m == m else "—",
                f"{row[f'{share:.2f}']['reached']}/{row['seeds']}",
            ]
        e = row["0.95"]["epochs"][0]
        cells += [f"{e:,.0f}" if e == e else "—", f"{row['unique_archs']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Budget per run: {budget} trial-epochs. Ratios (compute to 95 % of the true HV, paired over the seeds where "
        "both reached it):",
        "",
    ]
    pairs = [(s, f"{k}-{s}") for s in ("random", "tpe", "nsga2", "gp") for k in ("ours", "oracle")]
    pairs += [("random", "ours-tpe"), ("syne-moasha", "ours-tpe"), ("syne-morea", "ours-tpe"), ("ray-asha", "ours-tpe")]
    pairs += [
        ("syne-moasha", "ours-random"),
        ("tpe", "ours-race"),
        ("tpe-3seeds", "ours-race"),
        ("ours-tpe", "ours-race"),
    ]
    for slow, fast in pairs:
        if slow in summary and fast in summary:
            r = ratio(summary, slow, fast)
            c = ratio(summary, slow, fast, horizon=horizon) if horizon < float("inf") else None
            paired = f"**{r[0]:.2f}×** (95 % CI {r[1]:.2f}–{r[2]:.2f})" if r else "—"
            every = f"; restricted means, every seed: {c[0]:.2f}× ({c[1]:.2f}–{c[2]:.2f})" if c else ""
            lines.append(f"- {slow} / {fast}: {paired}{every}")
    if horizon < float("inf"):
        lines += ["", f"Counting every seed (a seed that never reached a share is charged {horizon:,.0f} worker-s, "
                  "the compute of training every architecture once): restricted mean (95 % CI) and median "
                  "(∞: over half the seeds never reached it):", "",
                  "| method | 90 %: restricted mean | median | 95 %: restricted mean | median |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, row in summary.items():
            cells = [name]
            for share in ("0.90", "0.95"):
                m, lo, hi = row[share]["restricted"]
                med = row[share]["median"]
                cells += [f"{m:,.0f} ({lo:,.0f}–{hi:,.0f})", "∞" if med == float("inf") else f"{med:,.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _racing(ap: argparse.ArgumentParser, pairs: list[str]) -> dict[str, Any]:
    """ours-race's ``replicates:`` with ``--race KEY=VALUE`` applied, validated as a study file's would be (one line
    naming the field on a bad one)."""
    import yaml
    from pydantic import ValidationError

    from nas.engine.config import ReplicatesConfig
    from nas.space import pydantic_line

    racing = dict(RACING)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            ap.error(f"--race: {pair!r} is not KEY=VALUE (e.g. budget_share=0.4)")
        racing[key] = yaml.safe_load(value)
    try:
        ReplicatesConfig(**racing)
    except ValidationError as e:
        ap.error(pydantic_line("--race", e).replace("--race: ", "--race: replicates.", 1))
    return racing


def _one_thread() -> None:
    """A pool process runs one seed at a time on one thread: the pool is the parallelism. torch's default (a thread
    per core in every process) oversubscribed the cores with --procs 2 and made Optuna's GP, whose acquisition runs
    in torch, 10-15x slower (OpenMP threads waiting on each other); its results are the same either way."""
    import torch

    torch.set_num_threads(1)


def _timed_run(item: tuple[int, tuple]) -> tuple[int, Curve, float]:
    """One seeded run in a pool process: its index, its curve and the seconds it took (for the progress line)."""
    i, job = item
    t = time.time()
    curve = lab_runs.run(*job)
    return i, curve, time.time() - t


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["table", "column", "resume", "seeds", "run", "fidelity", "transfer", "plot"])
    ap.add_argument("--target", default=str(lab_truth.TARGET), help="transfer: the target table (columns beside it)")
    ap.add_argument(
        "--table", default=None, help=f"default: {SEED0.name} for table/column/resume/seeds/fidelity, else {TABLE.name}"
    )
    ap.add_argument("--study", default=str(BUILD), help="table: the built study file")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument(
        "--seed-start", type=int, default=0,
        help="first search seed (seeds 0-19 choose defaults; 100-119 are the held-out confirmation seeds)",
    )  # fmt: skip
    ap.add_argument(
        "--truth", choices=lab_truth.KINDS, default=None,
        help="what a search is scored on (benchmarks/lab_truth.py): proxy (mean of the seeds it sees, issue 17), "
        "heldout (a training seed it never sees, rotating) or target (the target-scale columns); default: target "
        "once its columns are complete, else heldout",
    )  # fmt: skip
    ap.add_argument("--relative", choices=("front", "ceiling"), default=None,
                    help="score relative to the true front or to the ceiling (default: the truth's own)")  # fmt: skip
    ap.add_argument("--gp-seeds", type=int, default=3, help="seeds of the two GP methods (Optuna's GP: ~2 s/proposal)")
    ap.add_argument("--workers", type=int, default=4, help="simulated workers (max_concurrent) of every method")
    ap.add_argument("--budget", type=int, default=0, help="trial-epochs per run (default: the table's total)")
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of the methods, by name")
    ap.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)), help="processes running seeds at once")
    ap.add_argument(
        "--stop-at",
        type=float,
        default=max(SHARES),
        help="end a run once it reaches this share of the true HV (default: the highest share reported)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "search_lab"), help="path prefix of .json/.html/.png")
    ap.add_argument("--ours-rungs", default=None, help="try other rungs for ours, e.g. 1,3")
    ap.add_argument("--ours-eta", type=int, default=None, help="try another eta for ours")
    ap.add_argument("--ours-min-trials", type=int, default=None, help="try another min_trials for ours")
    ap.add_argument(
        "--race", nargs="+", default=[], metavar="KEY=VALUE",
        help="try other replicates settings for ours-race, e.g. budget_share=0.4 settled=0.8 (study-file fields)",
    )  # fmt: skip
    ap.add_argument("--no-plot", action="store_true", help="skip the HTML/PNG plot (tuning runs)")
    ap.add_argument(
        "--no-fixed-costs",
        action="store_true",
        help="charge epochs only, not the table's fixed per-trial costs (the lab before issue 30)",
    )
    ap.add_argument(
        "--exact-throughput",
        action="store_true",
        help="searches see each throughput's median, not a draw within its spread (the lab before issue 30)",
    )
    ap.add_argument(
        "--oracle", action="store_true", help="add oracle-<sampler>: ours ranking on the final accuracies (a bound)"
    )
    args = ap.parse_args(argv)
    if args.table is None:
        args.table = str(SEED0 if args.command in ("table", "column", "resume", "seeds", "fidelity") else TABLE)
    if args.command == "table":
        export_table(Path(args.study), Path(args.table))
        return 0
    if args.command in ("column", "resume"):  # a seed build's column of the table (benchmarks/lab_seeds.py)
        from benchmarks import lab_seeds

        run = lab_seeds.export_column if args.command == "column" else lab_seeds.import_column
        run(Path(args.study), Path(args.table))
        return 0
    if args.command == "seeds":
        from benchmarks import lab_seeds

        lab_seeds.add_columns(Path(args.table), TABLE if Path(args.table) == SEED0 else None)
        return 0
    if args.command == "plot":  # the figure again from a run's JSON (--out prefix), no run; then its tables
        raw, drawn = lab_plot.replot(Path(args.out))
        print(markdown(raw["summary"], raw["budget"], raw.get("horizon_s", float("inf"))))
        print(f"wrote {', '.join(map(str, drawn))}")
        return 0
    table = Table.load(args.table)
    if args.command == "fidelity":
        from benchmarks import lab_transfer

        print(lab_transfer.fidelity(table))
        print()
        print(lab_transfer.seed_fidelity(Path(args.table)))
        v2 = Path(args.table).resolve() == SEED0 and TABLE.is_file()  # the default: seed 0, table v2 beside it
        several = table if table.n_seeds > 1 else Table.load(TABLE) if v2 else None
        if several is not None:  # the held-out ceilings (benchmarks/lab_truth.py) of table v2
            print()
            print(lab_truth.ceilings(several))
        return 0
    if args.command == "transfer":
        from benchmarks import lab_transfer

        print(lab_transfer.transfer(Path(args.table), Path(args.target)))
        return 0
    if args.truth is None:
        args.truth = lab_truth.default_kind(table)
    budget = args.budget or table.epochs * len(table.archs)
    ours = dict(OURS)
    tuned = args.ours_eta is not None or args.ours_min_trials is not None  # ours-race takes them too, else its own
    if args.ours_eta is not None:
        ours["eta"] = args.ours_eta
    if args.ours_min_trials is not None:
        ours["min_trials"] = args.ours_min_trials
    rungs = tuple(int(r) for r in args.ours_rungs.split(",")) if args.ours_rungs else OURS_RUNGS
    every = methods(ours=ours if tuned else None, rungs=rungs, oracle=args.oracle,
                    race_rungs=rungs if args.ours_rungs else RACING_RUNGS, racing=_racing(ap, args.race))  # fmt: skip
    unknown = sorted(set(args.methods or ()) - {m.name for m in every})
    if unknown:
        hint = " (oracle-* needs --oracle)" if any(n.startswith("oracle-") for n in unknown) else ""
        ap.error(f"--methods: no method {', '.join(unknown)}{hint}; choose from {', '.join(m.name for m in every)}")
    chosen = [m for m in every if args.methods is None or m.name in args.methods]
    seeds_short = [m.name for m in chosen if m.replicates and m.replicates["max_per_arch"] > table.n_seeds]
    if seeds_short and args.methods is not None:
        ap.error(f"--methods: {', '.join(seeds_short)} need a table of 3 seeds; {args.table} has {table.n_seeds} "
                 "(build table v2: python -m benchmarks.search_lab seeds)")  # fmt: skip
    chosen = [m for m in chosen if m.name not in seeds_short]  # the default list on a one-seed table: without them
    base = base_config(table)
    first = args.seed_start
    charge = not args.no_fixed_costs and bool(table.fixed_costs)
    fixed = table.fixed_seconds(measured=False) if charge else 0.0
    fc = table.fixed_costs
    paid = f"every trial {fc.get('trial_s')} s, a measurement {fc.get('measure_s')} s" if charge else "not charged"
    print(f"fixed costs: {paid}", file=sys.stderr)

    def n_seeds(m: Method) -> int:
        return min(args.seeds, args.gp_seeds) if m.sampler == "gp" and m.kind == "engine" else args.seeds

    rs = RunSettings(args.workers, budget, args.stop_at, charge, not args.exact_throughput)
    jobs = [
        (args.table, base, m, s, rs, args.truth, args.relative)
        for m in chosen
        for s in range(first, first + n_seeds(m))
    ]
    truths = [lab_truth.make(args.truth, table, s, args.relative) for s in range(first, first + table.n_seeds)]
    ceilings = sorted({(t.label, round(t.ceiling(table), 4)) for t in truths})
    horizon = sum(a.epoch_seconds * table.epochs + fixed for a in table.archs.values())  # every arch, trained whole
    print(f"truth: {args.truth}, scored relative to the {truths[0].relative}; ceiling (share of the true "
          f"front a search that saw everything visible would report): "
          + "; ".join(f"{label}: {c:.3f}" for label, c in ceilings), file=sys.stderr)  # fmt: skip
    slow_first = sorted(range(len(jobs)), key=lambda i: _SLOW.get(jobs[i][2].name, 0), reverse=True)
    t0 = time.time()
    print(f"{len(jobs)} runs on {args.procs} processes (slowest first); one line each as it ends", file=sys.stderr)
    done: dict[int, Curve] = {}
    with mp.get_context("spawn").Pool(args.procs, initializer=_one_thread) as pool:
        for i, curve, secs in pool.imap_unordered(_timed_run, [(i, jobs[i]) for i in slow_first], chunksize=1):
            done[i] = curve
            print(f"[{len(done)}/{len(jobs)}] {curve.method} seed {curve.seed}: {secs:.0f} s "
                  f"(elapsed {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    curves = [done[i] for i in range(len(jobs))]
    summary = summarize(curves, horizon)
    out = Path(args.out)  # a prefix: "lab_share=0.15" gets .json after it (with_suffix would cut ".15")
    json_path, html_path, png_path = (out.with_name(out.name + ext) for ext in (".json", ".html", ".png"))
    json_path.write_text(json.dumps({
        "table": str(Path(args.table).name), "seeds": args.seeds, "seed_start": first, "workers": args.workers,
        "budget": budget, "truth": args.truth, "relative": truths[0].relative, "ceilings": ceilings,
        "fixed_costs": {k: v for k, v in table.fixed_costs.items() if k != "provenance"} if charge else None,
        "throughput_noise": not args.exact_throughput,
        "horizon_s": horizon,
        "true_front": [a.placement for a in lab_runs.true_front(table, lab_truth.make(args.truth, table, first))],
        "summary": {k: {s: {kk: vv for kk, vv in v.items()} if isinstance(v, dict) else v for s, v in row.items()}
                    for k, row in summary.items()},
        "curves": [{"method": c.method, "seed": c.seed, "points": c.points, "trials": c.trials,
                    "unique_archs": c.unique_archs} for c in curves],
    }, default=str) + "\n")  # fmt: skip
    budget_s = max((p[1] for c in curves for p in c.points), default=1.0)
    if not args.no_plot:
        lab_plot.plot(curves, budget_s, html_path, png_path, args.truth, truths[0].relative)
    print(markdown(summary, budget, horizon))
    wrote = [json_path] if args.no_plot else [json_path, html_path, png_path]
    print(f"\n{len(jobs)} runs in {time.time() - t0:.0f} s; wrote {', '.join(map(str, wrote))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
