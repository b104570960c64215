"""The study dashboard: plotly figures in ONE self-contained HTML file (plotly.js inlined, works offline).

Figures: the Pareto front (accuracy vs throughput; every trial shown, the front connected; pruned trials at the
accuracy of the rung where they stopped), hypervolume over trials and over wall time, where each mixer sits on
the front vs among all complete trials, learning curves with the pruning rungs, and parallel coordinates
over the searched knobs. ``serve`` re-renders the page on every request while a study runs.
"""

from __future__ import annotations

import errno
import html
import http.server
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas import report, results, trust, worktime
from nas.errors import StudyError
from nas.fmt import si
from nas.results import Objective
from nas.study_record import StudyRecord
from nas.trial_record import TrialRecord

FRONT_NAME = "Pareto front"
FADED = "rgba(120,120,120,0.35)"
_HOVER = (
    "trial %{customdata[0]}<br>%{customdata[1]}<br>params %{customdata[2]}<br>FLOPs %{customdata[3]}"
    "<br>%{customdata[4]}"
)


def _custom(recs: Sequence[TrialRecord]) -> list[list[Any]]:
    return [
        [
            r.number,
            r.placement or "?",
            si(r.params),
            si(r.flops),
            f"also proposed as trial(s) {', '.join(map(str, r.reused_by))}" if r.reused_by else "",
        ]
        for r in recs
    ]


def _axes(objectives: Sequence[Objective]) -> tuple[Objective | None, Objective]:
    """(x, y) objectives of the front plot: throughput vs accuracy when both exist, else the first two."""
    names = [o.name for o in objectives]
    if "accuracy" in names and "throughput" in names:
        return objectives[names.index("throughput")], objectives[names.index("accuracy")]
    if len(objectives) >= 2:
        return objectives[1], objectives[0]
    return None, objectives[0]


def pareto_figure(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> go.Figure:
    xo, yo = _axes(objectives)

    def x_of(r: TrialRecord) -> float | None:
        if xo is None:
            return float(r.number)
        if xo.name in r.values:
            return r.values[xo.name]
        return r.throughput_median if xo.name == "throughput" else None

    def y_of(r: TrialRecord) -> float | None:
        if yo.name in r.values:
            return r.values[yo.name]
        return r.last_val_acc if yo.name == "accuracy" else None

    fig = go.Figure()

    def add(name: str, rs: list[TrialRecord], marker: dict[str, Any], mode: str = "markers", **kw: Any) -> None:
        pts = [(x_of(r), y_of(r), r) for r in rs]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts and name != FRONT_NAME:
            return
        if yo.name == "accuracy" and name != "pruned (last rung accuracy)":
            kw.setdefault("error_y", _interval_bars([(p[1], p[2]) for p in pts], marker.get("color")))
        if xo is not None and xo.name == "throughput":  # horizontal: one measurement's spread on its device
            kw.setdefault("error_x", _interval_bars([(p[0], p[2]) for p in pts], marker.get("color"), "throughput"))
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode=mode,
                name=name,
                marker=marker,
                customdata=_custom([p[2] for p in pts]),
                hovertemplate=_HOVER + f"<extra>{name}</extra>",
                **kw,
            )
        )

    full = results.eligible(recs, objectives)
    full_numbers = {r.number for r in full}
    partial = [r for r in recs if r.state == "COMPLETE" and r.number not in full_numbers]
    pruned = [r for r in recs if r.state == "PRUNED"]
    failed = [r for r in recs if r.state == "FAIL"]
    add("complete", full, {"color": FADED, "size": 8})
    add("complete, below full fidelity", partial, {"color": FADED, "size": 8, "symbol": "circle-open"})
    add("pruned (last rung accuracy)", pruned, {"color": "rgba(230,140,20,0.7)", "size": 9, "symbol": "x"})
    # failed trials have no accuracy: drawn on the x axis when their throughput is known
    fx = [(x_of(r), r) for r in failed]
    fx = [p for p in fx if p[0] is not None]
    if fx:
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in fx],
                y=[0.0] * len(fx),
                mode="markers",
                name=f"failed ({len(failed)})",
                marker={"color": "rgba(200,30,30,0.8)", "size": 9, "symbol": "triangle-down"},
                customdata=[[p[1].number, p[1].failure or "?", si(p[1].params), ""] for p in fx],
                hovertemplate="trial %{customdata[0]}<br>%{customdata[1]}<extra>failed</extra>",
            )
        )
    fr = sorted(results.front(recs, objectives), key=lambda r: x_of(r) or 0.0)
    add(FRONT_NAME, fr, {"color": "#d62728", "size": 11}, mode="lines+markers", line={"color": "#d62728"})
    unplotted = len(failed) - len([r for r in failed if x_of(r) is not None])
    note = f"; {len(pruned)} pruned, {len(failed)} failed" + (f" ({unplotted} not plotted)" if unplotted else "")
    if yo.name == "accuracy" and any(r.accuracy_interval for r in full):
        note += "; bars: 95 % interval over the validation images"
    if xo is not None and xo.name == "throughput" and any(r.throughput_interval for r in full):
        note += ", and the range of one throughput measurement"
    fig.update_layout(
        title=f"Pareto front: {yo.name} vs {xo.name if xo else 'trial'} "
        f"({len(fr)} on the front of {len(full)} complete full-fidelity trials{note})",
        xaxis_title=_label(xo) if xo else "trial",
        yaxis_title=_label(yo),
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _label(o: Objective) -> str:
    unit = {"throughput": " (images/s)", "accuracy": " (val)", "latency": " (ms)"}.get(o.name, "")
    return f"{o.name}{unit} [{o.direction[:3]}]"


def hypervolume_figure(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("over trials", "over wall time"))
    panels = (("number", 1.0, "trial"), ("time", 60.0, "time"))  # x: trial number, or minutes since the first
    for col, (by, scale, what) in enumerate(panels, 1):
        history = results.hypervolume_history(recs, objectives, by=by)
        line = go.Scatter(x=[x / scale for x, _ in history], y=[h for _, h in history], mode="lines+markers",
                          line_shape="hv", name=f"hypervolume ({what})")  # fmt: skip
        fig.add_trace(line, row=1, col=col)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="minutes since the first trial started", row=1, col=2)
    fig.update_layout(
        title="Normalised hypervolume (each objective min-max scaled over the complete trials: worst 0, best 1; "
        "reference point at the origin)",
        template="plotly_white",
        showlegend=False,
    )
    return fig


def stage_mixers(arch: dict[str, Any] | None) -> list[str]:
    """The mixer label of each stage of a model_args dict (a block pattern joins with '+')."""
    if not arch:
        return []
    out = []
    for st in arch.get("stages", []):
        m = st.get("mixer")
        out.append("+".join(m) if isinstance(m, list | tuple) else str(m))
    return out


def placement_counts(recs: Sequence[TrialRecord]) -> list[Counter]:
    """Per stage, how many of ``recs`` use each mixer label there."""
    per: list[Counter] = []
    for r in recs:
        for i, m in enumerate(stage_mixers(r.arch)):
            while len(per) <= i:
                per.append(Counter())
            per[i][m] += 1
    return per


def placement_figure(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> go.Figure:
    complete = results.eligible(recs, objectives)
    fr = results.front(recs, objectives)
    all_c, front_c = placement_counts(complete), placement_counts(fr)
    n = max(len(all_c), 1)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[f"stage {i}" for i in range(n)], shared_yaxes=True)
    for i, counts in enumerate(all_c):
        mixers = sorted(counts)
        fc = front_c[i] if i < len(front_c) else Counter()
        tot_a, tot_f = sum(counts.values()) or 1, sum(fc.values()) or 1
        for name, c, total, color, group in (
            ("on the front", fc, tot_f, "#d62728", "front"),
            ("all complete", counts, tot_a, FADED, "all"),
        ):
            fig.add_trace(
                go.Bar(
                    x=mixers,
                    y=[c[m] / total for m in mixers],
                    name=name,
                    marker_color=color,
                    showlegend=i == 0,
                    legendgroup=group,
                    customdata=[c[m] for m in mixers],
                    hovertemplate="%{x}: %{customdata} trials",
                ),
                row=1,
                col=i + 1,
            )
    fig.update_layout(
        title="Mixer placement: share of trials per stage (front vs all complete)",
        barmode="group",
        template="plotly_white",
        yaxis_title="share of trials",
    )
    return fig


def curves_figure(recs: Sequence[TrialRecord]) -> go.Figure:
    fig = go.Figure()
    for r in recs:
        if not r.curve:
            continue
        ep = [e.get("epoch") for e in r.curve]
        acc = [e.get("val_acc") for e in r.curve]
        style = {
            "COMPLETE": {"color": "rgba(31,119,180,0.6)"},
            "PRUNED": {"color": "rgba(230,140,20,0.6)", "dash": "dot"},
        }.get(r.state, {"color": FADED})
        fig.add_trace(
            go.Scatter(
                x=ep,
                y=acc,
                mode="lines",
                line=style,
                name=f"trial {r.number} ({r.state.lower()})",
                legendgroup=r.state,
                hovertemplate=f"trial {r.number}<br>epoch %{{x}}: %{{y:.4f}}",
            )
        )
    pruned = [r for r in recs if r.state == "PRUNED" and r.curve]
    if pruned:
        xs, ys = [], []
        for r in pruned:
            at = r.pruned_at if r.pruned_at is not None else r.curve[-1].get("epoch")
            hit = [e for e in r.curve if e.get("epoch") == at] or r.curve[-1:]
            xs.append(at)
            ys.append(hit[-1].get("val_acc"))
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="pruned at rung",
                marker={"symbol": "x", "size": 12, "color": "rgba(230,140,20,1)"},
                customdata=[r.number for r in pruned],
                hovertemplate="trial %{customdata} stopped at epoch %{x}",
            )
        )
    fig.update_layout(
        title="Learning curves (validation accuracy); x marks the rung where a trial was pruned",
        xaxis_title="epoch",
        yaxis_title="val_acc",
        template="plotly_white",
        showlegend=False,
    )
    return fig


def parcoords_figure(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> go.Figure:
    """Parallel coordinates over the searched knobs of COMPLETE trials (categorical knobs numbered)."""
    done = [r for r in recs if r.state == "COMPLETE" and r.values]
    keys = sorted({k for r in done for k in r.search_params})
    dims = []
    for k in keys:
        vals = [r.search_params.get(k) for r in done]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        if numeric and len(set(vals)) > 8:
            dims.append({"label": k, "values": vals})
        else:
            # categorical (or missing in some trials: define-by-run): one tick per distinct value
            cats = sorted({repr(v) if v is not None else "—" for v in vals})
            idx = {c: i for i, c in enumerate(cats)}
            enc = [idx[repr(v) if v is not None else "—"] for v in vals]
            dims.append(
                {
                    "label": k,
                    "values": enc,
                    "tickvals": list(range(len(cats))),
                    "ticktext": [c.strip("'") for c in cats],
                }
            )
    for o in objectives:
        dims.append({"label": o.name, "values": [r.values.get(o.name, math.nan) for r in done]})
    color_by = next((o.name for o in objectives if o.name == "accuracy"), objectives[0].name if objectives else None)
    line = {"color": [r.values.get(color_by, 0.0) for r in done], "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line, name="knobs"))
    fig.update_layout(
        title=f"Searched knobs of {len(done)} complete trials (colour: {color_by})", template="plotly_white"
    )
    return fig


def figures(recs: Sequence[TrialRecord], objectives: Sequence[Objective]) -> dict[str, go.Figure]:
    """Every figure of the page; a reused trial is not drawn again (its source's hover lists it)."""
    recs = results.distinct(recs)
    return {
        "pareto": pareto_figure(recs, objectives),
        "hypervolume": hypervolume_figure(recs, objectives),
        "placement": placement_figure(recs, objectives),
        "curves": curves_figure(recs),
        "parcoords": parcoords_figure(recs, objectives),
    }


def validation_figure(study: Any) -> go.Figure | None:
    """Proxy vs validated accuracy of the retrained architectures (after `nas validate`), identity line drawn."""
    val = StudyRecord.of(study).validation
    if not val or not val.get("pairs"):
        return None
    pairs = val["pairs"]
    fig = go.Figure()
    for on_front, name, color in ((True, "proxy front", "#d62728"), (False, "other", "#1f77b4")):
        ps = [p for p in pairs if p["on_proxy_front"] is on_front]
        fig.add_trace(
            go.Scatter(
                x=[p["proxy_acc"] for p in ps],
                y=[p["validated_acc"] for p in ps],
                mode="markers",
                name=name,
                marker={"color": color, "size": 10, "symbol": "star" if on_front else "circle"},
                customdata=[[p["trial"], p["placement"]] for p in ps],
                hovertemplate="trial %{customdata[0]}<br>%{customdata[1]}<br>proxy %{x:.4f} validated %{y:.4f}",
            )
        )
    accs = [p["proxy_acc"] for p in pairs] + [p["validated_acc"] for p in pairs]
    lo, hi = min(accs), max(accs)
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="identity", line={"dash": "dot", "color": "#888"})
    )
    tau = "—" if val.get("tau") is None else f"{val['tau']:.2f}"
    budget = val["budget"]
    where = ", on the test split" if "val_fraction" in budget and budget["val_fraction"] is None else ""
    fig.update_layout(
        title=f"Proxy vs validated accuracy (Kendall τ {tau}; validated at {budget['epochs']} epochs x "
        f"{budget['train_fraction']:g} of the data{where})",
        xaxis_title="proxy accuracy",
        yaxis_title="validated accuracy",
        template="plotly_white",
    )
    return fig


def _interval_bars(
    points: list[tuple[float, TrialRecord]], color: str | None, what: str = "accuracy"
) -> dict[str, Any] | None:
    """Plotly error bars: each full-fidelity accuracy's 95 % interval (nas.evaluation; none for a trial evaluated
    before its correct images were kept), or each throughput's (``what="throughput"``: its measurement's spread);
    None when no point has one."""
    up, down = [], []
    for y, r in points:
        iv = r.accuracy_interval if what == "accuracy" else r.throughput_interval
        up.append(iv[1] - y if iv else 0.0)
        down.append(y - iv[0] if iv else 0.0)
    if not any(up) and not any(down):
        return None
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "thickness": 1, "width": 2,
            "color": color}  # fmt: skip


def _summary_html(s: results.StudySummary) -> str:
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s.counts.items())) or "no trials"
    hv = f"{s.hypervolume:.3f} (normalised)" if s.hypervolume is not None else "—"
    rows = results.front_rows(s.front, s.objectives, s.p_front)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {"trial": 0}))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return (
        f"<p><b>{s.n_trials}</b> trials ({html.escape(counts)}); trial time "
        f"{s.trial_seconds / 3600:.2f} h, {s.trial_epochs} trial-epochs; hypervolume {hv}; "
        f"storage <code>{html.escape(s.storage)}</code></p>"
        f"<table class='front'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render_html(study, refresh_s: int | None = None) -> str:
    """The whole dashboard as one HTML document; plotly.js is inlined once (no network needed)."""
    recs = results.records(study)
    objectives = results.objectives_of(study)
    summary = results.summarize(study)
    parts = []
    figs = figures(recs, objectives)
    validation = validation_figure(study)
    if validation is not None:
        figs["validation"] = validation
    spent = worktime.figure(worktime.of_study(study))
    if spent is not None:  # where the worker time went (issue 30): only when the trials carry phase times
        figs["worktime"] = spent
    for i, (key, fig) in enumerate(figs.items()):
        parts.append(
            f"<section id='{key}'>"
            + fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{key}", config={"displaylogo": False})
            + "</section>"
        )
    meta = f"<meta http-equiv='refresh' content='{int(refresh_s)}'>" if refresh_s else ""
    name = html.escape(study.study_name)
    stamp = datetime.now().isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"{meta}<title>nas study {name}</title><style>"
        "body{font-family:sans-serif;margin:1.5em} table.front{border-collapse:collapse;font-size:0.9em}"
        "table.front td,table.front th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>Study {name}</h1>{_summary_html(summary)}"
        + "".join(f"<p><b>{html.escape(line)}</b></p>" for line in trust.trust_lines(study))
        + "".join(parts)
        + f"<section id='report'>{report.to_html(report.build(study))}</section>"
        + f"<p style='color:#888'>rendered {stamp}</p></body></html>"
    )


def write_dashboard(study, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(study), encoding="utf-8")
    tmp.replace(out)
    return out


def make_server(study, port: int, host: str = "127.0.0.1", refresh_s: int = 30) -> http.server.HTTPServer:
    """An HTTP server whose every GET re-reads the study and renders the dashboard (port 0 = any free)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            try:
                body = render_html(study, refresh_s=refresh_s).encode()
                code = 200
            except Exception as e:  # a transient storage error must not kill the server
                body = f"<html><body>error: {html.escape(str(e))}</body></html>".encode()
                code = 500
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    try:
        return http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StudyError(f"dashboard: port {port} on {host} is in use; pass another --port") from None
        raise StudyError(f"dashboard: cannot listen on {host}:{port} ({e.strerror}); check --host/--port") from None


def serve(
    study,
    port: int,
    host: str = "127.0.0.1",
    refresh_s: int = 30,
    ready: threading.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the live dashboard until interrupted (Ctrl-C); ``announce`` gets the URL once it listens."""
    server = make_server(study, port, host, refresh_s)
    if announce is not None:
        announce(f"http://{host}:{server.server_address[1]}/")
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
