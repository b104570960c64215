"""The ``model_args`` contract (docs/model_args.md): defaults, validation and resolution, and the token-grid
arithmetic — the one place both live.

:func:`resolve_model_args` turns user-written ``model_args`` into the fully-resolved JSON-safe dict (every default
filled in, every knob validated against the mixer registry, every stage checked for feasibility at its grid). The
model (:class:`nas.models.MixerFormer`), :class:`nas.arch.ArchSpec` and :mod:`nas.cost` all go through it, so an
architecture is validated once, the same way, wherever it comes from. :func:`stage_grids` is the only place the
stem/downsampling conv arithmetic is written. Pure Python over the mixer registry (no pydantic, no timm).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from nas import mixers
from nas.errors import ConfigError, InfeasibleArchError

__all__ = [
    "DEFAULT_MODEL_ARGS",
    "as_int",
    "conv_padding",
    "default_res_scale",
    "resolve_model_args",
    "s18_stages",
    "stage_grids",
]

_S18_DEPTHS, _S18_DIMS = (3, 3, 9, 3), (64, 128, 320, 512)
TOP_FIELDS = ("in_chans", "num_classes", "img_size", "stem", "downsample", "stages", "mlp_ratio")
TOP_FIELDS += ("drop_path_rate", "head")
STAGE_FIELDS = ("depth", "dim", "mixer", "knobs", "res_scale", "layer_scale")
RESCALE_FROM_STAGE = 2  # CAFormer: learnable residual scale (init 1.0) in stages 3-4 (index >= 2) only


def default_res_scale(stage_index: int) -> float | None:
    """The residual scale a stage gets when model_args leave it out (CAFormer's layout)."""
    return 1.0 if stage_index >= RESCALE_FROM_STAGE else None


def s18_stages(stage_mixers: list[str]) -> list[dict[str, Any]]:
    """The CAFormer/ConvFormer-S18 stage layout (depths 3,3,9,3; dims 64,128,320,512) with given mixers."""
    return [{"depth": d, "dim": c, "mixer": m} for d, c, m in zip(_S18_DEPTHS, _S18_DIMS, stage_mixers, strict=True)]


DEFAULT_MODEL_ARGS: dict[str, Any] = {
    "in_chans": 3,
    "num_classes": 1000,
    "img_size": 224,
    "stem": {"kernel": 7, "stride": 4},
    "downsample": {"kernel": 3, "stride": 2},
    "stages": s18_stages(["dwconv", "dwconv", "mhsa", "mhsa"]),
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.0,
    "head": {"hidden_ratio": 4.0, "dropout": 0.0},
}


# ----------------------------------------------------------------------------------------------- validation
def as_int(v: Any, where: str, lo: int) -> int:
    """``v`` as an integer >= ``lo`` (bools refused), else a ConfigError naming ``where``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: must be an integer >= {lo}, got {v!r}")
    return v


def _float(v: Any, where: str, lo: float, hi: float | None = None, hi_open: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{where}: must be a number {rng}, got {v!r}")
    return float(v)


def _dict(v: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: must be a mapping with fields {list(fields)}, got {v!r}")
    unknown = sorted(set(v) - set(fields), key=str)
    if unknown:
        more = f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConfigError(
            f"{where}: unknown field {where}.{unknown[0]}{more}; remove it or check its spelling "
            f"(known: {list(fields)})"
        )
    return dict(v)


def mixer_pattern(mixer: str | Sequence[str]) -> tuple[str, ...]:
    """A stage's ``mixer`` as a block pattern: one name is a pattern of one."""
    return (mixer,) if isinstance(mixer, str) else tuple(mixer)


def block_mixers(mixer: str | Sequence[str], depth: int) -> list[str]:
    """The mixer of each of a stage's ``depth`` blocks: the block pattern cycled over the depth (the one rule the
    model, the cost formulas, the timm mapping and the search space's cheapest-architecture bound all use)."""
    pattern = mixer_pattern(mixer)
    return [pattern[b % len(pattern)] for b in range(depth)]


def conv_padding(kernel: int, stride: int) -> int:
    """Padding of the stem and downsampling convs: ``(kernel - stride + 1) // 2``."""
    return (kernel - stride + 1) // 2


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * conv_padding(kernel, stride) - kernel) // stride + 1


def stage_grids(img_size: int | tuple[int, int] | list[int], stem: Mapping, downsample: Mapping, n: int):
    """Token grid ``(h, w)`` of each of ``n`` stages for an input of ``img_size`` (conv arithmetic)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    grids = []
    for i in range(n):
        conv = stem if i == 0 else downsample
        h, w = _conv_out(h, conv["kernel"], conv["stride"]), _conv_out(w, conv["kernel"], conv["stride"])
        grids.append((h, w))
    return grids


def _mixer_names(v: Any, where: str) -> list[str]:
    names = [v] if isinstance(v, str) else v
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"{where}: must be a mixer name or a non-empty list of names, got {v!r}")
    for j, n in enumerate(names):
        loc = where if isinstance(v, str) else f"{where}[{j}]"
        if not isinstance(n, str):
            raise ConfigError(f"{loc}: must be a mixer name, got {n!r}; known mixers: {sorted(mixers.names())}")
        mixers.get(n, where=loc)
    return list(names)


def resolve_model_args(raw: Mapping[str, Any], where: str = "model_args") -> dict[str, Any]:
    """Validate ``model_args`` and return the fully-resolved JSON-safe dict (every default filled in, knobs of
    mixers a stage does not use dropped, each stage's mixers checked for feasibility at its grid).

    The one validation of an architecture: the model, ArchSpec and the cost formulas all go through it; it is
    idempotent on its own output. Raises ConfigError (InfeasibleArchError for well-formed but unbuildable
    stages) with a one-line message naming the field, prefixed by ``where``.
    """
    a = _dict(raw, where, TOP_FIELDS)
    a = dict(copy.deepcopy(DEFAULT_MODEL_ARGS), **copy.deepcopy(a))
    out: dict[str, Any] = {
        "in_chans": as_int(a["in_chans"], f"{where}.in_chans", 1),
        "num_classes": as_int(a["num_classes"], f"{where}.num_classes", 0),
    }
    img = a["img_size"]
    if isinstance(img, (list, tuple)) and len(img) == 2:
        img = [as_int(s, f"{where}.img_size", 1) for s in img]
        img = img[0] if img[0] == img[1] else img  # one canonical form (timm's save_for_hf writes [h, w])
    else:
        img = as_int(img, f"{where}.img_size", 1)
    out["img_size"] = img
    for conv, dflt in (("stem", (7, 4)), ("downsample", (3, 2))):
        c = _dict(a[conv], f"{where}.{conv}", ("kernel", "stride"))
        out[conv] = {
            "kernel": as_int(c.get("kernel", dflt[0]), f"{where}.{conv}.kernel", 1),
            "stride": as_int(c.get("stride", dflt[1]), f"{where}.{conv}.stride", 1),
        }
    if not isinstance(a["stages"], (list, tuple)) or not a["stages"]:
        raise ConfigError(f"{where}.stages: must be a non-empty list of stages, got {a['stages']!r}")
    grids = stage_grids(img, out["stem"], out["downsample"], len(a["stages"]))
    out["stages"] = [
        _stage(s, i, grid, out, f"{where}.stages[{i}]")
        for i, (s, grid) in enumerate(zip(a["stages"], grids, strict=True))
    ]
    out["mlp_ratio"] = _float(a["mlp_ratio"], f"{where}.mlp_ratio", 1e-9)
    out["drop_path_rate"] = _float(a["drop_path_rate"], f"{where}.drop_path_rate", 0.0, 1.0, hi_open=True)
    h = _dict(a["head"], f"{where}.head", ("hidden_ratio", "dropout"))
    out["head"] = {
        "hidden_ratio": _float(h.get("hidden_ratio", 4.0), f"{where}.head.hidden_ratio", 0.0),
        "dropout": _float(h.get("dropout", 0.0), f"{where}.head.dropout", 0.0, 1.0, hi_open=True),
    }
    return out


def _stage(s: Any, i: int, grid: tuple[int, int], out: Mapping[str, Any], w: str) -> dict[str, Any]:
    s = _dict(s, w, STAGE_FIELDS)
    for req in ("depth", "dim", "mixer"):
        if req not in s:
            raise ConfigError(f"{w}: missing required field '{req}'; add it")
    st: dict[str, Any] = {"depth": as_int(s["depth"], f"{w}.depth", 1), "dim": as_int(s["dim"], f"{w}.dim", 1)}
    names = _mixer_names(s["mixer"], f"{w}.mixer")
    st["mixer"] = names[0] if isinstance(s["mixer"], str) or len(names) == 1 else names
    knobs = s.get("knobs") or {}
    if not isinstance(knobs, Mapping):
        raise ConfigError(f"{w}.knobs: must map mixer names to knob dicts, got {knobs!r}")
    for name in knobs:
        mixers.get(name, where=f"{w}.knobs")
        if name not in names:
            raise ConfigError(f"{w}.knobs.{name}: mixer '{name}' is not used by this stage ({names}); remove it")
        if not isinstance(knobs[name], Mapping):
            raise ConfigError(f"{w}.knobs.{name}: must be a mapping of knob values, got {knobs[name]!r}")
    st["knobs"] = {
        n: mixers.get(n).resolve_knobs(st["dim"], knobs.get(n), f"{w}.knobs.{n}") for n in dict.fromkeys(names)
    }
    rs, ls = s.get("res_scale", default_res_scale(i)), s.get("layer_scale")
    st["res_scale"] = None if rs is None else _float(rs, f"{w}.res_scale", -math.inf)
    st["layer_scale"] = None if ls is None else _float(ls, f"{w}.layer_scale", -math.inf)
    if grid[0] < 1 or grid[1] < 1:
        raise InfeasibleArchError(
            f"{w}: token grid would be {grid[0]}x{grid[1]} at img_size {out['img_size']} (stem k{out['stem']['kernel']}"
            f" s{out['stem']['stride']}, downsample k{out['downsample']['kernel']} s{out['downsample']['stride']}); "
            "use fewer stages, a larger img_size or smaller strides"
        )
    for n in st["knobs"]:
        reasons = mixers.get(n).feasibility_fn(st["dim"], grid, st["knobs"][n])
        if reasons:
            raise InfeasibleArchError(
                f"{w}: mixer '{n}' at dim={st['dim']}, grid={grid[0]}x{grid[1]}: {'; '.join(reasons)}"
            )
    return st
