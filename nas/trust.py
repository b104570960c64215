"""How far to trust the proxy: the lines ``nas status``, ``nas report`` and the dashboard show after ``nas calibrate``
and ``nas validate``, always beside their **ceiling** — and how far to trust the throughputs (a loaded device, a
settled order: nas.settle).

A rank agreement between a proxy and a longer training is bounded by how well the longer training agrees with
*itself*: two training seeds of the same architectures at the same budget rank them alike only so far (the lab's
table: benchmarks/RESULTS.md, "Seed noise of the lab table"). So each τ is shown next to the seed-vs-seed τ of the
budget it is compared with, and the warning speaks of their ratio: a proxy at τ 0.35 against a ceiling of 0.4 ranks
about as well as anything can; one at τ 0.35 against a ceiling of 0.9 does not.
"""

from __future__ import annotations

from typing import Any

from nas.study_record import StudyRecord

TRUST_TAU = 0.6  # with no ceiling measured: below it, the proxy's ranking is not to be trusted
TRUST_RATIO = 0.75  # with a ceiling: below this share of it, the proxy ranks worse than the noise explains


def _tau(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def trust_lines(study: Any) -> list[str]:
    """What calibration and validation said about the proxy, with their ceilings, and a warning when the proxy
    ranked unlike longer training (:func:`trust_warning`)."""
    out, rec = [], StudyRecord.of(study)
    cal = rec.calibration
    if cal:
        out.append(calibration_line(cal))
    val = rec.validation
    if val:
        out.append(validation_line(val))
        warning = trust_warning(val.get("tau"), val.get("ceiling_tau"))
        if warning:
            out.append(warning)
    from nas import settle  # the throughput side: a loaded device, a settled order

    return out + [line for line in (settle.load_line(study), settle.settled_line(study)) if line]


def calibration_line(cal: dict[str, Any]) -> str:
    """One line for a stored calibration (``nas calibrate``'s ``calibration`` attribute)."""
    rec, ref = cal["recommended"], cal["budgets"][-1]
    largest = f"{ref['epochs']} epochs x {ref['train_fraction']:g}"
    ceiling = cal.get("ceiling_tau")
    bar = f"Kendall tau >= {cal.get('bar', 0.8):.2f}" + (f", the ceiling {ceiling:.2f}" if ceiling is not None else "")
    if (rec["epochs"], rec["train_fraction"]) == (ref["epochs"], ref["train_fraction"]):
        line = f"no budget cheaper than {largest} ({rec['compute']:g}x the proxy's compute) ranked like it "
        line += f"({bar}; the proxy: {_tau(cal['budgets'][0].get('tau_mean', cal['budgets'][0]['tau']))})"
    else:
        line = f"the cheapest budget ranking like {largest} ({bar}) is {rec['epochs']} epochs x "
        line += f"{rec['train_fraction']:g} ({rec['compute']:g}x the proxy's compute)"
    if ceiling is not None:
        line += f"; two seeds of {largest} agree at tau {ceiling:.2f}"
    return f"calibration ({cal['at'][:16]}): {line}"


def trust_warning(tau: float | None, ceiling: float | None = None) -> str | None:
    """The one-line warning when the proxy ranked unlike longer training: below ``TRUST_RATIO`` of the ceiling
    (two seeds of the longer training against each other) when it was measured, else below ``TRUST_TAU``."""
    if tau is None:
        return None
    fix = "trust the validated front (nas export --validated) or calibrate the proxy budget (nas calibrate)"
    if ceiling is not None and ceiling > 0:
        if tau >= TRUST_RATIO * ceiling:
            return None
        return (
            f"warning: the proxy ranks unlike longer training (Kendall tau {tau:.2f}, {tau / ceiling:.2f} of the "
            f"ceiling {ceiling:.2f} that two seeds of the longer training reach; below {TRUST_RATIO}); {fix}"
        )
    if tau >= TRUST_TAU:
        return None
    return f"warning: the proxy ranks unlike longer training (Kendall tau {tau:.2f} < {TRUST_TAU}); {fix}"


def validation_line(val: dict[str, Any]) -> str:
    """One line for a stored validation summary (``nas validate``'s ``validation`` attribute)."""
    kept = f"{len(val['survivors'])}/{len(val['survivors']) + len(val['lost'])}"
    seeds = val.get("seeds", 1)
    ceiling = val.get("ceiling_tau")
    line = (
        f"validation ({val['at'][:16]}): {len(val['pairs'])} architectures retrained at {val['budget']['epochs']} "
        f"epochs x {val['budget']['train_fraction']:g}"
        + (" on the test split" if "val_fraction" in val["budget"] and val["budget"]["val_fraction"] is None else "")
        + (f", {seeds} seeds each" if seeds > 1 else "")
        + f"; Kendall tau proxy vs validated {_tau(val.get('tau'))}"
        + (f" (ceiling: seed vs seed {ceiling:.2f})" if ceiling is not None else "")
        + f"; {kept} proxy-front members stay on the validated front"
    )  # fmt: skip
    expected = val.get("survival")
    if expected:
        line += (f" (expected {expected['mean']:.1f}, 90 % range {expected['lo']}–{expected['hi']} over resampled "
                 "seeds and images)")  # fmt: skip
    return line
