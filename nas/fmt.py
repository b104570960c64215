"""How numbers are shown to people (terminal tables, the dashboard, ``nas show``): one place, standard library only."""

from __future__ import annotations

from typing import Any


def si(n: float | None, missing: str = "?") -> str:
    """A count with a k/M/G suffix: ``26.34M``, ``8.21G``, ``512``."""
    if n is None:
        return missing
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def cell(v: Any) -> str:
    """A table cell: 4 significant digits for floats, thousands separators for large ones, lists joined."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    return str(v)


def duration(seconds: float | None) -> str:
    """``1h02m03s`` / ``2m03s``."""
    if seconds is None:
        return "—"
    h, rem = divmod(round(seconds), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
