"""The house rules of issue 29, checked on the source: no import circle between the project's modules (every
import counts, a lazy one inside a function too), and the names a trial's and a study's stored attributes go by are
written as literals in one module each."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "trainers", "benchmarks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (``from P import X`` counts as ``P.X`` when that is
    a module, else ``P``); a module importing a package it lives in is left out (Python runs that package first
    anyway; it is not a circle between two modules)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                       for a in node.names]  # fmt: skip
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in mods and t != name and not name.startswith(f"{t}.")}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return [*path[path.index(t) :], t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_between_the_projects_modules() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert {"nas.replicates", "nas.trial_record"} <= set(graph["nas.results"])  # the graph sees real imports
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


RECORD_MODULES = {"nas/trial_record.py", "nas/study_record.py"}
WRITERS = {"set_user_attr", "set_trial_user_attr", "set_study_user_attr"}


def _attribute_literals(path: Path) -> list[str]:
    """Places in ``path`` that name a stored user attribute by a string literal: ``x.user_attrs["k"]``,
    ``x.user_attrs.get("k")``, ``x.set_user_attr("k", v)`` (and the storage's two setters)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        literal = None
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "user_attrs"
        ):
            literal = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "user_attrs" and node.args:
                literal = node.args[0]
            elif f.attr in WRITERS and node.args:
                literal = node.args[1] if f.attr != "set_user_attr" and len(node.args) > 1 else node.args[0]
        if isinstance(literal, (ast.Constant, ast.JoinedStr)):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


def test_the_literal_finder_sees_each_kind_of_access(tmp_path: Path) -> None:
    global ROOT
    src = tmp_path / "m.py"
    src.write_text('a = t.user_attrs["x"]\nb = s.user_attrs.get("y")\ns.set_user_attr("z", 1)\n'
                   'st.set_trial_user_attr(1, "w", 2)\nok = t.user_attrs.get(NAME)\n')  # fmt: skip
    root, ROOT = ROOT, tmp_path
    try:
        assert _attribute_literals(src) == ["m.py:1", "m.py:2", "m.py:3", "m.py:4"]
    finally:
        ROOT = root


def test_stored_attribute_names_are_written_in_their_record_module_only() -> None:
    """Issue 29: a trial's attributes are named in nas/trial_record.py, a study's in nas/study_record.py; everyone
    else reads through ``TrialRecord.of`` / ``StudyRecord.of`` and writes through the lifecycle or
    ``study_record.write``."""
    found = [hit for m, p in _modules().items() if str(p.relative_to(ROOT)) not in RECORD_MODULES
             for hit in _attribute_literals(p)]  # fmt: skip
    assert not found, f"stored attributes named outside their record module: {found}"
