"""nas.dashboard: figure contents, a self-contained offline HTML file (checked in headless Chromium), the live
server; plus Optuna's own plots and optuna-dashboard on a study laid out by docs/storage.md."""

from __future__ import annotations

import html as htmlmod
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import pytest

from nas import dashboard, results, worktime
from nas.errors import StudyError

pytest.register_assert_rewrite("tests.conftest_study")  # before the import below
from tests.conftest_study import StudyFixture  # noqa: E402

pytest_plugins = ("tests.conftest_study",)  # the study_env fixture


@pytest.fixture
def loaded(study_env: StudyFixture):
    st = results.open_study("demo")
    return st, results.records(st), results.objectives_of(st)


def _trace(fig, name: str):
    hits = [t for t in fig.data if t.name == name]
    assert len(hits) == 1, [t.name for t in fig.data]
    return hits[0]


def test_pareto_figure_front_pruned_and_hover(loaded) -> None:
    _, recs, objs = loaded
    fig = dashboard.pareto_figure(recs, objs)
    front = _trace(fig, dashboard.FRONT_NAME)
    by = {r.number: r for r in recs}
    expect = sorted((by[n].values["throughput"], by[n].values["accuracy"], n) for n in (0, 1, 4, 6))
    assert list(front.x) == [e[0] for e in expect] and list(front.y) == [e[1] for e in expect]
    assert front.mode == "lines+markers"
    assert [c[0] for c in front.customdata] == [e[2] for e in expect]
    assert front.customdata[0][1] == by[expect[0][2]].placement  # hover shows the placement
    pruned = _trace(fig, "pruned (last rung accuracy)")
    assert list(pruned.x) == [4000.0] and list(pruned.y) == [by[3].curve[-1]["val_acc"]]
    assert len(_trace(fig, "complete").x) == 5  # full-fidelity complete trials, faded
    assert [c[0] for c in _trace(fig, "complete, below full fidelity").customdata] == [7]
    assert "1 failed (1 not plotted)" in fig.layout.title.text
    # interval bars: each accuracy's 95 % Wilson interval over the validation images (none on pruned trials)
    bars = zip(front.y, front.error_y.array, front.error_y.arrayminus, [e[2] for e in expect], strict=True)
    for y, up, down, n in bars:
        lo, hi = by[n].accuracy_interval
        assert (y - down, y + up) == pytest.approx((lo, hi)) and up > 0 and down > 0
    assert pruned.error_y.array is None


def test_placement_counts_against_plain_count(loaded) -> None:
    _, recs, objs = loaded
    fr = results.front(recs, objs)
    counts = dashboard.placement_counts(fr)
    for i in range(3):
        plain = Counter(r.arch["stages"][i]["mixer"] for r in fr if len(r.arch["stages"]) > i)
        assert counts[i] == plain if plain else len(counts) <= i
    fig = dashboard.placement_figure(recs, objs)
    on_front = [t for t in fig.data if t.name == "on the front"]
    assert abs(sum(on_front[0].y) - 1.0) < 1e-9  # shares within stage 1 sum to one


def test_curves_mark_the_pruning_rung(loaded) -> None:
    _, recs, _ = loaded
    fig = dashboard.curves_figure(recs)
    mark = _trace(fig, "pruned at rung")
    assert list(mark.x) == [1] and list(mark.customdata) == [3]
    assert sum(1 for t in fig.data if t.name.startswith("trial ")) == sum(1 for r in recs if r.curve)


def test_parcoords_encodes_categoricals(loaded) -> None:
    _, recs, objs = loaded
    fig = dashboard.parcoords_figure(recs, objs)
    dims = {d.label: d for d in fig.data[0].dimensions}
    mix = dims["stage1.mixer"]
    done = [r for r in recs if r.state == "COMPLETE"]
    assert sorted(mix.ticktext) == sorted({r.search_params["stage1.mixer"] for r in done})
    decoded = [mix.ticktext[i] for i in mix.values]
    assert decoded == [r.search_params["stage1.mixer"] for r in done]
    assert "—" in dims["stage2.mixer"].ticktext  # two-stage trials have no third stage
    assert list(dims["accuracy"].values) == [r.values["accuracy"] for r in done]


def test_html_is_self_contained(loaded, tmp_path: Path) -> None:
    st, _, _ = loaded
    out = dashboard.write_dashboard(st, tmp_path / "dash.html")
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text), "no external scripts"
    assert not re.search(r"<link[^>]+href=[\"']?https?:", text)
    # plotly.js itself carries one URL string, its geo topojson default, which only geo plots fetch
    assert all(text[m.start() - 80 : m.start()].find("topojsonURL") >= 0 for m in re.finditer("cdn.plot.ly", text))
    assert text.count("plotly.js v") <= 2 and len(text) > 3_000_000  # bundle inlined once
    assert "http-equiv='refresh'" not in text
    assert "content='7'" in dashboard.render_html(st, refresh_s=7)


PROBE_HEAD = """<script>window.__errs=[];
window.addEventListener('error',function(e){window.__errs.push('onerror: '+e.message)});
var _ce=console.error;console.error=function(){window.__errs.push([].slice.call(arguments).join(' '));
_ce.apply(console,arguments)};</script>"""
PROBE_TAIL = """<script>window.addEventListener('load',function(){setTimeout(function(){
var out={errors:window.__errs,plotly:typeof Plotly,figs:{}};
document.querySelectorAll('.plotly-graph-div').forEach(function(gd){
 out.figs[gd.id]=(gd.data||[]).map(function(t,i){
  var g=[].filter.call(gd.querySelectorAll('g.trace.scatter'),function(el){
   var d=el.__data__;return d&&d[0]&&d[0].trace&&d[0].trace.index===i;})[0];
  return {name:t.name,type:t.type,n:(t.x||t.dimensions||[]).length,
          drawn:g?g.querySelectorAll('path.point').length:null,
          bars:g?g.querySelectorAll('path.yerror').length:null,
          xbars:g?g.querySelectorAll('path.xerror').length:null};});});
var pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify(out);
document.body.appendChild(pre);},300);});</script>"""


def test_dashboard_renders_in_headless_chromium(loaded, tmp_path: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert exe is not None, "no chromium on PATH: run scripts/setup.sh as root (apt-get install -y chromium)"
    st, recs, objs = loaded
    text = dashboard.render_html(st)
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</head>", PROBE_HEAD + "</head>", 1).replace("</body>", PROBE_TAIL + "</body>"))
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # no name resolves: anything fetched from a CDN would fail and leave Plotly undefined
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe missing; rc={proc.returncode} stderr tail: {proc.stderr[-800:]}"
    probe = json.loads(htmlmod.unescape(m.group(1)))
    assert probe["errors"] == [] and probe["plotly"] == "object"
    panels = ("pareto", "hypervolume", "placement", "curves", "parcoords")
    spent = worktime.of_study(st).trials > 0  # trials that carry their phase times get the worker-time panel
    assert set(probe["figs"]) == {f"fig-{k}" for k in panels + (("worktime",) if spent else ())}
    front = [t for t in probe["figs"]["fig-pareto"] if t["name"] == dashboard.FRONT_NAME]
    fr = results.front(recs, objs)
    n_front = len(fr)
    assert len(front) == 1 and front[0]["n"] == n_front and front[0]["drawn"] == n_front
    assert front[0]["bars"] == n_front  # every front member's accuracy interval is drawn
    assert front[0]["xbars"] == sum(1 for r in fr if r.throughput_interval)  # and its throughput's spread
    head = re.search(r"<table class=\"front\"><thead><tr>(.*?)</tr>", proc.stdout, re.S)
    assert head and all(f"<th>{c}</th>" in head.group(1) for c in ("accuracy_lo", "accuracy_hi", "seeds", "p_front"))
    assert probe["figs"]["fig-parcoords"][0]["type"] == "parcoords"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200
        return r.read().decode()


def test_server_rerenders_each_request_and_reports_port_in_use(loaded, study_env: StudyFixture) -> None:
    import optuna

    st, _, _ = loaded
    server = dashboard.make_server(st, 0, refresh_s=5)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        page = _get(f"http://127.0.0.1:{port}/")
        assert "<b>8</b> trials" in page and "content='5'" in page
        writer = optuna.load_study(study_name="demo", storage=study_env.url)
        writer.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"failure": "x"}))
        assert "<b>9</b> trials" in _get(f"http://127.0.0.1:{port}/")
        with pytest.raises(StudyError, match=f"port {port} on 127.0.0.1 is in use"):
            dashboard.make_server(st, port)
    finally:
        server.shutdown()
        server.server_close()


def test_optuna_visualizations_work_on_our_layout(loaded) -> None:
    import optuna
    import optuna.visualization as vis

    st, recs, _ = loaded
    fig = vis.plot_pareto_front(st, target_names=["accuracy", "throughput"])
    assert sum(len(t.x) for t in fig.data) == sum(1 for r in recs if r.state == "COMPLETE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        hv = vis.plot_hypervolume_history(st, reference_point=[0.0, 0.0])
    # Optuna knows nothing of fidelity: its front includes trial 7, which ours excludes
    pts = [(r.values["throughput"], r.values["accuracy"]) for r in recs if r.state == "COMPLETE"]
    area, best = 0.0, 0.0
    for x, y in sorted(pts, key=lambda p: -p[0]):
        if y > best:
            area, best = area + x * (y - best), y
    assert hv.data[0].y[-1] == pytest.approx(area)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_our_study(study_env: StudyFixture) -> None:
    exe = Path(sys.executable).with_name("optuna-dashboard")
    assert exe.exists(), "optuna-dashboard is missing: it is part of the dev extra (scripts/setup.sh installs it)"
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), study_env.url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                body = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))
            except OSError:
                assert proc.poll() is None, "optuna-dashboard exited"
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer within 60 s"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["demo"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
