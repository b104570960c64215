"""Settling the throughput order of a front by interleaved, paired re-measurement.

Each throughput of a study was measured once, when its trial ran, under whatever load the device had then; on a
shared CPU or a GPU that packs several trials the spread of one measurement reaches a third of its value (issue
30), so the order of two front members measured minutes apart can be the load's, not theirs. Re-measuring them
*interleaved* cancels the load: round ``r`` times every candidate once (forwards on even rounds, backwards on odd
ones, so a load that rises or falls through a round touches every candidate alike), and the comparison of two
candidates is the **paired** log ratio of their timings in the same round — the drift both saw divides out. Rounds go
on until every pair of neighbours in throughput order is resolved (the 95 % interval of its mean log ratio, a t
interval over the rounds, excludes 0) or the cap is reached; an unresolved pair is reported as a tie at that cap.

The idea is the paired design of benchmark comparisons (A B A B, e.g. Kalibera & Jones, "Rigorous benchmarking in
reasonable time", ISMM 2013). :func:`settle_order` is pure (``measure(i)`` does one timing of candidate ``i``);
:func:`settle_study` applies it to a study's front on this machine's device.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nas.study_record import StudyRecord, write

# Above this median spread (CV of a measurement's repeats) a study's device was loaded while it measured. Measured
# here: this 2-core CPU with two trials at once (the device lock keeps the other trial's steps out of a measurement)
# gives 0.048-0.068 (the lab table's seed-0 build, the demo, the cost study); an idle H200 0.00005; the README demo
# while other work ran on the machine 0.20. 0.10 sits between the two, above the idle CPU's 95th percentile (0.09 in
# the cost study), below what the loaded demo showed.
LOADED_CV = 0.10

T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}  # fmt: skip  (Student's t, two-sided 95 %, by degrees of freedom)


def t_975(dof: int) -> float:
    """Student's t quantile 0.975 for ``dof`` degrees of freedom (the table's nearest lower entry; 1.96 beyond)."""
    if dof > 30:
        return 1.96
    return T_975[max(k for k in T_975 if k <= dof)]


@dataclass
class PairResult:
    """Two neighbours in throughput order: ``faster`` over ``slower`` by ``ratio`` (geometric mean of the paired
    per-round ratios) with its 95 % interval; ``resolved`` when the interval excludes 1."""

    faster: int
    slower: int
    ratio: float
    low: float
    high: float
    resolved: bool


@dataclass
class Settled:
    """The outcome: every candidate's timings (``values[i]``, one per round), the order fastest first, each
    neighbour pair, and how many rounds it took."""

    values: list[list[float]]
    order: list[int]
    pairs: list[PairResult] = field(default_factory=list)
    rounds: int = 0

    @property
    def resolved(self) -> bool:
        return all(p.resolved for p in self.pairs)

    def median(self, i: int) -> float:
        return statistics.median(self.values[i])


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio a/b over paired rounds with its 95 % t interval: (ratio, low, high)."""
    d = [math.log(x) - math.log(y) for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return math.exp(mean), 0.0, math.inf
    half = t_975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def settle_order(measure: Callable[[int], float], n: int, min_rounds: int = 3, max_rounds: int = 15) -> Settled:
    """Re-measure ``n`` candidates in interleaved rounds until their throughput order is resolved (see the module
    docstring). ``measure(i)``: one timing of candidate ``i`` (images/s)."""
    if n < 1 or min_rounds < 2 or max_rounds < min_rounds:
        raise ValueError(f"settle_order: n={n} >= 1, 2 <= min_rounds={min_rounds} <= max_rounds={max_rounds}")
    out = Settled(values=[[] for _ in range(n)], order=list(range(n)))
    for r in range(max_rounds):
        for i in range(n) if r % 2 == 0 else reversed(range(n)):
            out.values[i].append(float(measure(i)))
        out.rounds = r + 1
        if out.rounds >= min_rounds:
            _judge(out)
            if out.resolved:
                break
    return out


def _judge(out: Settled) -> None:
    """Order the candidates by their paired ratios to the first (drift divided out) and judge each neighbour pair."""
    n = len(out.values)
    rel = [paired_ratio(out.values[i], out.values[0])[0] for i in range(n)]
    out.order = sorted(range(n), key=lambda i: -rel[i])
    out.pairs = []
    for a, b in zip(out.order, out.order[1:], strict=False):
        ratio, lo, hi = paired_ratio(out.values[a], out.values[b])
        out.pairs.append(PairResult(a, b, ratio, lo, hi, lo > 1.0))


def device_load(study: Any) -> dict[str, Any] | None:
    """The spread of a study's own throughput measurements (copies and cached ones left out): their median CV and
    how many; ``loaded`` when it is above :data:`LOADED_CV`. None before any measurement."""
    from nas.trial_record import TrialRecord

    cvs = []
    for t in study.get_trials(deepcopy=False):
        a = TrialRecord.of(t)
        tp = a.throughput or {}
        if a.is_copy or tp.get("cached") or tp.get("cv") is None or str(tp.get("device", "")).startswith("replay:"):
            continue
        cvs.append(float(tp["cv"]))
    if not cvs:
        return None
    med = statistics.median(cvs)
    return {"median_cv": med, "measurements": len(cvs), "loaded": med > LOADED_CV, "threshold": LOADED_CV}


def load_line(study: Any) -> str | None:
    """One line when a study's throughputs were measured on a loaded device (:func:`device_load`), naming the fix."""
    load = device_load(study)
    if load is None or not load["loaded"]:
        return None
    return (
        f"throughput measured on a loaded device: median spread (CV) {100 * load['median_cv']:.0f} % over "
        f"{load['measurements']} measurements (over {100 * LOADED_CV:.0f} %; an idle device stays under it); "
        f"P(front) resamples it; `nas settle {study.study_name}` orders the front by paired re-measurement"
    )


def settled_line(study: Any) -> str | None:
    """One line for a stored ``nas settle`` outcome: how many neighbour pairs of the front it resolved."""
    s = StudyRecord.of(study).throughput_settled
    if not s:
        return None
    ok = sum(1 for p in s["pairs"] if p["resolved"])
    ties = [f"{p['faster']}~{p['slower']}" for p in s["pairs"] if not p["resolved"]]
    tail = f"; ties at this many rounds: {', '.join(ties)}" if ties else ""
    return (
        f"throughput order settled by paired re-measurement ({s['rounds']} rounds on {s['device']}): "
        f"{ok} of {len(s['pairs'])} neighbour pairs resolved, fastest first {s['order']}{tail}"
    )


def overlapping(front: Sequence[Any]) -> int:
    """How many neighbours in the throughput order of ``front`` (records) have overlapping one-measurement intervals
    (:attr:`~nas.trial_record.TrialRecord.throughput_interval`): the pairs whose order the load may have decided."""
    ordered = sorted((r for r in front if r.throughput_median), key=lambda r: r.throughput_median)
    n = 0
    for slow, fast in itertools.pairwise(ordered):
        a, b = slow.throughput_interval, fast.throughput_interval
        n += bool(a and b and a[1] >= b[0])
    return n


def settle_at_end(study: Any, max_rounds: int, log: Callable[[str, dict[str, Any]], None] | None = None) -> str | None:
    """At the end of a search whose trials measured on this machine's device: settle the front's throughput order
    (:func:`settle_study`, at most ``max_rounds`` rounds) when some neighbours' intervals overlap, and say so in a
    line; None when there is nothing to settle (``max_rounds`` 0, no throughput objective, fewer than two members,
    or every neighbour already apart)."""
    from nas import results

    objs = results.objectives_of(study)
    if max_rounds < 1 or "throughput" not in [o.name for o in objs]:
        return None
    front = results.front(results.records(study), objs)
    if len(front) < 2 or not overlapping(front):
        return None
    if log:
        log("settle", {"members": len(front), "max_rounds": max_rounds})
    _, out = settle_study(study, max_rounds=max_rounds)
    return settled_line(study) or f"throughput order of the front re-measured in {out.rounds} paired rounds"


def settle_study(study: Any, device: str = "auto", max_rounds: int = 15) -> tuple[list[Any], Settled]:
    """Re-measure the study's front members on this machine's ``device`` (each model built from its stored
    architecture; the study's throughput settings, one timed loop per round, the device held exclusively) and store
    the outcome in the study's ``throughput_settled`` attribute. Returns the members (records) and the outcome."""
    import timm
    import torch

    import nas.models  # noqa: F401  (timm entrypoints)
    from nas import results
    from nas.measure import device_name, measure_throughput

    objs = results.objectives_of(study)
    front = results.front(results.records(study), objs)
    if len(front) < 2:
        raise ValueError(f"study '{study.study_name}': {len(front)} front member(s); nothing to order")
    rec = StudyRecord.of(study)
    tp = rec.section("throughput")
    cpus = int(rec.section("resources").get("cpus_per_trial") or torch.get_num_threads())
    torch.set_num_threads(int(tp.get("threads") or max(1, cpus)))  # the threads a trial measured with
    models = [timm.create_model("mixerformer", **r.arch) for r in front]

    def measure(i: int) -> float:
        arch = front[i].arch
        res = measure_throughput(
            models[i], img_size=arch["img_size"], in_chans=arch["in_chans"], batch_size=int(tp.get("batch_size", 64)),
            device=device, precision=tp.get("precision", "auto"), warmup=int(tp.get("warmup", 3)),
            steps=int(tp.get("steps", 10)), repeats=1, latency=False,
        )  # fmt: skip
        return res.median

    out = settle_order(measure, len(front), max_rounds=max_rounds)
    write(study, throughput_settled={
        "trials": [r.number for r in front],
        "medians": [out.median(i) for i in range(len(front))],
        "order": [front[i].number for i in out.order],
        "pairs": [dict(faster=front[p.faster].number, slower=front[p.slower].number, ratio=p.ratio, low=p.low,
                       high=p.high, resolved=p.resolved) for p in out.pairs],
        "rounds": out.rounds,
        "device": device_name(device),  # what "auto" resolved to here
    })  # fmt: skip
    return front, out
