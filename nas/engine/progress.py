"""Progress of a running study on the terminal.

In a terminal, a live view refreshes in place: the running trials with their epoch and accuracy, counts by state,
the current front and an ETA from the budget. Anywhere else (CI logs, a pipe) or with ``--plain``: one line per
event, which is also what a terminal keeps after the live view ends. The summary and the front close every run.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from nas.fmt import cell, duration
from nas.pareto import pareto_front
from nas.study_record import StudyRecord


class Progress:
    """Reports trial events as they happen; ``quiet`` keeps only the summary, ``live=False`` forces plain lines."""

    def __init__(self, console: Console | None = None, quiet: bool = False, live: bool = True) -> None:
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.live_wanted = live and not quiet and self.console.is_terminal
        self.live: Live | None = None
        self.t0 = time.time()
        self.counts: dict[str, int] = {}
        self.epochs = 0
        self.running: dict[int, dict[str, Any]] = {}
        self.done: dict[int, dict[str, Any]] = {}  # COMPLETE trials: placement and objective values
        self.header, self.budget, self.concurrent, self.objectives = "", None, 1, ["accuracy", "throughput"]
        self.directions = ["maximize", "maximize"]
        self.finished_seconds: list[float] = []

    # ------------------------------------------------------------------------------------------ events
    def begin(self, cfg: Any, store: Any, recovered: list[int]) -> None:
        """The run starts: its header (study, storage, budget, pruner, sampler), the trials recovered from dead
        drivers, and the live view in a terminal."""
        n = len(store.study.trials)
        self.budget, self.concurrent = cfg.budget.n_trials, cfg.budget.max_concurrent
        self.objectives, self.directions = cfg.objective_names, cfg.directions
        self.header = (
            f"[bold]study[/] {cfg.name}  storage {store.url}  existing trials {n}  "
            f"budget {cfg.budget.n_trials} trials, {cfg.budget.max_concurrent} at a time  "
            f"pruner {cfg.pruner.name}  sampler {cfg.sampler.name}"
        )
        self.console.print(self.header)
        val_set = StudyRecord.of(store.study).val_set
        if val_set:  # how precise one evaluation is: the noise every accuracy of this study carries
            from nas.evaluation import precision_note

            line, coarse = precision_note(int(val_set["images"]))
            self.console.print(f"[yellow]warning:[/] {line}" if coarse else line)
        if recovered:
            self.console.print(
                f"[yellow]recovered[/] trials {recovered} left RUNNING by a dead driver: FAIL, queued again"
            )
        if self.live_wanted:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def event(self, kind: str, info: dict[str, Any]) -> None:
        """One driver event (``start``, ``epoch``, ``complete``, ``pruned``, ``fail``, ``reused``, ...): counted, and
        shown live or as one line."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        n = info.get("number")
        if kind == "epoch":
            self.epochs += 1
            self.running.setdefault(n, {}).update(epoch=info["epoch"], val_acc=info["val_acc"])
        elif kind == "start":
            self.running[n] = {"placement": info["placement"], "epoch": 0, "val_acc": None}
        elif kind in ("complete", "pruned", "fail"):
            placement = self.running.pop(n, {}).get("placement", info.get("placement"))
            if kind == "complete" and info.get("values"):
                self.done[n] = {"placement": placement, "values": info["values"]}
            if info.get("wall_time_s") is not None:
                self.finished_seconds.append(float(info["wall_time_s"]))
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self.render())
            return
        self.console.print(f"[dim]{time.time() - self.t0:7.1f}s[/] {line(kind, info)}")

    def end(self, summary: Any) -> None:
        """The run ended: stop the live view, print the summary and the front."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        c = summary.counts
        self.console.print(
            f"[bold]done[/] in {summary.seconds:.1f}s: this run added {summary.added} trials; study now has "
            + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        )
        if summary.stop_reason:
            self.console.print(f"[yellow]stopped before the budget was spent[/]: {summary.stop_reason}")
        for line in summary.warnings:
            self.console.print(f"[yellow]warning[/]: {line}")
        if not summary.front:
            self.console.print("no COMPLETE trial at full fidelity yet: no Pareto front")
            return
        table = Table(title=f"Pareto front of '{summary.study}'")
        cols = [k for k in summary.front[0] if k not in ("number", "placement")]
        for col in ["trial", "placement", *cols]:
            table.add_column(col)
        for row in summary.front:
            table.add_row(str(row["number"]), str(row["placement"]), *[cell(row.get(k)) for k in cols])
        self.console.print(table)

    # ------------------------------------------------------------------------------------------ live view
    def eta(self) -> float | None:
        """Seconds left: trials left in the budget x the mean trial time / the trials run at once."""
        if not self.budget or not self.finished_seconds:
            return None
        finished = sum(self.counts.get(k, 0) for k in ("complete", "pruned", "fail", "reused"))
        left = max(0, self.budget - finished)
        mean = sum(self.finished_seconds) / len(self.finished_seconds)
        return left * mean / max(1, self.concurrent)

    def render(self) -> Group:
        """The live view: running trials, counts by state, ETA, the current front."""
        elapsed = time.time() - self.t0
        eta = self.eta()
        states = ", ".join(
            f"{k} {self.counts.get(k, 0)}" for k in ("complete", "pruned", "fail", "reused", "infeasible")
        )
        status = (f"[bold]{duration(elapsed)}[/] elapsed"
                  + (f", ETA {duration(eta)}" if eta is not None else "")
                  + f" · running {len(self.running)} · {states} · epochs {self.epochs}")  # fmt: skip
        run = Table(title="running", expand=False)
        for col in ("trial", "placement", "epoch", "val_acc"):
            run.add_column(col)
        for n, r in sorted(self.running.items()):
            run.add_row(str(n), str(r.get("placement", "?")), str(r.get("epoch", 0)), cell(r.get("val_acc")))
        front = Table(title="current front", expand=False)
        for col in ("trial", "placement", *self.objectives):
            front.add_column(col)
        if self.done:
            numbers = list(self.done)
            idx = pareto_front([self.done[k]["values"] for k in numbers], self.directions)
            for i in sorted(idx, key=lambda i: -self.done[numbers[i]]["values"][0])[:10]:
                d = self.done[numbers[i]]
                front.add_row(str(numbers[i]), str(d["placement"]), *[cell(v) for v in d["values"]])
        return Group(status, run, front)


_TRIAL = "trial {number:>3} "
LINES = {  # the plain log line of each event (str.format over the event's info; a missing field prints None)
    "start": _TRIAL + "[cyan]start[/]    {placement}  ({params:,} params)",
    "epoch": _TRIAL + "epoch {epoch:<3} val_acc {val_acc:.4f}  loss {train_loss:.3f}  {images_per_s:.0f} img/s",
    "complete": _TRIAL + "[green]COMPLETE[/] values ({shown_values})",
    "pruned": _TRIAL + "[yellow]PRUNED[/]   at epoch {pruned_at}",
    "fail": _TRIAL + "[red]FAIL[/]     {failure}",
    "reused": _TRIAL + "[blue]reused[/]   {placement} = trial {source} ({state})",
    "waiting": _TRIAL + "[blue]waits[/]    {placement} = trial {source}, still training",
    "recovered": _TRIAL + "[yellow]recovered[/] its driver stopped beating: FAIL, queued again",
    "waiting_foreign": "trials {numbers} wait for trials {sources} of other drivers to finish",
    "stopped": "[yellow]sampling stopped[/]: {reason}",
    "infeasible": _TRIAL + "[dim]rejected before training: {reason}[/]",
    "replicate": _TRIAL + "[magenta]replicate[/] {replicate} queued: P(front) {p_front:.2f} is not settled",
    "settle": "settling the throughput order of the {members} front members: paired re-measurement, at most "
    "{max_rounds} rounds (budget.settle_rounds)",
}


class _OrNone(dict):
    def __missing__(self, key: str) -> None:
        return None


def line(kind: str, info: dict[str, Any]) -> str:
    """One event as one line (the plain log)."""
    template = LINES.get(kind)
    if template is None:
        return f"{kind} {info}"
    shown = ", ".join(f"{v:.4g}" for v in info.get("values") or ())
    return template.format_map(_OrNone(info, shown_values=shown))
