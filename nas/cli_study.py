"""CLI commands for a running or finished study: ``studies``, ``status``, ``pareto``, ``dashboard``, ``export``.

Each command is a module-level function; ``register(app)`` adds them to the project's typer app. ``cli_errors``
turns a :class:`nas.errors.NasError` into one ``error: ...`` line on stderr and exit code 2 (never a traceback).
Heavy libraries (torch, timm, plotly) are imported inside the commands that need them: ``nas status`` and
``nas pareto`` read the database and print, nothing more.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from nas.errors import ConfigError, NasError, StudyError
from nas.fmt import cell, duration

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USER_ERROR = 2
STORAGE_HELP = "SQLAlchemy storage URL (default: sqlite:///studies/STUDY/study.db)"


def cli_errors(fn: F) -> F:
    """Run a command; a NasError becomes ``error: <one line>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NasError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _print_front(rows: list[dict[str, Any]], title: str) -> None:
    """The front as a table (``title`` and its size), or the line saying there is none yet."""
    if rows:
        _print_table(rows, title=f"{title} ({len(rows)} trials)")
    else:
        typer.echo("no COMPLETE full-fidelity trials yet: no front")


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for k in rows[0] if rows else []:
        t.add_column(k, overflow="fold")
    for r in rows:
        t.add_row(*(cell(v) for v in r.values()))
    # soft_wrap: long placements stay on one line when piped; width fixed so tests see whole cells
    Console(soft_wrap=True, width=200).print(t)


def studies(storage: str = typer.Option(None, "--storage", help="list this storage instead of studies/*/")) -> None:
    """List the studies (name, trials by state, objectives, last activity).

    Example: nas studies --storage postgresql://user@db-host/nas
    """
    from nas import results

    rows = results.list_studies(storage)
    if not rows:
        typer.echo("no studies found (looked in " + (storage or "studies/*/study.db") + ")")
        return
    _print_table(rows)


def status(
    study: str = typer.Argument(..., help="study name"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Trials by state, compute spent, hypervolume and the current Pareto front.

    Example: nas status fmnist_placement
    """
    from nas import results, trust, worktime

    st = results.open_study(study, storage)
    s = results.summarize(st)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s.counts.items())) or "none"
    typer.echo(f"study {s.name}  storage {s.storage}")
    typer.echo(f"trials {s.n_trials} ({counts}); reused {s.reused}")
    typer.echo(
        f"trial time {duration(s.trial_seconds)}; trial-epochs {s.trial_epochs}; elapsed {duration(s.elapsed_seconds)}"
    )
    hv = f"{s.hypervolume:.3f}" if s.hypervolume is not None else "—"
    typer.echo(
        f"objectives {', '.join(f'{o.name} ({o.direction})' for o in s.objectives)}; hypervolume {hv} "
        "(normalised: objectives min-max scaled over the complete trials)"
    )
    for line in [*trust.trust_lines(st), *worktime.lines(worktime.of_study(st))]:
        typer.echo(line)
    _print_front(results.front_rows(s.front, s.objectives, s.p_front), "Pareto front")


def pareto(
    study: str = typer.Argument(..., help="study name"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Print the Pareto front (COMPLETE, full-fidelity trials only; each architecture once).

    Example: nas pareto fmnist_placement --format csv > front.csv
    """
    from nas import results
    from nas.replicates import study_front_probability

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format: unknown format {fmt!r}; use table, csv or json")
    st = results.open_study(study, storage)
    objs = results.objectives_of(st)
    recs = results.records(st)
    p_front = study_front_probability(st, results.eligible(recs, objs), objs)
    rows = results.front_rows(results.front(recs, objs), objs, p_front)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        buf = io.StringIO()
        cols = list(rows[0]) if rows else ["trial", *[o.name for o in objs]]
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows({k: cell(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
        typer.echo(buf.getvalue(), nl=False)
    else:
        _print_front(rows, f"Pareto front of {study}")


def dashboard(
    study: str = typer.Argument(..., help="study name"),
    out: Path = typer.Option(None, "--out", help="HTML file (default studies/STUDY/dashboard.html)"),
    serve: bool = typer.Option(False, "--serve", help="serve a live page instead of writing a file"),
    port: int = typer.Option(8050, "--port", help="port for --serve"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface for --serve (keep loopback)"),
    refresh: int = typer.Option(30, "--refresh", help="seconds between page reloads with --serve"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Write the study dashboard as one self-contained HTML file (works offline), or serve it live.

    Example: nas dashboard fmnist_placement --out front.html
    (live: nas dashboard fmnist_placement --serve --port 8050)
    """
    from nas import dashboard as dash
    from nas import layout, results

    st = results.open_study(study, storage)
    if serve:
        dash.serve(
            st, port, host, refresh, announce=lambda url: typer.echo(f"serving study {study} on {url} (Ctrl-C stops)")
        )
        return
    path = dash.write_dashboard(st, out or layout.study_dir(study) / "dashboard.html")
    typer.echo(f"wrote {path}")


def export(
    study: str = typer.Argument(..., help="study name"),
    out: Path = typer.Option(..., "--out", help="new (or empty) folder to write"),
    trial: int = typer.Option(None, "--trial", help="trial number to export"),
    pick: str = typer.Option(None, "--pick", help="knee | max-accuracy (instead of --trial)"),
    min_throughput: float = typer.Option(None, "--min-throughput", help="with --pick: images/s floor"),
    max_params: int = typer.Option(None, "--max-params", help="with --pick: parameter-count cap"),
    weights: bool = typer.Option(False, "--weights", help="also write the proxy-trained weights"),
    validated: bool = typer.Option(False, "--validated", help="pick from the validated front (after nas validate)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Export a trial as a timm local-dir folder (config.json [+ model.safetensors]).

    Example: nas export fmnist_placement --pick knee --min-throughput 2000 --out exported/knee --weights
    (then: import nas, timm; timm.create_model("local-dir:exported/knee", pretrained=True))
    """
    from nas import export as exp
    from nas import results

    if (trial is None) == (pick is None):
        raise ConfigError("export: give exactly one of --trial N or --pick knee|max-accuracy")
    if trial is not None and (min_throughput is not None or max_params is not None):
        raise ConfigError("export: --min-throughput/--max-params apply to --pick only")
    st = results.open_study(study, storage)
    if validated:
        st = results.validation_study(st)  # the retrained trials: their values, their weights
    note = ""
    if pick is not None:
        recs, objs = results.records(st), results.objectives_of(st)
        settled, note = _settled_only(st, recs, objs)
        chosen = functools.partial(results.pick, how=pick, objectives=objs, min_throughput=min_throughput,
                                   max_params=max_params)  # fmt: skip
        try:
            rec = chosen(settled)
        except StudyError:
            if settled is recs:
                raise
            rec, note = chosen(recs), "note: no settled architecture meets the constraints: picked among all"
    else:
        rec = results.get_record(st, trial)
    if note:
        typer.echo(note)
    path = exp.export_trial(st, rec, out, weights=weights)
    vals = ", ".join(f"{k} {cell(v)}" for k, v in rec.values.items())
    typer.echo(
        f"exported trial {rec.number} ({rec.placement}; {vals}) to {path}" + (" with weights" if weights else "")
    )


def _settled_only(st: Any, recs: list[Any], objs: list[Any]) -> tuple[list[Any], str]:
    """The trials of the architectures whose place on the front is settled (P(front) at least the study's
    ``replicates.settled``, default 0.9), and a line saying so; all of them, and why, when none is."""
    from nas import results
    from nas.replicates import study_front_probability
    from nas.study_record import StudyRecord

    archs = results.eligible(recs, objs)
    p_front = study_front_probability(st, archs, objs)
    if not p_front:
        return recs, ""
    threshold = StudyRecord.of(st).settled
    members = {a.arch_id for a in archs if p_front[a.number] >= threshold}
    if not members:
        best = max(p_front.values())
        return recs, (
            f"note: no architecture is settled on the front (P(front) >= {threshold:g}; the highest is {best:.2f}): "
            "picked among all; `replicates:` in the study file retrains the uncertain ones with other seeds"
        )
    return [r for r in recs if r.arch_id in members], (
        f"picked among the {len(members)} architectures settled on the front (P(front) >= {threshold:g}, "
        "resampling validation images and training seeds)"
    )


def settle(
    study: str = typer.Argument(..., help="study name"),
    device: str = typer.Option("auto", "--device", help="where to re-measure: auto, cpu, cuda[:N] (this machine)"),
    rounds: int = typer.Option(15, "--rounds", help="at most this many interleaved rounds"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Settle the throughput order of the front: re-measure its members interleaved (A B C C B A ...), paired by
    round so the device's drifting load divides out, until each neighbour pair is resolved or --rounds is reached.

    Example: nas settle fmnist_placement --device cuda
    """
    from nas import results
    from nas.settle import settle_study

    if rounds < 3:
        raise ConfigError(f"--rounds: {rounds} is too few for an interval; use 3 or more")
    st = results.open_study(study, storage)
    try:
        front, out = settle_study(st, device, max_rounds=rounds)
    except ValueError as e:
        raise StudyError(str(e)) from None
    typer.echo(f"{out.rounds} rounds on {device}; order {'resolved' if out.resolved else 'NOT resolved'}:")
    for p in out.pairs:
        verdict = "resolved" if p.resolved else "a tie at this many rounds"
        typer.echo(f"  trial {front[p.faster].number} faster than trial {front[p.slower].number} by {p.ratio:.3f}x "
                   f"(95 % CI {p.low:.3f}–{p.high:.3f}): {verdict}")  # fmt: skip


COMMANDS = (studies, status, pareto, dashboard, export, settle)


def register(app: typer.Typer) -> None:
    """Add the study-reading commands to ``app``."""
    for command in COMMANDS:
        app.command(command.__name__)(cli_errors(command))
