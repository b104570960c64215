"""The house rules of issue 29, checked on the source: no import circle between the project's modules (every
import counts, a lazy one inside a function too); the names a trial's and a study's stored attributes go by are
written as literals in one module each; Optuna's and Syne Tune's internals are used in one adapter module each; and
the lab (benchmarks/) imports by package names, without editing ``sys.path``."""

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


# ---------------------------------------------------------------------------------------------- public names only
# Issue 29: the one module per library that may use its private members, each saying in its docstring which ones and
# why. Everything else reaches Optuna and Syne Tune through their public names.
ADAPTERS = {
    "nas/engine/optuna_adapter.py": "Optuna's TPE and RDB storage internals",
    "nas/engine/samplers.py": "the system attributes Optuna's GridSampler writes on a trial (grid_id, search_space)",
    "benchmarks/syne_adapter.py": "Syne Tune's simulator clock and its non-dominated sort (the lab's peer)",
}
CHECKED = ("nas", "benchmarks")  # the search tool and its lab (trainers/ is a torch-only library of its own)
# Libraries whose classes nobody else subclasses to override a private method, or whose modules nobody else patches.
ADAPTED = ("optuna", "syne_tune")
# Private-looking names that are not another library's internals, each with its reason.
PRIVATE_OK = {
    ("nas/layout.py", "_replace"): "namedtuple's public copy-with-changes (SQLAlchemy's URL is a namedtuple)",
    ("nas/space.py", "_where"): "SearchSpace.from_dict (a classmethod) sets the private attribute of the instance "
    "it has just built: the class's own member, not another library's",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of names, else None (a call, a subscript ...)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _bindings(tree: ast.AST) -> dict[str, str]:
    """Each name an import binds anywhere in the module (a lazy one in a function too) -> what it names, in full:
    ``import a.b`` binds ``a`` -> ``a``, ``import a.b as c`` binds ``c`` -> ``a.b``, ``from a import b`` binds ``b``
    -> ``a.b``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _resolved(node: ast.AST, names: dict[str, str]) -> str | None:
    """The full dotted name of ``node`` through the module's imports (``ndp.f`` -> ``syne_tune.….ndp.f``)."""
    d = _dotted(node)
    if d is None:
        return None
    head, _, rest = d.partition(".")
    if head not in names:
        return None
    return f"{names[head]}.{rest}" if rest else names[head]


def _library_of(full: str | None) -> str | None:
    """The top-level package of a resolved name, or None when it is ours (or unknown)."""
    if full is None:
        return None
    top = full.split(".")[0]
    return None if top in PACKAGES or top == "tests" else top


def _private_uses(path: Path, rel: str) -> list[str]:
    """Places in ``path`` that use another library's internals: an attribute with a private name read or written on
    anything but ``self``/``cls``/``super()``/one of our modules; an import of a private module or name of another
    library; a subclass of an Optuna/Syne Tune class defining a private method (an override of its internals); an
    attribute of an Optuna/Syne Tune module or class assigned (a patch); a literal key of a trial's
    ``system_attrs`` (Optuna's samplers' own records)."""
    tree = ast.parse(path.read_text())
    names = _bindings(tree)
    out: list[tuple[int, str]] = []

    def hit(node: ast.AST, what: str) -> None:
        if (rel, what) not in PRIVATE_OK:
            out.append((node.lineno, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            v = node.value
            mine = isinstance(v, ast.Name) and v.id in ("self", "cls")
            mine |= isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super"
            target = _resolved(v, names)
            ours = target is not None and _library_of(target) is None
            if _private(node.attr) and not mine and not ours:
                hit(node, node.attr)
            if isinstance(node.ctx, ast.Store) and _library_of(target) in ADAPTED:
                hit(node, f"{_dotted(node)} = (a patch)")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _library_of(node.module) and any(_private(p) for p in node.module.split(".")):
                hit(node, f"from {node.module} import")
            elif _library_of(node.module):
                for a in node.names:
                    if _private(a.name):
                        hit(node, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _library_of(a.name) and any(_private(p) for p in a.name.split(".")):
                    hit(node, f"import {a.name}")
        elif isinstance(node, ast.ClassDef) and any(_library_of(_resolved(b, names)) in ADAPTED for b in node.bases):
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(f.name):
                    hit(f, f"{node.name}.{f.name} (an override)")
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            key = node.slice if node.value.attr == "system_attrs" else None
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = node.func
            if f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "system_attrs":
                key = node.args[0]
            elif f.attr in ("set_system_attr", "set_trial_system_attr"):
                key = node.args[-2] if len(node.args) >= 2 else None
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            c = node.comparators[0]
            key = node.left if isinstance(c, ast.Attribute) and c.attr == "system_attrs" else None
        elif isinstance(node, ast.keyword) and node.arg == "system_attrs" and isinstance(node.value, ast.Dict):
            key = next((k for k in node.value.keys if isinstance(k, ast.Constant)), None)
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            hit(key, f"system_attrs[{key.value!r}]")
    return [f"{rel}:{line}: {what}" for line, what in sorted(out)]


def test_the_private_finder_sees_each_kind_of_use(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import optuna\nfrom benchmarks import lab_seeds\nfrom syne_tune.x import Backend\n"
        "from syne_tune.y import nd as ndp\nfrom optuna.storages._rdb import models\n"
        "a = optuna.storages._CachedStorage\n"  # 6: a private attribute of another library
        "b = self._x, cls._y, super()._z, lab_seeds._provenance_of\n"  # ours: fine
        "class B(Backend):\n    def _advance(self): pass\n    def public(self): pass\n"  # 9: an override
        "ndp.pareto_efficient = len\n"  # 11: a patch
        'c = t.system_attrs["grid_id"], t.system_attrs.get("k"), "k" in t.system_attrs\n'  # 12 (three)
        'd = create_trial(system_attrs={"grid_id": 1})\ne = t.system_attrs.get(NAME)\n'  # 13; 14 is fine
        "class C:\n    def _helper(self): pass\n"  # a class of ours: fine
    )
    assert [h.split(": ", 1)[0] for h in _private_uses(src, "m.py")] == [
        "m.py:5", "m.py:6", "m.py:9", "m.py:11", "m.py:12", "m.py:12", "m.py:12", "m.py:13"
    ]  # fmt: skip


def test_only_the_adapter_modules_use_optuna_or_syne_tune_internals() -> None:
    """Issue 29: a private member of Optuna or Syne Tune (read, overridden, patched), or a system attribute Optuna's
    samplers write on a trial, is used in its adapter module only (ADAPTERS), so a release that changes one breaks
    one module whose tests pin it. Exceptions that are not another library's internals: PRIVATE_OK."""
    assert all((ROOT / a).is_file() for a in ADAPTERS)
    found = [hit for m, p in _modules().items() if m.split(".")[0] in CHECKED
             and (rel := p.relative_to(ROOT).as_posix()) not in ADAPTERS for hit in _private_uses(p, rel)]  # fmt: skip
    assert not found, f"another library's internals used outside its adapter module: {found}"


def _path_edits(path: Path) -> list[int]:
    """Lines of ``path`` that change ``sys.path`` (``sys.path.insert/append/extend(...)``, ``sys.path[...] = ...``,
    ``sys.path = ...``, ``sys.path += ...``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("insert", "append", "extend") and _dotted(node.func.value) == "sys.path":
                out.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if _dotted(t.value if isinstance(t, ast.Subscript) else t) == "sys.path":
                    out.append(node.lineno)
    return sorted(out)


def test_the_lab_and_the_tests_import_by_package_names_without_editing_sys_path(tmp_path: Path) -> None:
    """Issue 29: the lab is the package ``benchmarks``, run as ``python -m benchmarks.<name>`` from the repository
    root, where pytest runs the tests too; no module of it and no test edits ``sys.path`` to find another."""
    src = tmp_path / "m.py"
    src.write_text("import sys\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\nsys.path += ['z']\n"
                   "sys.path.append('w')\nn = len(sys.path)\n")  # fmt: skip
    assert _path_edits(src) == [2, 3, 4, 5]
    found = [f"{p.relative_to(ROOT)}:{line}" for folder in ("benchmarks", "tests")
             for p in (ROOT / folder).rglob("*.py") for line in _path_edits(p)]  # fmt: skip
    assert not found, f"sys.path edited: {found}"
