"""The one mixer interface and the registry that maps mixer *names* to implementations.

Contract (ARCHITECTURE.md "One mixer interface"):

* a mixer is an ``nn.Module`` built as ``cls(dim, grid, **knobs)`` where ``grid = (h, w)`` is the token grid the
  stage was designed for (static-key mixers size their parameters from it; the others may ignore it);
* ``forward(x)`` takes channels-last ``[B, H, W, C]`` and returns the same shape; the grid of the call is read
  from ``x`` (static-key mixers resize their key when it differs from the build grid, spec R1);
* each family is described by a :class:`MixerDef`: its knobs with defaults and allowed values, a
  ``feasibility(dim, grid, knobs)`` check returning human-readable reasons, and analytic parameter / MAC
  counts from ``shared/specs/mixers.md`` (MACs count Linear/Conv/matmul multiply-adds only; FLOPs = 2 x MACs).

Only torch and the standard library are imported here (an exported model must rebuild with torch + timm).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from nas.errors import ConfigError, InfeasibleArchError

Grid = tuple[int, int]
Knobs = dict[str, Any]


@dataclass(frozen=True)
class Knob:
    """One tunable setting of a mixer family.

    ``choices`` lists every allowed value (what a search space may pick from); ``None`` means any value of
    ``kind`` accepted by ``check``. ``dim_default`` computes a default that depends on the stage width
    (e.g. CSKA's heads = dim // 16); it is used when ``default`` is None.
    """

    name: str
    kind: type
    default: Any
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    dim_default: Callable[[int], Any] | None = None
    check: Callable[[Any], bool] | None = None

    def resolve(self, dim: int, value: Any, where: str) -> Any:
        if value is None:
            if self.default is None and self.dim_default is not None:
                return self.dim_default(dim)
            return self.default
        ok_type = isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            raise ConfigError(
                f"{where}: knob '{self.name}' must be {self.kind.__name__}, got {value!r}"
                + (f"; allowed: {list(self.choices)}" if self.choices else "")
            )
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: knob '{self.name}' = {value!r} is not allowed; allowed: {list(self.choices)}")
        if self.check is not None and not self.check(value):
            raise ConfigError(f"{where}: knob '{self.name}' = {value!r} is invalid: {self.doc}")
        return value


def head_dim_knob(doc: str = "channels per head; dim must divide by it") -> Knob:
    """Channels per head (32 by default; 16, 32 or 64 in a search): the width must divide by it."""
    return Knob("head_dim", int, 32, (16, 32, 64), doc)


def heads_knob(per_head: int, doc: str) -> Knob:
    """An integer head count that must divide the width; defaults to ``dim // per_head`` (at least 1)."""
    return Knob("heads", int, None, None, doc, dim_default=lambda dim: max(1, dim // per_head), check=lambda v: v >= 1)


@dataclass(frozen=True)
class MixerDef:
    """Registry entry of one mixer family (name, class, knobs, feasibility and analytic costs)."""

    name: str
    cls: type[nn.Module]
    knobs: Mapping[str, Knob]
    feasibility_fn: Callable[[int, Grid, Knobs], list[str]]
    params_fn: Callable[[int, Grid, Knobs], int]
    macs_fn: Callable[[int, Grid, Knobs], int]
    doc: str = ""

    def resolve_knobs(self, dim: int, knobs: Mapping[str, Any] | None, where: str) -> Knobs:
        """Fill defaults and validate every knob; raises ConfigError naming ``where`` and the knob."""
        knobs = dict(knobs or {})
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            raise ConfigError(
                f"{where}: unknown knob(s) {unknown} for mixer '{self.name}'; known: {sorted(self.knobs)}"
            )
        return {k: spec.resolve(dim, knobs.get(k), where) for k, spec in self.knobs.items()}

    def feasibility(self, dim: int, grid: Grid, knobs: Mapping[str, Any] | None = None) -> list[str]:
        """Reasons this mixer cannot (or should not) be used at this width and grid; empty if feasible."""
        resolved = self.resolve_knobs(dim, knobs, f"mixer '{self.name}'")
        return self.feasibility_fn(dim, tuple(grid), resolved)

    def params(self, dim: int, grid: Grid, knobs: Mapping[str, Any] | None = None) -> int:
        return self.params_fn(dim, tuple(grid), self.resolve_knobs(dim, knobs, f"mixer '{self.name}'"))

    def macs(self, dim: int, grid: Grid, knobs: Mapping[str, Any] | None = None) -> int:
        """Analytic multiply-accumulates for one image (Linear/Conv/matmul terms only)."""
        return self.macs_fn(dim, tuple(grid), self.resolve_knobs(dim, knobs, f"mixer '{self.name}'"))

    def build(self, dim: int, grid: Grid, knobs: Mapping[str, Any] | None = None, where: str = "") -> nn.Module:
        """Validate, check feasibility, and construct the module. Raises a one-line project error."""
        where = where or f"mixer '{self.name}'"
        resolved = self.resolve_knobs(dim, knobs, where)
        reasons = self.feasibility_fn(dim, tuple(grid), resolved)
        if reasons:
            raise InfeasibleArchError(
                f"{where}: mixer '{self.name}' at dim={dim}, grid={tuple(grid)}: {'; '.join(reasons)}"
            )
        return self.cls(dim, tuple(grid), **resolved)


_REGISTRY: dict[str, MixerDef] = {}


def register(defn: MixerDef) -> MixerDef:
    if defn.name in _REGISTRY and _REGISTRY[defn.name] is not defn:
        raise ValueError(f"mixer '{defn.name}' registered twice")
    _REGISTRY[defn.name] = defn
    return defn


def get(name: str, where: str = "") -> MixerDef:
    """Look a mixer family up by name; unknown names raise a ConfigError listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown mixer {name!r}; known mixers: {sorted(_REGISTRY)}") from None


def names() -> list[str]:
    return list(_REGISTRY)


def divides(dim: int, parts: int, what: str) -> list[str]:
    """Common feasibility helper: ``dim`` must split evenly into ``parts``."""
    if parts <= 0:
        return [f"{what} must be positive, got {parts}"]
    if dim % parts:
        return [f"dim {dim} is not divisible by {what} {parts}"]
    return []
