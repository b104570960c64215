"""ArchSpec: a typed, hashable view of one architecture's resolved ``model_args``.

The JSON layout is the public contract in docs/model_args.md, and :func:`nas.model_args.resolve_model_args` is its one
validator: ``ArchSpec.from_model_args`` runs it and only types the result. ``arch_id`` is the sha256 of the canonical
JSON of the *resolved* args (every omitted knob filled with its default), so two files that describe the same network
hash the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nas.model_args import mixer_pattern, resolve_model_args, stage_grids

_UNION_TAG = re.compile(r"^(int|float|str|bool|none|.*\[.*\])$")  # pydantic names union members in error locs


def loc_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the user wrote it: ``stages[1].depth`` (union-member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.match(str(part)):
            out += ("." if out else "") + str(part)
    return out


def pydantic_problem(err: ValidationError) -> tuple[str, str]:
    """(field path, one-line message with the offending value) of the first problem pydantic found."""
    errors = err.errors()
    e = errors[0]
    path = loc_path(e["loc"])
    for other in errors[1:]:  # a list that failed inside: name the element, not the whole list
        p = loc_path(other["loc"])
        if p.startswith(path) and len(p) > len(path):
            e, path = other, p
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif e["type"] == "missing":
        msg = "required field is missing; add it"
    inp = e.get("input")
    shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(inp, dict) else f" (got {inp!r})"
    others = {p for p in (loc_path(o["loc"]) for o in errors) if not path.startswith(p)}  # not its consequences
    more = f" (+{len(others)} more)" if others else ""
    return path, f"{msg}{shown}{more}"


class ConvSpec(BaseModel):
    """A strided conv (stem or downsampling); padding is (kernel - stride + 1) // 2."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kernel: int = Field(ge=1)
    stride: int = Field(ge=1)


class HeadSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    hidden_ratio: float = Field(default=4.0, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class StageSpec(BaseModel):
    """One stage: depth blocks of width dim; ``mixer`` is a name or a block pattern cycled over the depth."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    depth: int = Field(ge=1)
    dim: int = Field(ge=1)
    mixer: str | tuple[str, ...]
    knobs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    res_scale: float | None = None
    layer_scale: float | None = None

    @field_validator("mixer")
    @classmethod
    def _nonempty(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(v, tuple) and not v:
            raise ValueError("a block pattern needs at least one mixer")
        return v

    @property
    def pattern(self) -> tuple[str, ...]:
        return mixer_pattern(self.mixer)


class ArchSpec(BaseModel):
    """A MetaFormer architecture (stem, stages with their mixers and knobs, head); see docs/model_args.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    in_chans: int = Field(default=3, ge=1)
    num_classes: int = Field(default=1000, ge=0)
    img_size: int | tuple[int, int] = 224
    stem: ConvSpec = ConvSpec(kernel=7, stride=4)
    downsample: ConvSpec = ConvSpec(kernel=3, stride=2)
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    drop_path_rate: float = Field(default=0.0, ge=0, lt=1)
    head: HeadSpec = HeadSpec()

    @classmethod
    def from_model_args(cls, args: dict[str, Any], where: str = "model_args") -> ArchSpec:
        """Validate and resolve ``args`` (one-line ConfigError naming the field, prefixed by ``where``)."""
        return cls.model_validate(resolve_model_args(args, where=where))

    def grids(self) -> list[tuple[int, int]]:
        """Token grid of every stage (nas.model_args.stage_grids)."""
        return stage_grids(self.img_size, self.stem.model_dump(), self.downsample.model_dump(), len(self.stages))

    # ----------------------------------------------------------------------------------------- outputs
    def to_model_args(self) -> dict[str, Any]:
        """JSON-safe kwargs for ``timm.create_model('mixerformer', **model_args)`` (already resolved)."""
        return self.model_dump(mode="json")

    def canonical_json(self) -> str:
        return json.dumps(self.to_model_args(), sort_keys=True, separators=(",", ":"))

    @property
    def arch_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def placement(self) -> str:
        """Human summary, e.g. ``dwconv·dwconv·cska(g8)·mhsa``; a block pattern shows as ``dwconv+key_only``."""
        parts = []
        for st in self.stages:
            names = []
            for name in st.pattern:
                k = st.knobs.get(name, {})
                tag = {
                    "cska": f"g{k.get('heads')}",
                    "manifold_key": f"m{k.get('charts')}",
                    "key_only": f"h{k.get('heads')}",
                }.get(name)
                names.append(f"{name}({tag})" if tag else name)
            parts.append("+".join(names))
        return "·".join(parts)
