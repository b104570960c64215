"""The lab's truth (issue 28): what a replayed search is scored on, and which of the table's training seeds it sees.

Three truths, chosen with ``python -m benchmarks.search_lab run --truth``:

* ``proxy`` — issue 17's: the search sees every training seed of the table, the truth is their mean. Kept for
  comparison only: an architecture raced to three replicates knows its "truth" exactly, so it favours replication.
* ``heldout`` — cross-fitting, no new training: run seed ``s`` holds out training seed ``s mod n`` (so the held-out
  seed rotates over the table's seeds as the search seeds do); the search sees only the other seeds (its replicates
  cycle over them: :meth:`nas.engine.replay.Table.with_seeds`) and the truth is the held-out seed's final accuracy.
* ``target`` — the search sees every proxy seed; the truth is the mean final accuracy of the *target-scale* seed
  columns (benchmarks/tables/fmnist_target.seed*.json: the whole training set, longer, the official test set; see
  studies/fmnist_target_s10.yaml), which no replay ever shows.

One held-out seed is itself a noisy truth: even a search that reported every architecture at the mean of the seeds
it can see would miss part of the held-out front. So a score may be relative to the **ceiling** — the hypervolume,
at the truth, of the front of every architecture estimated by its visible mean — rather than to the true front
(``relative``: ``ceiling``, the held-out default, or ``front``, the proxy's and the target's default). Both numbers
are printed by the lab.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from nas.engine.replay import Table
from nas.pareto import normalized_hypervolume, pareto_front

DIRECTIONS = ["maximize", "maximize"]  # accuracy, throughput
KINDS = ("proxy", "heldout", "target")
TARGET = Path(__file__).resolve().parent / "tables" / "fmnist_target.json"  # its seed columns lie beside it


@dataclass(frozen=True)
class Truth:
    """A lab run's truth: each architecture's true final accuracy, the positions of the table's training seeds the
    search may see (``visible``, into :meth:`TableArch.curves`), and what a score is relative to."""

    kind: str
    acc: dict[str, float]
    visible: tuple[int, ...]
    relative: str = "front"  # "front" | "ceiling"
    label: str = ""

    def search_table(self, table: Table) -> Table:
        """What the search replays: the table with only the visible seeds (the table itself when it sees all)."""
        return table if len(self.visible) == table.n_seeds else table.with_seeds(list(self.visible))

    def point(self, table: Table, arch_id: str) -> list[float]:
        """An architecture's true point: (true accuracy, throughput)."""
        return [self.acc[arch_id], table.archs[arch_id].throughput["median"]]

    def bounds(self, table: Table) -> tuple[list[float], list[float]]:
        """The hypervolume's bounds: the range of each true objective over the table."""
        accs, tps = list(self.acc.values()), [a.throughput["median"] for a in table.archs.values()]
        return [min(accs), min(tps)], [max(accs), max(tps)]

    def hv(self, table: Table, ids: list[str], bounds: tuple[list[float], list[float]] | None = None) -> float:
        """Normalised hypervolume of the front of ``ids`` placed at their true points (``bounds``: this truth's
        :meth:`bounds` of ``table``, when the caller has them already)."""
        lo, hi = bounds or self.bounds(table)
        return normalized_hypervolume([self.point(table, a) for a in ids], DIRECTIONS, lo, hi)

    def front(self, table: Table) -> list[str]:
        """The true front's architectures."""
        ids = list(table.archs)
        return [ids[i] for i in pareto_front([self.point(table, a) for a in ids], DIRECTIONS)]

    def ceiling(self, table: Table) -> float:
        """Share of the true front's hypervolume held by the front a search would report if it had seen every
        architecture with every visible seed (each at its visible mean): the best any search on this view can do."""
        view = self.search_table(table)
        ids = list(view.archs)
        est = [[statistics.fmean(c.val_acc[-1] for c in view.archs[a].curves()), view.archs[a].throughput["median"]]
               for a in ids]  # fmt: skip
        return self.hv(table, [ids[i] for i in pareto_front(est, DIRECTIONS)]) / self.hv(table, list(table.archs))

    def total(self, table: Table) -> float:
        """The hypervolume a score of 1 means: the true front's, or the ceiling's."""
        whole = self.hv(table, list(table.archs))
        return whole * self.ceiling(table) if self.relative == "ceiling" else whole


def proxy(table: Table) -> Truth:
    """Issue 17's truth: the mean over every training seed, all of them visible."""
    acc = {a: t.mean_final for a, t in table.archs.items()}
    return Truth("proxy", acc, tuple(range(table.n_seeds)), "front", f"mean of the {table.n_seeds} seeds it sees")


def heldout(table: Table, run_seed: int, relative: str = "ceiling") -> Truth:
    """Cross-fitting: training seed ``run_seed mod n`` is the truth, the search sees the others.

    Raises:
        SystemExit: the table has a single training seed (nothing to hold out).
    """
    n = table.n_seeds
    if n < 2:
        raise SystemExit(f"error: --truth heldout needs a table of several training seeds; {table.source} has 1")
    k = run_seed % n
    acc = {a: t.curves()[k].val_acc[-1] for a, t in table.archs.items()}
    return Truth("heldout", acc, tuple(i for i in range(n) if i != k), relative, f"seed position {k} held out")


def target_accuracies(path: Path = TARGET) -> tuple[dict[str, float], list[int]]:
    """The mean final accuracy of every architecture over the target seed columns beside ``path``, and the seeds.

    Raises:
        SystemExit: no column, or an architecture missing from one (one line: how far the build is, how to go on).
    """
    from benchmarks.lab_seeds import read_column

    paths = sorted(path.parent.glob(f"{path.stem}.seed*.json"))
    if not paths:
        raise SystemExit(f"error: no target column beside {path}; build one (studies/fmnist_target_s10.yaml says how)")
    cols = [read_column(p) for p in paths]
    common = set.intersection(*(set(c["archs"]) for c in cols))
    of = cols[0]["provenance"].get("of")
    if of is None or len(common) < of:
        done = ", ".join(f"{p.name} {len(c['archs'])}" for p, c in zip(paths, cols, strict=True))
        raise SystemExit(f"error: the target columns are incomplete ({done} of {of}); finish the build first")
    acc = {a: statistics.fmean(c["archs"][a]["val_acc"][-1] for c in cols) for a in common}
    return acc, [c["provenance"]["train_seed"] for c in cols]


def target(table: Table, relative: str = "front", path: Path = TARGET) -> Truth:
    """The target-scale truth: the mean over the target columns; the search sees every proxy seed.

    Raises:
        SystemExit: incomplete columns, or columns of other architectures than the table's.
    """
    acc, seeds = target_accuracies(path)
    if set(acc) != set(table.archs):
        raise SystemExit(f"error: the target columns hold other architectures than {table.source}")
    label = f"target seeds {seeds} (mean)"
    return Truth("target", acc, tuple(range(table.n_seeds)), relative, label)


def default_kind(table: Table, path: Path = TARGET) -> str:
    """The lab's default truth: the target once its columns are complete for this table, else held-out seeds."""
    try:
        acc, _ = target_accuracies(path)
    except SystemExit:
        return "heldout" if table.n_seeds > 1 else "proxy"
    return "target" if set(acc) == set(table.archs) else "heldout"


def make(kind: str, table: Table, run_seed: int, relative: str | None = None) -> Truth:
    """The truth ``kind`` (one of :data:`KINDS`) of run ``run_seed``, scored relative to ``relative`` (default: the
    kind's own)."""
    if kind == "proxy":
        t = proxy(table)
    elif kind == "heldout":
        t = heldout(table, run_seed)
    elif kind == "target":
        t = target(table)
    else:
        raise SystemExit(f"error: --truth {kind!r}: choose one of {', '.join(KINDS)}")
    if relative is not None and relative != t.relative:
        t = Truth(t.kind, t.acc, t.visible, relative, t.label)
    return t


def ceilings(table: Table, draws: int = 200) -> str:
    """Why replicates can or cannot pay off held out: for each held-out seed, the share of its true front that a
    search would report if it knew every architecture at the mean of all its visible seeds (the ceiling), against
    knowing each at one visible seed drawn at random (what a search without replicates sees, mean and 95 % range
    over ``draws`` draws). Replicates can only pay where the first exceeds the second."""
    import numpy as np

    ids = list(table.archs)
    tp = [table.archs[a].throughput["median"] for a in ids]
    finals = np.array([[c.val_acc[-1] for c in table.archs[a].curves()] for a in ids]).T  # (seeds, archs)
    lines = ["| held-out seed position | ceiling: every architecture at its visible mean | one visible seed each "
             "(mean, 95 % range) |", "|---|---|---|"]  # fmt: skip
    rng = np.random.default_rng(0)
    for k in range(table.n_seeds):
        t = heldout(table, k, relative="front")
        whole = t.hv(table, ids)

        def share(est: np.ndarray, t: Truth = t, whole: float = whole) -> float:
            front = pareto_front(np.column_stack([est, tp]), DIRECTIONS)
            return t.hv(table, [ids[i] for i in front]) / whole

        one = [share(finals[rng.choice(t.visible, len(ids)), np.arange(len(ids))]) for _ in range(draws)]
        lo, hi = np.percentile(one, [2.5, 97.5])
        lines.append(f"| {k} | {share(finals[list(t.visible)].mean(0)):.3f} | {np.mean(one):.3f} ({lo:.3f}–{hi:.3f}) |")
    return "\n".join(lines)
