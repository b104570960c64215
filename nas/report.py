"""``nas report``: which mixer belongs in which stage, and why — the placement insight report of a finished study.

**Effects.** For each objective, an additive model over the COMPLETE full-fidelity trials (one per architecture):
``y = b0 + sum_stages effect[stage, mixer]``, accuracy in percentage points and every other objective on a log scale
(shown as % change: a mixer makes a stage faster or slower by a factor, not by a fixed number of images/s). Effects
are centred per stage (each stage's effects average to 0), so a mixer's effect reads "compared with the average
choice at that stage". Fitted by least squares with a tiny ridge (the one-hot design is rank-deficient by
construction); 95 % intervals by bootstrap over trials, and for accuracy over training seeds as well. Why this and
not fANOVA (Optuna's importance): fANOVA says how much each stage's choice matters, not which mixer helps or hurts
and by how much with what uncertainty — a signed per-mixer effect with an interval is the claim a researcher checks
(e.g. the SKA paper's §6.3, "static-key mixers work best in an intermediate stage": compare ska's and cska's
accuracy effects across stages). The model ignores interactions between stages; its R^2 says how much of the
variation placement explains on its own.

**Front.** Per stage, how often each mixer appears on the front against among all complete trials; and the knee
(nas.pareto.knee_point), with what it trades against the front's extremes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas import layout, pareto, results, trust
from nas.errors import StudyError
from nas.evaluation import PRIOR_SEED_SD, pooled_seed_sd
from nas.layout import Objective
from nas.study_record import StudyRecord

RIDGE = 1e-6
BOOTSTRAP = 400


@dataclass
class Effect:
    stage: int
    mixer: str
    n: int  # trials with this mixer at this stage
    estimate: float
    low: float
    high: float


@dataclass
class ObjectiveEffects:
    objective: str
    unit: str  # "pp" (percentage points) or "%"
    r2: float
    effects: list[Effect] = field(default_factory=list)


def stage_mixers(rec: results.TrialRecord) -> list[str]:
    return [
        "+".join(st["mixer"]) if isinstance(st["mixer"], list) else st["mixer"] for st in (rec.arch or {})["stages"]
    ]


def _design(rows: list[list[str]], levels: list[list[str]]) -> np.ndarray:
    cols = [np.ones(len(rows))]
    for i, lv in enumerate(levels):
        for m in lv:
            cols.append(np.array([1.0 if r[i] == m else 0.0 for r in rows]))
    return np.stack(cols, axis=1)


def _fit(x: np.ndarray, y: np.ndarray, levels: list[list[str]]) -> tuple[list[np.ndarray], float]:
    """Centred per-stage effects and R^2 of the ridge least-squares fit."""
    reg = RIDGE * np.eye(x.shape[1])
    reg[0, 0] = 0.0  # no penalty on the intercept
    coef = np.linalg.solve(x.T @ x + reg, x.T @ y)
    fitted = x @ coef
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - fitted) ** 2)) / ss if ss > 0 else float("nan")
    out, k = [], 1
    for lv in levels:
        c = coef[k : k + len(lv)]
        out.append(c - c.mean())
        k += len(lv)
    return out, r2


def _seed_world(recs: list[results.TrialRecord], rng: np.random.Generator, seed_sd: float) -> np.ndarray:
    """One resampled world of accuracies: each architecture's mean over its seeds drawn with replacement, or, with
    one seed, its accuracy plus a normal draw of the pooled seed SD (nas.evaluation.pooled_seed_sd)."""
    out = np.empty(len(recs))
    for i, r in enumerate(recs):
        k = len(r.seed_values)
        out[i] = rng.choice(r.seed_values, k).mean() if k >= 2 else r.values["accuracy"] + rng.normal(0.0, seed_sd)
    return out


def effects(recs: list[results.TrialRecord], objectives: list[Objective], seed: int = 0) -> list[ObjectiveEffects]:
    """Each mixer's centred effect per stage on each objective, with its 95 % bootstrap interval: over trials, and
    for accuracy over training seeds as well (:func:`_seed_world`)."""
    rows = [stage_mixers(r) for r in recs]
    if len(rows) < 3:
        return []
    n = max(len(r) for r in rows)
    rows = [r + ["(none)"] * (n - len(r)) for r in rows]  # spaces fix the stage count; a hand-made study may not
    levels = [sorted({r[i] for r in rows}) for i in range(n)]
    x = _design(rows, levels)
    rng, seeds_rng = random.Random(seed), np.random.default_rng(seed)
    seed_sd = pooled_seed_sd([r.seed_values for r in recs], PRIOR_SEED_SD)
    out = []
    for o in objectives:
        raw = np.array([r.values[o.name] for r in recs], dtype=float)
        pp = o.name == "accuracy"
        y = 100.0 * raw if pp else np.log(np.maximum(raw, 1e-12))
        est, r2 = _fit(x, y, levels)
        boots: list[list[np.ndarray]] = []
        for _ in range(BOOTSTRAP):
            idx = [rng.randrange(len(rows)) for _ in rows]
            xb = x[idx]
            yb = 100.0 * _seed_world(recs, seeds_rng, seed_sd)[idx] if pp else y[idx]
            present = xb.any(axis=0)
            fit, _ = _fit(xb, yb, levels)
            k, masked = 1, []
            for lv, f in zip(levels, fit, strict=True):  # a level absent from the resample has no estimate there
                masked.append(np.where(present[k : k + len(lv)], f, np.nan))
                k += len(lv)
            boots.append(masked)
        oe = ObjectiveEffects(o.name, "pp" if pp else "%", r2)
        for i, lv in enumerate(levels):
            for j, m in enumerate(lv):
                samples = np.array([b[i][j] for b in boots if not math.isnan(b[i][j])])
                lo, hi = np.percentile(samples, [2.5, 97.5]) if len(samples) else (np.nan, np.nan)
                e, lo, hi = float(est[i][j]), float(lo), float(hi)
                if not pp:
                    e, lo, hi = (100.0 * (math.exp(v) - 1.0) for v in (e, lo, hi))
                oe.effects.append(Effect(i, m, sum(r[i] == m for r in rows), e, lo, hi))
        out.append(oe)
    return out


def _knee_text(front: list[results.TrialRecord], objectives: list[Objective]) -> str:
    points = [[r.values[o.name] for o in objectives] for r in front]
    knee = front[int(pareto.knee_point(points, [o.direction for o in objectives]))]
    parts = []
    for o in objectives:
        best = max(front, key=lambda r: r.values[o.name] * (1 if o.direction == "maximize" else -1))
        if best.number != knee.number:
            ratio = knee.values[o.name] / best.values[o.name] if best.values[o.name] else float("nan")
            parts.append(f"{100 * ratio:.1f} % of the best {o.name} (trial {best.number})")
    why = "; ".join(parts) if parts else "it is the best at every objective"
    return (f"**Knee: trial {knee.number}, `{knee.placement}`** — "
            + ", ".join(f"{o.name} {knee.values[o.name]:.4g}" for o in objectives)
            + f". It is the front point farthest from the line joining the front's extremes (objectives normalised): "
            f"it keeps {why}.")  # fmt: skip


def build(study: Any) -> str:
    """The report as Markdown."""
    objs = results.objectives_of(study)
    recs = results.records(study)
    done = results.eligible(recs, objs)
    front = results.front(recs, objs)
    lines = [f"# Placement report: study `{study.study_name}`", ""]
    if len(done) < 3:
        return "\n".join([*lines, "Fewer than 3 complete full-fidelity trials: nothing to report yet.", ""])
    lines += [f"{len(done)} complete full-fidelity architectures, {len(front)} on the Pareto front "
              f"({', '.join(f'{o.name} ({o.direction})' for o in objs)}).", ""]  # fmt: skip
    n_stages = max(len(stage_mixers(r)) for r in done)
    all_counts = [_count(done, i) for i in range(n_stages)]
    front_counts = [_count(front, i) for i in range(n_stages)]
    fx = effects(done, objs, seed=0)
    trust_lines = trust.trust_lines(study)
    unchecked = (
        "Not checked yet: `nas validate STUDY` retrains the front at a larger budget and measures how well the "
        "proxy ranks (Kendall tau); `nas calibrate STUDY_FILE` picks the proxy budget first."
    )
    lines += ["## How far to trust it", "", *([f"- {t}" for t in trust_lines] or [unchecked]), ""]
    lines += ["## Effect of each mixer, per stage", "",
              "Centred per stage: a mixer's effect against the average choice at that stage; 95 % bootstrap "
              "interval in brackets, over trials and, for accuracy, over training seeds too (each architecture's "
              "replicates, or the pooled seed-to-seed SD where it has one seed); an interval that excludes 0 is "
              "marked *, one without * is inside the noise. Accuracy in percentage points, the other objectives in "
              "% change.", ""]  # fmt: skip
    head = "| stage | mixer | trials | on front | " + " | ".join(f"{e.objective} ({e.unit})" for e in fx) + " |"
    lines += [head, "|" + "---|" * (4 + len(fx))]
    for i in range(n_stages):
        for m in sorted(all_counts[i]):
            cells = [str(i), f"`{m}`", str(all_counts[i][m]), f"{front_counts[i].get(m, 0)}/{len(front)}"]
            for e in fx:
                eff = next(x for x in e.effects if x.stage == i and x.mixer == m)
                sig = "*" if eff.low > 0 or eff.high < 0 else ""
                cells.append(f"{eff.estimate:+.2f} [{eff.low:+.2f}, {eff.high:+.2f}]{sig}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "R² of the additive model (how much placement alone explains): "
              + ", ".join(f"{e.objective} {e.r2:.2f}" for e in fx) + ".", ""]  # fmt: skip
    free = 1 + sum(len(c) - 1 for c in all_counts)  # intercept + one effect per extra mixer of each stage
    if len(done) < 3 * free:
        lines += [f"**Few trials for this model**: {len(done)} trials for {free} free effects (fewer than 3 per "
                  "effect), so the fit nearly interpolates (R² near 1 by construction) and the effects are "
                  "indicative only; more trials (`nas search` again) narrow them.", ""]  # fmt: skip
    lines += _transfer_lines(study, fx, objs)
    lines += ["## The front", "", _knee_text(front, objs), "", "| trial | placement | "
              + " | ".join(o.name for o in objs) + " |", "|---|---|" + "---|" * len(objs)]  # fmt: skip
    for r in front:
        lines.append(f"| {r.number} | `{r.placement}` | " + " | ".join(_value(r, o) for o in objs) + " |")
    lines += ["", *_noise_lines(front, objs)]
    lines += ["", "## Best mixer per stage, by objective", ""]
    for e, o in zip(fx, objs, strict=True):
        best, sign = [], 1.0 if o.direction == "maximize" else -1.0
        for i in range(n_stages):
            top = max((x for x in e.effects if x.stage == i), key=lambda x: sign * x.estimate)
            best.append(f"stage {i}: `{top.mixer}` ({top.estimate:+.2f} {e.unit})")
        lines.append(f"- **{e.objective}** — " + "; ".join(best))
    return "\n".join(lines) + "\n"


def transfer_verdict(proxy: Effect, validated: Effect | None) -> str:
    """Whether a proxy effect holds at a larger budget, from the two 95 % intervals: ``holds`` (both exclude 0, same
    sign), ``reversed`` (both exclude 0, opposite signs), ``gone there`` (the proxy's excludes 0, the validated one
    does not), ``appears there`` (only the validated one excludes 0), ``inside the noise at both``, or
    ``not validated``."""
    if validated is None:
        return "not validated"
    p_sure, v_sure = proxy.low > 0 or proxy.high < 0, validated.low > 0 or validated.high < 0
    if p_sure and v_sure:
        return "holds" if (validated.estimate > 0) == (proxy.estimate > 0) else "reversed"
    if p_sure:
        return "gone there"
    return "appears there" if v_sure else "inside the noise at both"


def _transfer_lines(study: Any, fx: list[ObjectiveEffects], objs: list[Objective]) -> list[str]:
    """Whether each accuracy effect of the proxy holds at the budget ``nas validate`` retrained at (issue 28): the same
    model fitted on the validated architectures (their seed means), effect by effect — *holds* (same sign, the
    validated interval excludes 0), *reversed* (both intervals exclude 0, opposite signs), otherwise inside the noise
    there. Nothing without a validation or an accuracy objective."""
    val = StudyRecord.of(study).validation
    proxy = next((e for e in fx if e.objective == "accuracy"), None)
    if not val or not val.get("substudy") or proxy is None:
        return []
    try:
        sub = results.open_study(val["substudy"], layout.url_of(study) or None)
    except StudyError:
        return []
    done = results.eligible(results.records(sub), results.objectives_of(sub))
    at = next((e for e in effects(done, [o for o in objs if o.name == "accuracy"], seed=0)), None)
    budget = val.get("budget") or {}
    where = f"{budget.get('epochs')} epochs x {budget.get('train_fraction')} of the data" + (
        ", the test split" if budget.get("val_fraction") is None else ""
    )
    lines = ["## Does the proxy's effect hold at the validation budget?", "",
             f"The accuracy model refitted on the {len(done)} architectures `nas validate` retrained ({where}; each "
             "its seeds' mean). *holds*: both intervals exclude 0, same sign; *reversed*: both exclude 0, opposite "
             "signs; *gone there* / *appears there*: only the proxy's / the validated one excludes 0.", ""]  # fmt: skip
    if at is None:
        return [*lines, "Fewer than 3 validated architectures: nothing to compare.", ""]
    free = 1 + sum(len({x.mixer for x in at.effects if x.stage == i}) - 1 for i in {x.stage for x in at.effects})
    few = len(done) < 3 * free  # the fit nearly interpolates: no verdict from it
    lines += ["| stage | mixer | proxy (pp) | validated (pp) | verdict |", "|---|---|---|---|---|"]
    there = {(e.stage, e.mixer): e for e in at.effects}
    for e in proxy.effects:
        v = there.get((e.stage, e.mixer))
        shown = "—" if v is None else f"{v.estimate:+.2f} [{v.low:+.2f}, {v.high:+.2f}]"
        lines.append(f"| {e.stage} | `{e.mixer}` | {e.estimate:+.2f} [{e.low:+.2f}, {e.high:+.2f}] | {shown} | "
                     f"{'—' if few and v is not None else transfer_verdict(e, v)} |")  # fmt: skip
    if few:
        lines += ["", f"**Too few validated architectures for a verdict**: {len(done)} for {free} free effects (fewer "
                  "than 3 each): the validated effects are shown, not judged; `nas validate --random M` retrains "
                  "more.",]  # fmt: skip
    return [*lines, ""]


def _value(r: results.TrialRecord, o: Objective) -> str:
    """An objective's value; an accuracy with its 95 % interval over the validation images when it has one."""
    v = f"{r.values[o.name]:.4g}"
    iv = r.accuracy_interval if o.name == "accuracy" else None
    return f"{v} [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else v


def _noise_lines(front: list[results.TrialRecord], objectives: list[Objective]) -> list[str]:
    """What the accuracy intervals mean, and whether the front's two most accurate members differ by more than the
    validation images' noise (paired on the same images: nas.evaluation.compare)."""
    if not any(o.name == "accuracy" for o in objectives) or not any(r.accuracy_interval for r in front):
        return []
    out = ["Accuracy intervals (brackets): 95 % Wilson intervals over the validation images only; another "
           "training seed moves an accuracy by about as much again, which only replicates of it measure."]  # fmt: skip
    top = sorted((r for r in front if r.val_correct), key=lambda r: -r.values["accuracy"])[:2]
    if len(top) == 2 and top[0].val_set == top[1].val_set:
        from nas.evaluation import compare

        c = compare(top[0].val_correct, top[1].val_correct)
        verdict = "a difference the images settle" if c.settled else "inside the noise of the validation images"
        out.append(f"The front's most accurate trial {top[0].number} minus the next, trial {top[1].number}, paired "
                   f"on the same images: {c.describe()} — {verdict}.")  # fmt: skip
    return [*out, ""]


def _count(recs: list[results.TrialRecord], stage: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in recs:
        mixers = stage_mixers(r)
        m = mixers[stage] if stage < len(mixers) else "(none)"
        out[m] = out.get(m, 0) + 1
    return out


def to_html(markdown: str) -> str:
    """The report's Markdown as HTML for the dashboard: headings, paragraphs, bullets, pipe tables, `code`, **bold**
    (all this report uses)."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    out, table, bullets = [], [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|(\s*-+\s*\|)+", r.replace(" ", ""))]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table class='front'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()
        if bullets:
            out.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level + 1}>{inline(line.lstrip('#').strip())}</h{level + 1}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "".join(out)
