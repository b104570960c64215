"""Reading a study back: open it by name, turn its trials into plain records, the front, a pick, a summary.

Everything here reads the Optuna RDB layout of ``docs/storage.md`` through Optuna's public API only; where a study
lives and how its storage is opened is :mod:`nas.layout`'s (the engine writes through the same module).

Hypervolume (documented choice): *normalised* — each objective min-max scaled over the study's COMPLETE
full-fidelity trials (its worst value there -> 0, its best -> 1), the reference point at the origin of that unit box
(nas.pareto.normalized_hypervolume). It lies in [0, 1] whatever the objectives' units (accuracy in [0, 1],
throughput in thousands of images/s), and 1 would be one architecture best at everything. A history uses the
bounds of the whole study, so its steps are comparable with each other.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nas import layout, pareto
from nas.errors import StudyError
from nas.layout import Objective
from nas.replicates import merge, study_front_probability
from nas.study_record import StudyRecord
from nas.trial_record import TrialRecord

PICKS = ("knee", "max-accuracy")


# ---------------------------------------------------------------------------------------------- storage


def study_names(storage) -> list[str]:
    import optuna
    import sqlalchemy.exc

    try:
        return sorted(s.study_name for s in storage.get_all_studies())
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as e:
        raise StudyError(
            f"storage {layout.safe_url(storage.url)}: not an Optuna database ({layout.first_line(e)})"
        ) from None


def local_study_names(root: Path = layout.STUDIES_DIR) -> list[str]:
    """Study folders under ``studies/`` that hold a default SQLite storage."""
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{layout.DB_NAME}"))


def open_study(name: str, storage: str | None = None):
    """The Optuna study ``name`` in ``storage`` (default: ``sqlite:///studies/<name>/study.db``)."""
    import optuna

    url = storage or layout.default_storage_url(name)
    path = layout.sqlite_path(url)
    if storage is None and path is not None and not path.is_file():
        known = local_study_names()
        raise StudyError(
            f"unknown study '{name}': {path} does not exist; studies under {layout.STUDIES_DIR}/: "
            f"{', '.join(known) if known else '(none)'}; or pass --storage URL"
        )
    st = layout.open_storage(url)
    names = study_names(st)
    if name not in names:
        raise StudyError(
            f"unknown study '{name}' in {layout.safe_url(url)}; studies there: {', '.join(names) or '(none)'}"
        )
    return layout.remember_url(optuna.load_study(study_name=name, storage=st), url)


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """One row per study: name, storage (no password), trials by state, objectives, last activity.

    With no ``storage``, every ``studies/*/study.db`` is read.
    """
    urls = [storage] if storage else [layout.default_storage_url(n) for n in local_study_names()]
    rows = []
    for url in urls:
        st = layout.open_storage(url)
        for fs in sorted(st.get_all_studies(), key=lambda s: s.study_name):
            trials = st.get_all_trials(st.get_study_id_from_name(fs.study_name), deepcopy=False)
            counts = Counter(t.state.name for t in trials)
            objs = StudyRecord.of(fs).objective_list
            ends = [t.datetime_complete or t.datetime_start for t in trials]
            ends = [e for e in ends if e is not None]
            rows.append(
                {
                    "study": fs.study_name,
                    "storage": layout.safe_url(url),
                    "trials": len(trials),
                    "complete": counts.get("COMPLETE", 0),
                    "pruned": counts.get("PRUNED", 0),
                    "failed": counts.get("FAIL", 0),
                    "running": counts.get("RUNNING", 0),
                    "objectives": [f"{o.name}:{o.direction[:3]}" for o in objs],
                    "last_activity": max(ends).isoformat(timespec="seconds") if ends else None,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- records


def objectives_of(study) -> list[Objective]:
    return StudyRecord.of(study).objective_list


def records(study, cache: dict[int, TrialRecord] | None = None) -> list[TrialRecord]:
    """Every trial of ``study`` as a :class:`TrialRecord`, in trial-number order (reused copies included: they are
    the honest record of what the sampler proposed; see :func:`distinct`). ``cache`` (number -> record), for a
    caller that asks again and again (racing, after every trial): a finished trial's record is decoded once —
    Optuna refuses to change a finished trial."""
    objs = objectives_of(study)
    recs = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        r = cache.get(t.number) if cache is not None else None
        if r is None:
            r = TrialRecord.of(t, objs)
            if cache is not None and t.state.is_finished():
                cache[t.number] = r
        recs.append(r if cache is None else replace(r, reused_by=[]))  # reused_by: filled below
    by_number = {r.number: r for r in recs}
    for r in recs:
        if r.reused_from is not None and r.reused_from in by_number:
            by_number[r.reused_from].reused_by.append(r.number)
    return recs


def distinct(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """One record per evaluation: reused copies are left out (their numbers are in the source's ``reused_by``)."""
    return [r for r in recs if r.reused_from is None]


def get_record(study, number: int) -> TrialRecord:
    recs = {r.number: r for r in records(study)}
    if number not in recs:
        last = max(recs) if recs else None
        raise StudyError(
            f"study '{study.study_name}': no trial {number}"
            + (f"; trials are numbered 0..{last}" if last is not None else "; the study has no trials")
        )
    return recs[number]


def eligible(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """COMPLETE trials at full fidelity with every objective value: the only ones allowed on the front.

    One architecture, one point: reused copies are left out; an architecture evaluated with several training seeds
    (seed replicates) is one record, its first trial, whose accuracy is the mean over its seeds
    (:func:`nas.replicates.merge`); one trained twice with the same seed (two drivers at once) counts once."""
    names = [o.name for o in objectives]

    def complete(r: TrialRecord) -> bool:
        measured = all(n in r.values and math.isfinite(r.values[n]) for n in names)
        return r.state == "COMPLETE" and r.full_fidelity and measured

    return merge([r for r in sorted(distinct(recs), key=lambda r: r.number) if complete(r)])


def _points(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[list[float]]:
    return [[r.values[o.name] for o in objectives] for r in recs]


def _directions(objectives: Sequence[Objective]) -> list[str]:
    return [o.direction for o in objectives]


def front(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """The Pareto front among COMPLETE, full-fidelity trials, sorted by the first objective (best first)."""
    cand = eligible(recs, objectives)
    if not cand:
        return []
    idx = pareto.pareto_front(_points(cand, objectives), _directions(objectives))
    out = [cand[i] for i in idx]
    first = objectives[0]
    return sorted(out, key=lambda r: r.values[first.name], reverse=first.direction == "maximize")


def hv_bounds(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> tuple[list[float], list[float]]:
    """The normalisation bounds of the hypervolume: each objective's smallest and largest value (module doc)."""
    vals = [[r.values[o.name] for r in recs] for o in objectives]
    return [min(v) for v in vals], [max(v) for v in vals]


def hypervolume_history(
    recs: Sequence[TrialRecord], objectives: Sequence[Objective], by: str = "number"
) -> list[tuple[float, float]]:
    """Normalised hypervolume of the front so far, after each eligible trial: ``[(x, hv)]`` (module doc).

    ``by="number"``: x is the trial number; ``by="time"``: x is seconds from the study's first trial start to
    the trial's completion (trials may finish out of number order when they run in parallel).
    """
    cand = eligible(recs, objectives)
    if not cand:
        return []
    lo, hi = hv_bounds(cand, objectives)
    dirs = _directions(objectives)
    if by == "number":
        order = sorted(cand, key=lambda r: r.number)
        xs = [float(r.number) for r in order]
    elif by == "time":
        starts = [r.datetime_start for r in recs if r.datetime_start is not None]
        t0 = min(starts) if starts else None
        order = sorted(
            (r for r in cand if r.datetime_complete is not None), key=lambda r: (r.datetime_complete, r.number)
        )
        xs = [(r.datetime_complete - t0).total_seconds() for r in order] if t0 else []
    else:
        raise StudyError(f"hypervolume_history: by must be 'number' or 'time', got {by!r}")
    out, pts = [], []
    for x, r in zip(xs, order, strict=False):
        pts.append([r.values[o.name] for o in objectives])
        out.append((x, float(pareto.normalized_hypervolume(pts, dirs, lo, hi))))
    return out


def validation_study(study):
    """The validation sub-study of ``study`` (after `nas validate`), opened from the same storage."""
    val = StudyRecord.of(study).validation
    if not val:
        raise StudyError(
            f"study '{study.study_name}' has no validation yet; run `nas validate {study.study_name}` first"
        )
    return open_study(val["substudy"], layout.url_of(study) or None)


# ---------------------------------------------------------------------------------------------- pick


def _infer_objectives(recs: Sequence[TrialRecord]) -> list[Objective]:
    names: list[str] = []
    for r in recs:
        for n in r.values:
            if n not in names:
                names.append(n)
    unknown = [n for n in names if n not in layout.DIRECTIONS]
    if unknown:
        raise StudyError(f"pick: cannot infer the direction of objective(s) {unknown}; pass objectives=")
    return [Objective(n, layout.DIRECTIONS[n]) for n in names]


def pick(
    recs: Sequence[TrialRecord],
    how: str = "knee",
    *,
    objectives: Sequence[Objective] | None = None,
    min_throughput: float | None = None,
    max_params: int | None = None,
) -> TrialRecord:
    """One trial of the front of the trials that satisfy the constraints.

    ``knee``: the knee point of that front (nas.pareto.knee_point); ``max-accuracy``: its most accurate trial.
    ``min_throughput`` reads the throughput objective (else the measured median); ``max_params`` the
    parameter count. Raises StudyError when no COMPLETE full-fidelity trial satisfies them.
    """
    if how not in PICKS:
        raise StudyError(f"pick: unknown --pick {how!r}; use one of {', '.join(PICKS)}")
    objs = list(objectives) if objectives is not None else _infer_objectives(recs)
    cand = eligible(recs, objs)
    n_all = len(cand)
    if min_throughput is not None:
        cand = [r for r in cand if (r.throughput_median or 0.0) >= min_throughput]
    if max_params is not None:
        cand = [r for r in cand if r.params is not None and r.params <= max_params]
    if not cand:
        cons = []
        if min_throughput is not None:
            cons.append(f"throughput >= {min_throughput:g}")
        if max_params is not None:
            cons.append(f"params <= {max_params:d}")
        raise StudyError(
            f"pick: none of the {n_all} complete full-fidelity trials satisfies "
            f"{' and '.join(cons) if cons else 'the request'}; relax --min-throughput/--max-params"
        )
    fr = front(cand, objs)
    if how == "max-accuracy":
        if not any(o.name == "accuracy" for o in objs):
            raise StudyError("pick: max-accuracy needs an 'accuracy' objective; use --pick knee")
        return max(fr, key=lambda r: (r.values["accuracy"], -r.number))
    return fr[int(pareto.knee_point(_points(fr, objs), _directions(objs)))]


# ---------------------------------------------------------------------------------------------- summary


@dataclass
class StudySummary:
    """What `nas status` prints: counts by state, compute spent, the front."""

    name: str
    storage: str
    objectives: list[Objective]
    counts: dict[str, int]
    n_trials: int
    trial_seconds: float  # sum of each trial's wall time
    trial_epochs: int  # sum of epochs trained over all trials
    elapsed_seconds: float | None  # first trial start -> last trial end
    hypervolume: float | None
    front: list[TrialRecord]
    reused: int
    p_front: dict[int, float] = field(default_factory=dict)  # P(front) by architecture (its first trial's number)


def summarize(study, storage_url: str | None = None) -> StudySummary:
    recs = records(study)
    objs = objectives_of(study)
    counts = dict(Counter(r.state for r in recs))
    starts = [r.datetime_start for r in recs if r.datetime_start]
    ends = [r.datetime_complete or r.datetime_start for r in recs if r.datetime_complete or r.datetime_start]
    hv = hypervolume_history(recs, objs)
    return StudySummary(
        name=study.study_name,
        storage=layout.safe_url(storage_url or layout.url_of(study)),
        objectives=objs,
        counts=counts,
        n_trials=len(recs),
        trial_seconds=float(sum(r.duration or 0.0 for r in recs if r.reused_from is None)),
        trial_epochs=int(sum(r.fidelity or 0 for r in recs if r.reused_from is None)),
        elapsed_seconds=(max(ends) - min(starts)).total_seconds() if starts and ends else None,
        hypervolume=hv[-1][1] if hv else None,
        front=front(recs, objs),
        reused=sum(1 for r in recs if r.reused_from is not None),
        p_front=study_front_probability(study, eligible(recs, objs), objs),
    )


def front_rows(
    fr: Sequence[TrialRecord], objectives: Sequence[Objective], p_front: dict[int, float] | None = None
) -> list[dict[str, Any]]:
    """The front as flat rows (what `nas pareto` prints as table, CSV or JSON): each accuracy with its 95 % interval
    (None: evaluated before bitmaps were kept) and its number of seeds, and P(front) when ``p_front`` is given."""
    rows = []
    for r in fr:
        row: dict[str, Any] = {"trial": r.number}
        for o in objectives:
            row[o.name] = r.values.get(o.name)
            if o.name == "accuracy":
                lo, hi = r.accuracy_interval or (None, None)
                row["accuracy_lo"], row["accuracy_hi"], row["seeds"] = lo, hi, r.seeds
            elif o.name == "throughput":
                row["throughput_lo"], row["throughput_hi"] = r.throughput_interval or (None, None)
        if p_front:
            row["p_front"] = p_front.get(r.number)
        row["throughput_iqr"] = r.throughput.get("iqr")
        row["params"] = r.params
        row["flops"] = r.flops
        row["placement"] = r.placement
        row["arch_id"] = r.arch_id
        row["reused_by"] = list(r.reused_by)
        rows.append(row)
    return rows
