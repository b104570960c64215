"""Progress of a running study on the terminal: one line per event (works in CI logs and terminals alike) and the
Pareto front at the end."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from nas.fmt import cell


class Progress:
    """Prints trial events as they happen; ``quiet`` keeps only the summary."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.t0 = time.time()
        self.counts: dict[str, int] = {}
        self.epochs = 0

    def begin(self, cfg: Any, store: Any, recovered: list[int]) -> None:
        n = len(store.study.trials)
        self.console.print(
            f"[bold]study[/] {cfg.name}  storage {store.url}  existing trials {n}  "
            f"budget {cfg.budget.n_trials} trials, {cfg.budget.max_concurrent} at a time  "
            f"pruner {cfg.pruner.name}  sampler {cfg.sampler.name}"
        )
        if recovered:
            self.console.print(
                f"[yellow]recovered[/] trials {recovered} left RUNNING by a dead driver: FAIL, queued again"
            )

    def event(self, kind: str, info: dict[str, Any]) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "epoch":
            self.epochs += 1
        if self.quiet:
            return
        t = f"[dim]{time.time() - self.t0:7.1f}s[/]"
        n = info.get("number")
        if kind == "start":
            msg = f"trial {n:>3} [cyan]start[/]    {info['placement']}  ({info['params']:,} params)"
        elif kind == "epoch":
            msg = (
                f"trial {n:>3} epoch {info['epoch']:<3} val_acc {info['val_acc']:.4f}  "
                f"loss {info['train_loss']:.3f}  {info['images_per_s']:.0f} img/s"
            )
        elif kind == "complete":
            vals = ", ".join(f"{v:.4g}" for v in info["values"])
            msg = f"trial {n:>3} [green]COMPLETE[/] values ({vals})"
        elif kind == "pruned":
            msg = f"trial {n:>3} [yellow]PRUNED[/]   at epoch {info.get('pruned_at')}"
        elif kind == "fail":
            msg = f"trial {n:>3} [red]FAIL[/]     {info.get('failure')}"
        elif kind == "reused":
            msg = f"trial {n:>3} [blue]reused[/]   {info['placement']} = trial {info['source']} ({info['state']})"
        elif kind == "waiting":
            msg = f"trial {n:>3} [blue]waits[/]    {info['placement']} = trial {info['source']}, still training"
        elif kind == "stopped":
            msg = f"[yellow]sampling stopped[/]: {info['reason']}"
        elif kind == "infeasible":
            msg = f"trial {n:>3} [dim]rejected before training: {info['reason']}[/]"
        else:
            msg = f"{kind} {info}"
        self.console.print(f"{t} {msg}")

    def end(self, summary: Any) -> None:
        c = summary.counts
        self.console.print(
            f"[bold]done[/] in {summary.seconds:.1f}s: this run added {summary.added} trials; study now has "
            + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        )
        if summary.stop_reason:
            self.console.print(f"[yellow]stopped before the budget was spent[/]: {summary.stop_reason}")
        if not summary.front:
            self.console.print("no COMPLETE trial at full fidelity yet: no Pareto front")
            return
        table = Table(title=f"Pareto front of '{summary.study}'")
        cols = [k for k in summary.front[0] if k not in ("number", "placement")]
        for col in ["trial", "placement", *cols]:
            table.add_column(col)
        for row in summary.front:
            table.add_row(str(row["number"]), str(row["placement"]), *[cell(row[k]) for k in cols])
        self.console.print(table)
