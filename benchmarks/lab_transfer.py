"""How far the lab table's rankings can be trusted: an early epoch against the last (``fidelity``), one training seed
against another (``seed_fidelity``), and the proxy against the scale the user trains (``transfer``, issue 28).

    python -m benchmarks.search_lab fidelity      # epochs and seeds of the table (and table v2's ceilings)
    python -m benchmarks.search_lab transfer      # works on partial target columns too (says how many)

``transfer`` sets the proxy table (8 epochs on 15 % of Fashion-MNIST, 3,000 held-out images, three seeds) against
its target-scale columns (the whole training set, 3 epochs, the official 10,000-image test set, two seeds no proxy
column uses: studies/fmnist_target_s10.yaml). Every figure carries its 95 % interval (bootstrap over architectures)
and its ceiling beside it: the target's own seed-vs-seed Kendall τ is the best agreement any proxy can show with one
target seed, and the target front is uncertain too (P(on the target front) resamples each architecture's target
mean within its seed noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lab_seeds import read_column
from nas.engine.replay import Table
from nas.pareto import pareto_front

DIRECTIONS = ["maximize", "maximize"]


def _boot_ci(stat: Any, n: int, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat(index array)`` over resampled architectures."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(resamples)]
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def tau_ci(x: np.ndarray, y: np.ndarray, resamples: int = 2000) -> str:
    """Kendall τ of x and y with its 95 % bootstrap interval over architectures, as text."""
    from nas.stats import kendall_tau

    lo, hi = _boot_ci(lambda d: kendall_tau(x[d], y[d]), len(x), resamples)
    return f"{kendall_tau(x, y):.2f} ({lo:.2f}–{hi:.2f})"


def front_probability(acc: np.ndarray, sd: np.ndarray, tp: np.ndarray, draws: int = 2000) -> np.ndarray:
    """P(on the front) of each architecture when its accuracy is drawn ~ N(acc, sd) (its mean's seed noise)."""
    rng = np.random.default_rng(1)
    hits = np.zeros(len(acc))
    for _ in range(draws):
        a = acc + rng.standard_normal(len(acc)) * sd
        hits[pareto_front(np.column_stack([a, tp]), DIRECTIONS)] += 1
    return hits / draws


# ---------------------------------------------------------------------------------------------- fidelity
def fidelity(table: Table) -> str:
    """Kendall/Spearman tau of the accuracy at each epoch against the last, and how much of the true front the
    front at that epoch (accuracy at the epoch, throughput) already holds."""
    from scipy.stats import kendalltau, spearmanr

    archs = list(table.archs.values())
    final = [a.val_acc[-1] for a in archs]
    true = set(pareto_front([[a.val_acc[-1], a.throughput["median"]] for a in archs], DIRECTIONS))
    lines = [
        "| epoch | Kendall τ vs last | Spearman ρ | true-front members on the epoch's front | epoch's front size |",
        "|---|---|---|---|---|",
    ]
    for e in range(1, table.epochs + 1):
        acc = [a.val_acc[e - 1] for a in archs]
        tau, rho = kendalltau(acc, final)[0], spearmanr(acc, final)[0]
        front = set(pareto_front([[a.val_acc[e - 1], a.throughput["median"]] for a in archs], DIRECTIONS))
        lines.append(f"| {e} | {tau:.3f} | {rho:.3f} | {len(front & true)}/{len(true)} | {len(front)} |")
    return "\n".join(lines)


def seed_fidelity(table_path: Path, resamples: int = 2000) -> str:
    """How much one training seed says about another, on the architectures every seed column has so far (partial
    columns too): seed-vs-seed Kendall tau with a 95 % bootstrap interval over architectures (the ceiling of any
    rank agreement on this table), the seed spread against the spread of the means, and each epoch of seed 0
    against seed 0's own last epoch, against the other seeds' mean (an independent truth) and against the ceiling."""
    table = Table.load(table_path)
    cols = [read_column(p) for p in sorted(table_path.parent.glob(f"{table_path.stem}.seed*.json"))]
    if not cols:
        return "no seed column yet: nothing to compare seed 0 with"
    ids = sorted(set(table.archs).intersection(*(c["archs"] for c in cols)))
    seeds = [np.array([table.archs[a].val_acc[-1] for a in ids])]
    seeds += [np.array([c["archs"][a]["val_acc"][-1] for a in ids]) for c in cols]
    labels = [0, *(c["provenance"]["train_seed"] for c in cols)]

    def ci(x: np.ndarray, y: np.ndarray) -> str:
        return tau_ci(x, y, resamples)

    per = np.stack(seeds)  # (seeds, archs)
    lines = [f"{len(ids)} architectures with seeds {labels} (of {len(table.archs)}):", "",
             "| seeds | Kendall τ (95 % CI over architectures) |", "|---|---|"]  # fmt: skip
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            lines.append(f"| {labels[i]} vs {labels[j]} | {ci(seeds[i], seeds[j])} |")
    within = float(np.sqrt(per.var(axis=0, ddof=1).mean())) * 100
    lines += ["", f"seed-to-seed SD of one architecture's final accuracy: {within:.2f} pt (root mean variance); "
              f"SD of the {len(seeds)}-seed means across architectures: {per.mean(0).std(ddof=1) * 100:.2f} pt; "
              f"mean |seed 0 − seed {labels[1]}|: {np.abs(seeds[0] - seeds[1]).mean() * 100:.2f} pt", "",
              "| epoch of seed 0 | τ vs seed 0's last epoch | τ vs the other seeds' mean (independent) |",
              "|---|---|---|"]  # fmt: skip
    others = per[1:].mean(0)
    for e in range(1, table.epochs + 1):
        acc = np.array([table.archs[a].val_acc[e - 1] for a in ids])
        lines.append(f"| {e} | {ci(acc, seeds[0])} | {ci(acc, others)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- transfer
def transfer(table_path: Path, target: Path, resamples: int = 2000) -> str:
    """The proxy-vs-target report (see the module docstring), as Markdown.

    Raises:
        SystemExit: no target column beside ``target`` (one line: how to build one).
    """
    table = Table.load(table_path)
    paths = sorted(target.parent.glob(f"{target.stem}.seed*.json"))
    if not paths:
        raise SystemExit(f"error: no target column beside {target}; build one (studies/fmnist_target_s10.yaml)")
    cols = [read_column(p) for p in paths]
    ids = sorted(set(table.archs).intersection(*(c["archs"] for c in cols)))
    if len(ids) < 5:
        return f"only {len(ids)} architectures have every target seed so far: too few to compare"
    seeds = [c["provenance"]["train_seed"] for c in cols]
    tgt = np.array([[c["archs"][a]["val_acc"][-1] for a in ids] for c in cols])  # (target seeds, archs)
    prx = np.array([[c.val_acc[-1] for c in table.archs[a].curves()] for a in ids]).T  # (proxy seeds, archs)
    tp = np.array([table.archs[a].throughput["median"] for a in ids])
    t_mean, p_mean = tgt.mean(0), prx.mean(0)
    of = cols[0]["provenance"].get("of", len(table.archs))
    lines = [f"{len(ids)} of {of} architectures have target seeds {seeds} (and proxy seeds 0–{len(prx) - 1}); "
             "95 % bootstrap intervals over architectures.", "",
             "| comparison | Kendall τ (95 % CI) |", "|---|---|"]  # fmt: skip
    for i in range(len(tgt)):
        for j in range(i + 1, len(tgt)):
            lines.append(f"| target seed {seeds[i]} vs target seed {seeds[j]} (the target's ceiling) | "
                         f"{tau_ci(tgt[i], tgt[j], resamples)} |")  # fmt: skip
    lines.append(f"| proxy 3-seed mean vs target mean | {tau_ci(p_mean, t_mean, resamples)} |")
    for k in range(len(prx)):
        lines.append(f"| proxy seed position {k} vs target mean | {tau_ci(prx[k], t_mean, resamples)} |")
    for k in range(len(prx)):
        others = np.delete(prx, k, axis=0).mean(0)
        lines.append(f"| proxy seeds but {k} vs proxy seed {k} (the proxy's own held-out agreement) | "
                     f"{tau_ci(others, prx[k], resamples)} |")  # fmt: skip
    within_t = float(np.sqrt(tgt.var(axis=0, ddof=1).mean())) * 100 if len(tgt) > 1 else float("nan")
    within_p = float(np.sqrt(prx.var(axis=0, ddof=1).mean())) * 100
    lines += ["", f"Seed-to-seed SD of one architecture's final accuracy: target {within_t:.2f} pt, proxy "
              f"{within_p:.2f} pt; SD of the means across architectures: target {t_mean.std(ddof=1) * 100:.2f} pt, "
              f"proxy {p_mean.std(ddof=1) * 100:.2f} pt; mean accuracy target {t_mean.mean() * 100:.2f} %, proxy "
              f"{p_mean.mean() * 100:.2f} %.", ""]  # fmt: skip
    lines += _fronts(ids, table, p_mean, t_mean, tgt, tp)
    lines += ["", *_effects(ids, table, p_mean, t_mean, resamples)]
    return "\n".join(lines)


def _fronts(ids: list[str], table: Table, p_mean: np.ndarray, t_mean: np.ndarray, tgt: np.ndarray,
            tp: np.ndarray) -> list[str]:  # fmt: skip
    """Which members of the proxy's mean front (over these architectures) are on the target front, with each one's
    P(on the target front) under the target's seed noise."""
    sd = np.sqrt(tgt.var(axis=0, ddof=1).mean() / len(tgt)) if len(tgt) > 1 else 0.0
    p_front = pareto_front(np.column_stack([p_mean, tp]), DIRECTIONS)
    t_front = set(pareto_front(np.column_stack([t_mean, tp]), DIRECTIONS))
    prob = front_probability(t_mean, np.full(len(ids), sd), tp)
    out = [f"Proxy mean front: {len(p_front)} architectures, {len(set(p_front) & t_front)} of them on the target "
           f"front ({len(t_front)} members); P(on the target front) draws each target mean within its seed noise "
           f"(SD of a {len(tgt)}-seed mean {sd * 100:.2f} pt):", "",
           "| proxy front member | proxy acc | target acc | on target front | P(target front) |",
           "|---|---|---|---|---|"]  # fmt: skip
    for i in sorted(p_front, key=lambda i: -p_mean[i]):
        out.append(f"| {table.archs[ids[i]].placement} | {p_mean[i] * 100:.2f} | {t_mean[i] * 100:.2f} | "
                   f"{'yes' if i in t_front else 'no'} | {prob[i]:.2f} |")  # fmt: skip
    return out


def _effects(ids: list[str], table: Table, p_mean: np.ndarray, t_mean: np.ndarray, resamples: int) -> list[str]:
    """Per stage and mixer (and depth): the mean accuracy of the architectures that have it minus the mean of all,
    at the proxy and at the target, in points, with bootstrap intervals; whether the sign holds."""
    params = [table.archs[a].params for a in ids]
    out = ["Per-stage effects (mean accuracy with the choice minus the mean of all, points, 95 % CI):", "",
           "| stage choice | archs | proxy effect | target effect | same sign, both beyond the noise |",
           "|---|---|---|---|---|"]  # fmt: skip
    for key in sorted({k for p in params for k in p}):
        for value in sorted({p[key] for p in params}, key=str):
            has = np.array([p[key] == value for p in params])
            if has.all() or not has.any():
                continue
            if min(has.sum(), (~has).sum()) < 3:  # a bootstrap over one or two architectures is no interval
                out.append(f"| {key} = {value} | {int(has.sum())} | too few architectures | — | — |")
                continue
            cells = []
            signs = []
            for acc in (p_mean, t_mean):

                def eff(d: np.ndarray, acc: np.ndarray = acc, has: np.ndarray = has) -> float:
                    h = has[d]
                    return float(acc[d][h].mean() - acc[d].mean()) if h.any() else float("nan")

                e = eff(np.arange(len(ids)))
                lo, hi = _boot_ci(eff, len(ids), resamples)
                cells.append(f"{e * 100:+.2f} ({lo * 100:+.2f} to {hi * 100:+.2f})")
                signs.append(0 if lo <= 0 <= hi else (1 if e > 0 else -1))
            holds = "yes" if signs[0] == signs[1] != 0 else ("opposite" if signs[0] * signs[1] < 0 else "—")
            out.append(f"| {key} = {value} | {int(has.sum())} | {cells[0]} | {cells[1]} | {holds} |")
    return out
