"""Search efficiency: hypervolume reached per unit of compute with ``pareto`` pruning vs ``none`` vs Ray's ASHA.

Each variant runs the same study (same space, dataset slice, training, sampler and seeds) through
:func:`nas.engine.run.run_study`, into its own study in one temporary SQLite file:

* ``pareto`` — the engine's MO-ASHA pruner (``pruner.name: pareto``) on (accuracy at the rung, throughput);
* ``none``   — no pruning: every trial trains to full fidelity (the baseline);
* ``asha``   — Ray Tune's ``ASHAScheduler`` on accuracy alone (``metric=val_acc``, ``time_attr=epoch``, same
  grace period, rungs and reduction factor), with ``pruner.name: none``; the driver's ``on_complete`` must
  store the trials ASHA stops as PRUNED (checked here).

Fairness. Every variant starts a fresh study with the same ``seed``, so the sampler starts from the same state;
with the default ``--sampler random`` the proposals do not depend on results, so all variants propose the same
architectures in the same order and differ only in what they stop. The throughput cache (``nas_throughput``
table) lives in the storage, and the variants share one storage: an architecture is measured once and every
variant ranks it with the same throughput.

Metrics (all computed from the stored studies, not from the run's own bookkeeping):

* compute = trial-epochs: trials are walked in order of ``datetime_complete``; each trained trial adds the
  epochs of its stored curve when it completes (reused results and infeasible samples add 0);
* hypervolume after each completion, over the COMPLETE trials at full fidelity so far, of (accuracy,
  throughput / T) with reference point (0, 0), where T is the largest throughput of any COMPLETE trial of any
  variant in this run — so HV lies in [0, 1] and is comparable across variants (it is the area dominated
  in the unit square of accuracy x relative throughput);
* compute to reach ``--target`` (default 95 %) of the ``none`` run's final hypervolume, and the ratios
  none/pareto and none/asha (target: pareto needs <= 1/2 the compute of none, i.e. none/pareto >= 2);
* orchestration overhead per trial, two ways:
  ``overhead_capacity = (wall - work_sum / max_concurrent) / n_trained`` — wall seconds of the run (Ray
  already started) not explained by the trials' own work spread over the concurrent slots; and
  ``overhead_latency`` = median over trained trials of (driver-side trial wall time, from ask to tell - the
  trial's own work), split into trials on a *warm* worker (its process already ran a trial: ``reuse_actors``)
  and on a *fresh* one (process start, imports, dataset decoding: a one-off per worker and run, which the
  capacity figure spreads over the trials).
  A trial's own work = its epochs' ``seconds`` (training + validation, timed in the worker) + the timed loops of
  its throughput measurement when it measured rather than took the cache ((warmup + repeats*steps) batches at
  the measured rate, plus the batch-1 latency loops). Target: <= 1 s/trial (judged on the warm figure; see RESULTS.md).

    python -m benchmarks.search_efficiency                                   # studies/fashion_mnist_tiny.yaml
    python -m benchmarks.search_efficiency --small --n-trials 8              # CPU smoke size (minutes)
    python -m benchmarks.search_efficiency --variants pareto,none --sampler tpe --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from nas.measure import cpu_model_name

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# With no address, ray.init joins the newest Ray instance it finds on this machine (another user's, another
# benchmark's) — and refuses num_cpus when it does. "local" always starts our own.
os.environ["RAY_ADDRESS"] = "local"
ROOT = Path(__file__).resolve().parents[1]

VARIANTS = ("pareto", "none", "asha")


@dataclass
class Step:
    """One completed trial, in completion order, with the running totals after it."""

    number: int
    state: str
    epochs: int
    cum_epochs: int
    hv: float
    reused: bool = False


@dataclass
class VariantResult:
    name: str
    wall_s: float
    steps: list[Step] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    trained: int = 0
    work_s: float = 0.0
    latency_overheads: list[float] = field(default_factory=list)
    cold_overheads: list[float] = field(default_factory=list)
    warm_overheads: list[float] = field(default_factory=list)
    stopped_early: int = 0
    invariant_errors: list[str] = field(default_factory=list)
    proposals: list[str] = field(default_factory=list)  # arch_id of each feasible trial, in trial-number order
    curves: dict[str, list[float]] = field(default_factory=dict)  # arch_id -> val_acc per epoch (trained trials)
    throughputs: dict[str, float] = field(default_factory=dict)  # arch_id -> median images/s used

    @property
    def total_epochs(self) -> int:
        return self.steps[-1].cum_epochs if self.steps else 0

    @property
    def final_hv(self) -> float:
        return self.steps[-1].hv if self.steps else 0.0


# ---------------------------------------------------------------------------------------------- pure analysis
def geometric_rungs(grace: int, eta: int, epochs: int) -> list[int]:
    """ASHA's rungs: grace * eta**k below max_t (Li et al., "A System for Massively Parallel Hyperparameter
    Tuning", MLSys 2020), so the engine's pruner and Ray's ASHA decide at the same epochs."""
    rungs, r = [], grace
    while r < epochs:
        rungs.append(r)
        r *= eta
    return rungs


def normalised_hv(points: list[tuple[float, float]], tp_scale: float) -> float:
    """Hypervolume of (accuracy, throughput / tp_scale), both maximised, reference point (0, 0)."""
    from nas.pareto import hypervolume

    if not points:
        return 0.0
    pts = [(acc, tp / tp_scale) for acc, tp in points]
    return hypervolume(pts, ["maximize", "maximize"], [0.0, 0.0])


def trajectory(trials: list[dict[str, Any]], tp_scale: float) -> list[Step]:
    """Walk trials (dicts with number, state, completed, epochs, reused, values, full) in completion order."""
    steps, cum, front = [], 0, []
    for t in sorted(trials, key=lambda t: (t["completed"], t["number"])):
        cum += t["epochs"]
        if t["state"] == "COMPLETE" and t["full"] and t["values"]:
            front.append((float(t["values"][0]), float(t["values"][1])))
        steps.append(Step(t["number"], t["state"], t["epochs"], cum, normalised_hv(front, tp_scale), t["reused"]))
    return steps


def compute_to_reach(steps: list[Step], target_hv: float) -> int | None:
    """Trial-epochs spent when the hypervolume first reaches ``target_hv``; None if it never does."""
    for s in steps:
        if s.hv >= target_hv - 1e-12:
            return s.cum_epochs
    return None


def measurement_seconds(tp: dict[str, Any]) -> float:
    """Seconds of the timed loops of a fresh throughput measurement (0 for a cached one)."""
    if not tp or tp.get("cached", True) or not tp.get("median"):
        return 0.0
    batches = tp.get("warmup", 0) + tp.get("repeats", 1) * tp.get("steps", 1)
    seconds = batches * tp.get("batch", 1) / tp["median"]
    if tp.get("latency_ms_b1"):
        seconds += batches * tp["latency_ms_b1"] / 1000.0
    return seconds


# ---------------------------------------------------------------------------------------------- running
def study_overrides(variant: str, args: argparse.Namespace, tmp: Path, rungs: list[int]) -> dict[str, Any]:
    over: dict[str, Any] = {
        "name": f"effbench_{variant}",
        "storage": f"sqlite:///{(tmp / 'bench.db').resolve()}",  # one storage: the throughput cache is shared
        "objectives": [{"name": "accuracy"}, {"name": "throughput"}],
        "train.epochs": args.epochs,
        "fidelity.rungs": rungs,
        "pruner.name": "pareto" if variant == "pareto" else "none",
        "pruner.eta": args.eta,
        "sampler.name": args.sampler,
        "budget.n_trials": args.n_trials,
        "budget.max_concurrent": args.max_concurrent,
        "budget.wall_time_s": None,
        "seed": args.seed,
        "train.seed": args.seed,
    }
    if args.train_fraction is not None:
        over["train.train_fraction"] = args.train_fraction
    if args.max_batches is not None:
        over["train.max_batches_per_epoch"] = args.max_batches
    if args.space is not None:
        over["space"] = str(Path(args.space).resolve())
    return over


def small_preset(args: argparse.Namespace, tmp: Path) -> None:
    """CPU smoke size: the engine tests' tiny space (tests/engine_fixtures.py) and a few batches per epoch."""
    import yaml

    from tests.engine_fixtures import SPACE

    path = tmp / "tiny_space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    args.space = args.space or str(path)
    args.train_fraction = args.train_fraction if args.train_fraction is not None else 0.03
    args.max_batches = args.max_batches if args.max_batches is not None else 10


def asha_factory(args: argparse.Namespace):
    from ray.tune.schedulers import ASHAScheduler

    def make(driver: Any) -> ASHAScheduler:
        return ASHAScheduler(
            metric="val_acc",
            mode="max",
            time_attr="epoch",
            max_t=args.epochs,
            grace_period=args.grace,
            reduction_factor=args.eta,
        )

    return make


def run_variant(variant: str, args: argparse.Namespace, tmp: Path, rungs: list[int]) -> tuple[float, dict[int, int]]:
    """Run one variant; returns the run's wall seconds and the worker process id of each trained trial."""
    from nas.engine.progress import Progress
    from nas.engine.run import run_study

    class Recorder(Progress):
        """The engine's progress printer, also noting which worker process ran each trial (for cold starts)."""

        def __init__(self, quiet: bool) -> None:
            super().__init__(quiet=quiet)
            self.pid_of: dict[int, int] = {}

        def event(self, kind: str, info: dict[str, Any]) -> None:
            if kind == "epoch" and info.get("pid") is not None:
                self.pid_of.setdefault(int(info["number"]), int(info["pid"]))
            super().event(kind, info)

    progress = Recorder(quiet=not args.verbose)
    summary = run_study(
        args.study,
        overrides=study_overrides(variant, args, tmp, rungs),
        base_dir=tmp / "studies",
        progress=progress,
        scheduler_factory=asha_factory(args) if variant == "asha" else None,
    )
    return summary.seconds, progress.pid_of


def load_trials(
    storage: str, variant: str, epochs: int, pid_of: dict[int, int]
) -> tuple[list[dict[str, Any]], VariantResult]:
    """The stored trials of one variant as plain dicts, plus counts, work seconds and invariant checks.

    A trained trial is *cold* when it is the first trial its worker process ran in this run (process start,
    imports and dataset decoding land on it), *warm* when its worker had already run one (``reuse_actors``)."""
    import optuna
    from optuna.trial import TrialState

    from nas.trial_record import TrialRecord

    study = optuna.load_study(study_name=f"effbench_{variant}", storage=storage)
    res = VariantResult(variant, 0.0)
    rows, seen_pids = [], set()
    for t in study.get_trials(deepcopy=False):  # in trial-number (= start) order
        res.counts[t.state.name] = res.counts.get(t.state.name, 0) + 1
        if t.datetime_complete is None:
            continue
        a = TrialRecord.of(t)
        reused, infeasible = a.is_copy, bool(a.infeasible)
        curve = a.curve_rows
        trained = not reused and not infeasible
        n_epochs = len(curve) if trained else 0
        full = bool(a.full_fidelity)
        if trained:
            res.trained += 1
            work = sum(float(r.get("seconds", 0.0)) for r in curve) + measurement_seconds(a.throughput or {})
            res.work_s += work
            if a.wall_time_s is not None:
                over = float(a.wall_time_s) - work
                res.latency_overheads.append(over)
                pid = pid_of.get(t.number)
                if pid is not None:
                    (res.warm_overheads if pid in seen_pids else res.cold_overheads).append(over)
                    seen_pids.add(pid)
            if n_epochs < epochs and t.state != TrialState.FAIL:
                res.stopped_early += 1
                if t.state != TrialState.PRUNED:
                    res.invariant_errors.append(f"trial {t.number} stopped at epoch {n_epochs} but is {t.state.name}")
        if t.state == TrialState.COMPLETE and not full:
            res.invariant_errors.append(f"trial {t.number} is COMPLETE below full fidelity")
        if not infeasible and a.arch_id is not None:
            res.proposals.append(a.arch_id)
            if trained and curve:
                res.curves[a.arch_id] = [float(r["val_acc"]) for r in curve]
            if (a.throughput or {}).get("median"):
                res.throughputs[a.arch_id] = float(a.throughput["median"])
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "completed": t.datetime_complete,
                "epochs": n_epochs,
                "reused": reused,
                "values": list(t.values) if t.state == TrialState.COMPLETE and t.values else None,
                "full": full,
            }
        )
    return rows, res


# ---------------------------------------------------------------------------------------------- report
def report(results: list[VariantResult], args: argparse.Namespace, rungs: list[int], tp_scale: float) -> dict:
    base = next((r for r in results if r.name == "none"), None)
    base_name = "none" if base else max(results, key=lambda r: r.final_hv).name
    base = base or max(results, key=lambda r: r.final_hv)
    target = args.target * base.final_hv
    need = {r.name: compute_to_reach(r.steps, target) if base.final_hv > 0 else None for r in results}

    print(
        f"\nsearch efficiency: {args.n_trials} trials, {args.epochs} epochs, rungs {rungs}, eta {args.eta}, "
        f"{args.max_concurrent} at a time, sampler {args.sampler}, seed {args.seed}; HV of (acc, tp/{tp_scale:.0f})"
    )
    head = f"{'variant':8} {'trained':>7} {'reused':>6} {'COMPL':>5} {'PRUNED':>6} {'FAIL':>4} {'trial-ep':>8}"
    print(head + f" {'final HV':>8} {'HV/base':>7} {'wall s':>7} {'ep@' + f'{args.target:.0%}':>7}")
    for r in results:
        reused = sum(s.reused for s in r.steps)
        frac = r.final_hv / base.final_hv if base.final_hv else float("nan")
        got = need[r.name]
        print(
            f"{r.name:8} {r.trained:7d} {reused:6d} {r.counts.get('COMPLETE', 0):5d} {r.counts.get('PRUNED', 0):6d} "
            f"{r.counts.get('FAIL', 0):4d} {r.total_epochs:8d} {r.final_hv:8.4f} {frac:7.3f} {r.wall_s:7.1f} "
            f"{got if got is not None else 'never':>7}"
        )
    for r in results:
        print(f"  {r.name:8} trial-epochs:HV  " + "  ".join(f"{s.cum_epochs}:{s.hv:.3f}" for s in r.steps))

    ratios: dict[str, float | None] = {}
    print(
        f"\ncompute to reach {args.target:.0%} of the {base_name} run's final HV ({base.final_hv:.4f} -> {target:.4f}):"
    )
    for r in results:
        if r.name == base_name:
            continue
        c_base, c = need[base_name], need[r.name]
        ratios[r.name] = c_base / c if c and c_base else None
        shown = f"{ratios[r.name]:.2f}x" if ratios[r.name] else f"n/a ({r.name} never reached it)"
        print(f"  {base_name}/{r.name} = {shown}")
    if "pareto" in ratios and base_name == "none":
        ok = ratios["pareto"] is not None and ratios["pareto"] >= 2.0
        print(f"  target none/pareto >= 2.00x: {'MET' if ok else 'NOT MET'}")

    print("\norchestration overhead per trained trial (target <= 1 s/trial):")
    overheads = {}
    for r in results:
        cap = (r.wall_s - r.work_s / args.max_concurrent) / max(1, r.trained)
        warm, cold = _median(r.warm_overheads), _median(r.cold_overheads)
        overheads[r.name] = {"capacity_s": cap, "warm_median_s": warm, "cold_median_s": cold, "work_s": r.work_s}
        print(
            f"  {r.name:8} (wall {r.wall_s:.1f}s - work {r.work_s:.1f}s / {args.max_concurrent}) / {r.trained} = "
            f"{cap:.2f} s/trial;  trial wall - own work, median: warm worker {warm:.2f} s "
            f"(n={len(r.warm_overheads)}), fresh worker {cold:.2f} s (n={len(r.cold_overheads)})"
        )

    fairness = fairness_report(results, base)
    problems = [f"{r.name}: {e}" for r in results for e in r.invariant_errors]
    asha = next((r for r in results if r.name == "asha"), None)
    if asha is not None:
        verdict = "all PRUNED" if not asha.invariant_errors else "NOT all PRUNED"
        print(f"\nASHA check: {asha.stopped_early} trial(s) stopped before epoch {args.epochs}: {verdict}")
    for p in problems:
        print(f"  invariant violated: {p}")
    return {
        "date": date.today().isoformat(),
        "cpu": cpu_model_name(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "args": {k: v for k, v in vars(args).items() if k != "study"} | {"study": str(args.study)},
        "rungs": rungs,
        "tp_scale": tp_scale,
        "baseline": base_name,
        "target_hv": target,
        "compute_to_target": need,
        "ratios": ratios,
        "overheads": overheads,
        "fairness": fairness,
        "problems": problems,
        "variants": [asdict(r) | {"total_epochs": r.total_epochs, "final_hv": r.final_hv} for r in results],
    }


def fairness_report(results: list[VariantResult], base: VariantResult) -> dict[str, Any]:
    """Did the variants see the same architectures, with the same throughput and the same training curves?"""
    out: dict[str, Any] = {}
    print("\nfairness (against the baseline run):")
    for r in results:
        if r is base:
            continue
        n = min(len(r.proposals), len(base.proposals))
        same = sum(a == b for a, b in zip(r.proposals, base.proposals, strict=False))
        shared = [k for k in r.curves if k in base.curves]
        d_acc = max(
            (abs(x - y) for k in shared for x, y in zip(r.curves[k], base.curves[k], strict=False)), default=0.0
        )
        tp_shared = [k for k in r.throughputs if k in base.throughputs]
        d_tp = max((abs(r.throughputs[k] / base.throughputs[k] - 1) for k in tp_shared), default=0.0)
        out[r.name] = {"same_proposals": same, "of": n, "max_abs_dacc": d_acc, "max_rel_dtp": d_tp}
        print(
            f"  {r.name:8} same architecture as {base.name} at {same}/{n} trial positions; "
            f"same arch, same epoch: max |d val_acc| = {d_acc:.4f} over {len(shared)} archs; "
            f"max |d throughput| = {d_tp:.1%}"
        )
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "absent"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "fashion_mnist_tiny.yaml"), help="study file")
    ap.add_argument("--space", default=None, help="search space file replacing the study's")
    ap.add_argument("--small", action="store_true", help="tiny space of the engine tests + few batches (CPU smoke)")
    ap.add_argument("--n-trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--grace", type=int, default=1, help="first rung (ASHA's grace_period)")
    ap.add_argument("--eta", type=int, default=2, help="reduction factor of both pruners")
    ap.add_argument("--train-fraction", type=float, default=None)
    ap.add_argument("--max-batches", type=int, default=None, help="train.max_batches_per_epoch")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sampler", default="random", choices=["random", "tpe", "nsga2", "gp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.95, help="fraction of the baseline's final HV to reach")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs offered to local Ray (default: max-concurrent)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="print every trial event")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        ap.error(f"--variants: unknown {bad}; choose from {','.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rungs = geometric_rungs(args.grace, args.eta, args.epochs)
    if not rungs:
        print(f"--grace {args.grace} leaves no rung below --epochs {args.epochs}: nothing to prune")
        return 2
    import ray

    from nas.engine.tune import init_ray

    with tempfile.TemporaryDirectory(prefix="nas-effbench-") as d:
        tmp = Path(d)
        if args.small:
            small_preset(args, tmp)
        t0 = time.time()
        init_ray(None, args.num_cpus or args.max_concurrent)
        print(f"local Ray started in {time.time() - t0:.1f}s (not counted in any variant's wall time)")
        runs = []
        try:
            for v in args.variants:
                print(f"running variant {v} ...", flush=True)
                runs.append(run_variant(v, args, tmp, rungs))
                print(f"  {v}: {runs[-1][0]:.1f}s", flush=True)
        finally:
            ray.shutdown()
        storage = f"sqlite:///{(tmp / 'bench.db').resolve()}"
        loaded = [load_trials(storage, v, args.epochs, pids) for v, (_, pids) in zip(args.variants, runs, strict=True)]
        done = [tuple(t["values"]) for rows, _ in loaded for t in rows if t["values"] and t["full"]]
        tp_scale = max((tp for _, tp in done), default=1.0)
        out = []
        for (rows, res), (wall, _) in zip(loaded, runs, strict=True):
            res.wall_s, res.steps = wall, trajectory(rows, tp_scale)
            out.append(res)
        figures = report(out, args, rungs, tp_scale)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
