"""Search spaces: YAML schema (pydantic), validation before any training, and define-by-run sampling.

A space fixes the geometry (input, stem, downsampling, number of stages) and lists, per stage, the allowed mixers
(or block patterns) and per mixer the allowed knob values. Knobs are conditional: ``s2.cska.heads`` exists only in
trials whose stage 2 uses ``cska``. Depth and width may be searched. Every value is checked against the mixer
registry when the file is loaded, so a typo fails in one line before anything runs.

Optuna parameter names: ``s{i}.mixer`` (a pattern is encoded ``dwconv+key_only``), ``s{i}.depth``, ``s{i}.dim``,
``s{i}.{mixer}.{knob}``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from nas import cost, mixers
from nas.arch import ArchSpec, ConvSpec, HeadSpec, StageSpec, pydantic_problem
from nas.errors import ConfigError, InfeasibleArchError
from nas.model_args import block_mixers, default_res_scale
from nas.yamlfile import read_yaml

Suggest = Callable[[str, list[Any]], Any]
PATTERN_SEP = "+"
MAX_KNOB_COMBOS = 4096  # per stage and mixer; beyond it feasibility is checked one knob at a time


def _as_choices(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


class InputSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    img_size: int = Field(ge=1)
    in_chans: int = Field(default=3, ge=1)


class StageSpace(BaseModel):
    """Allowed choices for one stage. ``depth``/``dim``: a value or a list to search over."""

    model_config = ConfigDict(extra="forbid")
    depth: int | list[int]
    dim: int | list[int]
    mixers: list[str | list[str]] = Field(min_length=1)
    knobs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    res_scale: float | None = None

    @field_validator("depth", "dim")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        vals = _as_choices(v)
        if not vals:
            raise ValueError("empty choice list; give at least one value")
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in vals):
            raise ValueError(f"every value must be a positive integer, got {v!r}")
        return v

    @field_validator("mixers")
    @classmethod
    def _patterns(cls, v: list[str | list[str]]) -> list[str | list[str]]:
        for m in v:
            if isinstance(m, list) and not m:
                raise ValueError("a block pattern must list at least one mixer")
        return v


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_params: float | None = Field(default=None, gt=0)
    max_flops: float | None = Field(default=None, gt=0)


class SearchSpace(BaseModel):
    """A search space file (search_spaces/*.yaml); see the README for the format."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    input: InputSpace
    stem: ConvSpec = ConvSpec(kernel=7, stride=4)
    downsample: ConvSpec = ConvSpec(kernel=3, stride=2)
    mlp_ratio: float = Field(default=4.0, gt=0)
    drop_path_rate: float = Field(default=0.0, ge=0, lt=1)
    head: HeadSpec = HeadSpec()
    knobs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stages: list[StageSpace] = Field(min_length=1)
    constraints: Constraints = Constraints()
    _where: str = PrivateAttr(default="search space")  # the file it was read from, for messages

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        raw = read_yaml(path, "search space file not found; check the path (relative to the study file)")
        return cls.from_dict(raw, where=str(path))

    @classmethod
    def from_dict(cls, raw: Any, where: str = "search space") -> SearchSpace:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
        try:
            space = cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(pydantic_line(where, e)) from None
        space.validate_semantics(where)
        space._where = where
        return space

    # ------------------------------------------------------------------------------------------ semantics
    def grids(self) -> list[tuple[int, int]]:
        return self._skeleton(num_classes=1).grids()

    def _skeleton(self, num_classes: int) -> ArchSpec:
        stages = tuple(
            StageSpec(depth=_as_choices(s.depth)[0], dim=_as_choices(s.dim)[0], mixer="dwconv") for s in self.stages
        )
        return ArchSpec.model_construct(
            in_chans=self.input.in_chans,
            num_classes=num_classes,
            img_size=self.input.img_size,
            stem=self.stem,
            downsample=self.downsample,
            stages=stages,
            mlp_ratio=self.mlp_ratio,
            drop_path_rate=self.drop_path_rate,
            head=self.head,
        )

    def stage_knobs(self, i: int, mixer: str) -> dict[str, list[Any]]:
        """Allowed values of every knob of ``mixer`` in stage i (stage overrides global); [] = default."""
        merged = dict(self.knobs.get(mixer, {}))
        merged.update(self.stages[i].knobs.get(mixer, {}))
        return {k: _as_choices(v) for k, v in merged.items()}

    def validate_semantics(self, where: str) -> None:
        """Mixer names, knob names and values, and feasibility of the fixed geometry — before any training."""
        for scope, table in [("knobs", self.knobs)] + [
            (f"stages[{i}].knobs", s.knobs) for i, s in enumerate(self.stages)
        ]:
            for mixer, knobs in table.items():
                defn = mixers.get(mixer, where=f"{where}: {scope}.{mixer}")
                if not isinstance(knobs, dict):
                    raise ConfigError(f"{where}: {scope}.{mixer}: expected a mapping knob -> values")
                for knob, values in knobs.items():
                    if knob not in defn.knobs:
                        raise ConfigError(
                            f"{where}: {scope}.{mixer}.{knob}: unknown knob for mixer '{mixer}'; "
                            f"known: {sorted(defn.knobs)}"
                        )
                    if not _as_choices(values):
                        raise ConfigError(
                            f"{where}: {scope}.{mixer}.{knob}: empty choice list; give at least one value"
                        )
                    for v in _as_choices(values):  # checked here too, so the message names where it was written
                        defn.knobs[knob].resolve(1, v, f"{where}: {scope}.{mixer}.{knob}")
        for i, grid in enumerate(self.grids()):
            loc = f"{where}: stages[{i}]"
            if grid[0] < 1 or grid[1] < 1:
                raise ConfigError(f"{loc}: token grid {grid} is empty; use a larger input.img_size or fewer stages")
            st = self.stages[i]
            for j, entry in enumerate(st.mixers):
                for name in _as_choices(entry):
                    defn = mixers.get(name, where=f"{loc}.mixers[{j}]")
                    self._check_mixer(defn, i, grid, f"{loc}.mixers[{j}] '{name}'")

    def knob_combos(self, i: int, name: str) -> tuple[list[dict[str, Any]], bool]:
        """Every combination of the knob values stage i allows for mixer ``name`` (unlisted knobs keep their
        default), and whether that is all of them: beyond MAX_KNOB_COMBOS, one knob varies at a time."""
        allowed = self.stage_knobs(i, name)
        names = list(allowed)
        if math.prod(len(allowed[k]) for k in names) <= MAX_KNOB_COMBOS:
            return [dict(zip(names, vs, strict=True)) for vs in itertools.product(*(allowed[k] for k in names))], True
        base = {k: vs[0] for k, vs in allowed.items()}
        return [{**base, k: v} for k, vs in allowed.items() for v in vs], False

    def _check_mixer(self, defn: mixers.MixerDef, i: int, grid: tuple[int, int], loc: str) -> None:
        """Each allowed knob value must take part in at least one feasible build at some searched width.

        Only the values the space allows are combined (a knob it does not list keeps its default), so a fixed
        ``head_dim: 16`` at dim 16 is fine even though the default head_dim 32 would not divide it."""
        dims = _as_choices(self.stages[i].dim)
        allowed = self.stage_knobs(i, defn.name)
        for knob, values in allowed.items():
            for v in values:
                defn.knobs[knob].resolve(dims[0], v, f"{loc}: knob")
        combos, _ = self.knob_combos(i, defn.name)
        feasible, reason = [], ""
        for combo in combos:
            reasons = [defn.feasibility_fn(d, grid, defn.resolve_knobs(d, combo, loc)) for d in dims]
            if all(reasons):
                reason = reason or reasons[0][0]
            else:
                feasible.append(combo)
        fix = "remove it from this stage or change the geometry/knob values"
        if not feasible:
            what = f"with every allowed knob combination {allowed}" if allowed else "at its default knobs"
            dims_s = f"for every dim {dims}"
            raise InfeasibleArchError(f"{loc} is infeasible at grid {grid} {what} {dims_s}: {reason}; {fix}")
        for knob, values in allowed.items():
            for v in values:
                if not any(c[knob] == v for c in feasible):
                    combo = next(c for c in combos if c[knob] == v)
                    why = defn.feasibility_fn(dims[0], grid, defn.resolve_knobs(dims[0], combo, loc))[0]
                    raise InfeasibleArchError(
                        f"{loc} with {knob}={v!r} is infeasible at grid {grid} for every dim {dims}: {why}; "
                        f"drop {v!r} from knobs.{defn.name}.{knob} or override it in stages[{i}].knobs"
                    )

    # ------------------------------------------------------------------------------------------ cheapest
    def cheapest(self, num_classes: int) -> cost.Cost:
        """A lower bound on the parameters and, separately, on the MACs of every architecture of the space (each
        minimised on its own), from the cost formulas alone: a dynamic programme over the stages whose state is
        the previous stage's width (the downsampling conv couples neighbouring stages). Exact unless a stage
        allows more than MAX_KNOB_COMBOS knob combinations (then that mixer counts as free: still a bound)."""
        grids = self.grids()
        best = {}
        for key in ("params", "macs"):
            table: dict[int, int] = {}  # width of the last stage -> cheapest cost of everything up to it
            for i, st in enumerate(self.stages):
                new: dict[int, int] = {}
                for dim in _as_choices(st.dim):
                    blocks = self._cheapest_blocks(i, dim, grids[i], key)
                    if blocks is None:
                        continue
                    if i == 0:
                        new[dim] = getattr(cost.stem(self.input.in_chans, dim, self.stem.model_dump(), grids[0]), key)
                    elif table:
                        down = self.downsample.model_dump()
                        new[dim] = min(
                            v + getattr(cost.downsample(p, dim, down, grids[i]), key) for p, v in table.items()
                        )
                    else:
                        continue
                    new[dim] += blocks
                table = new
            head = self.head.model_dump()
            best[key] = min((v + getattr(cost.head(d, head, num_classes), key) for d, v in table.items()), default=0)
        return cost.Cost(best["params"], best["macs"])

    def _cheapest_blocks(self, i: int, dim: int, grid: tuple[int, int], key: str) -> int | None:
        """Cheapest blocks of stage i at width ``dim`` over its depths, mixer entries and feasible knobs."""
        st = self.stages[i]
        res = st.res_scale if st.res_scale is not None else default_res_scale(i)
        rest = getattr(cost.block_rest(dim, grid, self.mlp_ratio, res, None), key)
        per_mixer: dict[str, int | None] = {}
        for name in {n for e in st.mixers for n in _as_choices(e)}:
            defn = mixers.get(name)
            combos, complete = self.knob_combos(i, name)
            values = []
            for combo in combos:
                knobs = defn.resolve_knobs(dim, combo, name)
                if not defn.feasibility_fn(dim, grid, knobs):
                    values.append(getattr(cost.mixer(name, dim, grid, grid, knobs), key))
            per_mixer[name] = (min(values) if complete else 0) if values else None
        best = None
        for depth in _as_choices(st.depth):
            for entry in st.mixers:
                pattern = _as_choices(entry)
                if any(per_mixer[n] is None for n in pattern):
                    continue
                total = depth * rest + sum(per_mixer[n] for n in block_mixers(pattern, depth))
                best = total if best is None else min(best, total)
        return best

    def check_reachable(self, num_classes: int) -> None:
        """Raise a one-line error when no architecture of the space can meet its constraints (see cheapest)."""
        c = self.constraints
        if c.max_params is None and c.max_flops is None:
            return
        low = self.cheapest(num_classes)
        for field, limit, smallest, unit in (
            ("max_params", c.max_params, low.params, "params"),
            ("max_flops", c.max_flops, low.flops, "FLOPs"),
        ):
            if limit is not None and smallest > limit:
                raise InfeasibleArchError(
                    f"{self._where}: constraints.{field} {int(limit):,} is below the smallest architecture of space "
                    f"'{self.name}' ({smallest:,} {unit} with {num_classes} classes); raise {field} to at least "
                    f"{smallest:,} or allow smaller stages"
                )

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, suggest: Suggest, num_classes: int) -> ArchSpec:
        """Define-by-run: ask ``suggest(name, choices)`` for every decision; only chosen mixers' knobs are asked."""
        stages = []
        for i, st in enumerate(self.stages):
            entries = [e if isinstance(e, str) else PATTERN_SEP.join(e) for e in st.mixers]
            choice = _pick(suggest, f"s{i}.mixer", entries)
            depth = _pick(suggest, f"s{i}.depth", _as_choices(st.depth))
            dim = _pick(suggest, f"s{i}.dim", _as_choices(st.dim))
            pattern = tuple(choice.split(PATTERN_SEP))
            knobs = {}
            for name in dict.fromkeys(pattern):
                knobs[name] = {k: _pick(suggest, f"s{i}.{name}.{k}", vs) for k, vs in self.stage_knobs(i, name).items()}
            stage = {"depth": depth, "dim": dim, "mixer": list(pattern), "knobs": knobs}
            if st.res_scale is not None:  # else the model_args default (CAFormer's: 1.0 from the third stage)
                stage["res_scale"] = st.res_scale
            stages.append(stage)
        skeleton = self._skeleton(num_classes).model_dump(mode="json", exclude={"stages"})
        return ArchSpec.from_model_args({**skeleton, "stages": stages}, where=f"space '{self.name}'")

    def param_grid(self) -> dict[str, list[Any]]:
        """Every Optuna parameter the space can ask, with its choices (knobs of every mixer a stage allows, so a
        conditional knob multiplies the grid: the architectures that differ only in an unused knob are reused by
        the engine, not trained twice). What ``sampler: grid`` enumerates."""
        grid: dict[str, list[Any]] = {}
        for i, st in enumerate(self.stages):
            entries = [e if isinstance(e, str) else PATTERN_SEP.join(e) for e in st.mixers]
            for name, choices in ((f"s{i}.mixer", entries), (f"s{i}.depth", _as_choices(st.depth)),
                                  (f"s{i}.dim", _as_choices(st.dim))):  # fmt: skip
                if len(choices) > 1:
                    grid[name] = list(choices)
            for mixer in dict.fromkeys(n for e in st.mixers for n in _as_choices(e)):
                for knob, vs in self.stage_knobs(i, mixer).items():
                    if len(vs) > 1:
                        grid[f"s{i}.{mixer}.{knob}"] = list(vs)
        return grid

    def arch_from_params(self, params: dict[str, Any], num_classes: int) -> ArchSpec:
        """Rebuild the ArchSpec of a trial from its Optuna params (fixed choices are filled in)."""

        def suggest(name: str, choices: list[Any]) -> Any:
            return params[name] if name in params else choices[0]

        return self.sample(suggest, num_classes)

    def check_constraints(self, arch: ArchSpec) -> list[str]:
        """Budget constraints (params, FLOPs) computed without training; empty list = within budget."""
        c = self.constraints
        if c.max_params is None and c.max_flops is None:
            return []
        total = cost.arch_cost(arch.to_model_args())
        params, flops = total.params, total.flops
        reasons = []
        if c.max_params is not None and params > c.max_params:
            reasons.append(f"params {params:,} > max_params {int(c.max_params):,}")
        if c.max_flops is not None and flops > c.max_flops:
            reasons.append(f"FLOPs {flops:,} > max_flops {int(c.max_flops):,}")
        return reasons

    def space_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _pick(suggest: Suggest, name: str, choices: list[Any]) -> Any:
    """Fixed values (one choice) are not Optuna parameters; real choices are."""
    return choices[0] if len(choices) == 1 else suggest(name, choices)


def pydantic_line(where: str, err: ValidationError) -> str:
    """One line from a pydantic error: file, field path (``stages[1].depth``), message and the offending value.

    A model-level check (no location) names its fields in its own message."""
    path, msg = pydantic_problem(err)
    return f"{where}: {path}: {msg}" if path else f"{where}: {msg}"
