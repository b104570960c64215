"""The search lab's figure: normalised hypervolume against simulated worker-seconds, the mean and 95 % band over
seeds of every method, as HTML (plotly) and a PNG (a screenshot by headless Chromium, where it is installed).

``python -m benchmarks.search_lab run`` draws it after a run; ``python -m benchmarks.search_lab plot`` draws it again
from a finished run's JSON (:func:`replot`) without running anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.lab_runs import Curve


def plot(curves: list[Curve], budget_seconds: float, html: Path, png: Path, truth: str = "proxy",
         relative: str = "front") -> None:  # fmt: skip
    """The HV-vs-compute figure (HTML, and a PNG through headless Chromium where it is installed)."""
    import numpy as np
    import plotly.graph_objects as go

    grid = np.linspace(0, budget_seconds, 200)
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#000000", "#aa3377", "#44aa99"]  # fmt: skip
    names = list(dict.fromkeys(c.method for c in curves))
    for k, name in enumerate(names):
        ys = []
        for c in (c for c in curves if c.method == name):
            xs = np.array([p[1] for p in c.points] or [0.0])
            vs = np.array([p[2] for p in c.points] or [0.0])
            idx = np.searchsorted(xs, grid, side="right") - 1
            ys.append(np.where(idx >= 0, vs[np.clip(idx, 0, None)], 0.0))
        arr = np.array(ys)
        mean = arr.mean(0)
        half = 1.96 * arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.zeros_like(mean)
        color = palette[k % len(palette)]
        dash = "solid" if name.startswith("ours") else "dot" if name.startswith(("syne", "ray")) else "dash"
        upper, lower = np.clip(mean + half, 0, None), np.clip(mean - half, 0, None)  # a ceiling can be beaten
        band_x, band_y = np.concatenate([grid, grid[::-1]]), np.concatenate([upper, lower[::-1]])
        fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", fillcolor=color, opacity=0.15,
                                 line={"width": 0}, showlegend=False, hoverinfo="skip"))  # fmt: skip
        fig.add_trace(go.Scatter(x=grid, y=mean, name=name, line={"color": color, "dash": dash}))
    fig.update_layout(
        title=f"Normalised hypervolume vs compute at the {truth} truth (mean and 95 % band over seeds)",
        xaxis_title="simulated worker-seconds",
        yaxis_title=f"share of the {'true front' if relative == 'front' else 'ceiling'}'s hypervolume",
        template="plotly_white",
        width=1120,
        height=660,
        margin={"t": 60, "l": 70, "r": 20, "b": 60},
    )
    fig.update_yaxes(range=[0, max(1.02, *(p[2] + 0.02 for c in curves for p in c.points))])
    fig.write_html(str(html), include_plotlyjs="cdn")
    full = html.with_suffix(".full.html")  # offline copy for the screenshot (not kept)
    fig.write_html(str(full), include_plotlyjs=True, config={"displayModeBar": False})
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                        "--window-size=1140,680", "--hide-scrollbars", full.resolve().as_uri()], capture_output=True,
                       timeout=120)  # fmt: skip
    full.unlink(missing_ok=True)


def replot(out: Path) -> tuple[dict[str, Any], list[Path]]:
    """Draw the HTML/PNG of a finished ``run`` again from its JSON (``out`` is the run's --out prefix); returns the
    run's JSON (its summary gives the tables again) and the files drawn."""
    raw = json.loads(out.with_name(out.name + ".json").read_text())
    curves = [Curve(c["method"], c["seed"], [tuple(p) for p in c["points"]], c.get("trials", 0),
                    c.get("unique_archs", 0)) for c in raw["curves"]]  # fmt: skip
    budget_s = max((p[1] for c in curves for p in c.points), default=1.0)
    html, png = (out.with_name(out.name + ext) for ext in (".html", ".png"))
    plot(curves, budget_s, html, png, raw.get("truth", "proxy"), raw.get("relative", "front"))
    return raw, [html, png]
