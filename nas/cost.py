"""Per-stage cost table of a MixerFormer: parameters (counted), analytic mixer params/MACs (registry formulas,
shared/specs/mixers.md) and FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on one image.

Counting conventions (spec §0): MACs count Linear/Conv/matmul multiply-adds only; FLOPs = 2 x MACs, which is
what FlopCounterMode reports (it counts mm/bmm/addmm/convolution and SDPA, not norms or activations).
FLOPs are counted on a ``meta``-device twin built from ``model.model_args`` (no compute, no device traffic,
the caller's model is not touched); a model whose mixers cannot run on ``meta`` is counted on its own device.
Imports only torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class StageCost:
    """One row of the cost table: ``part`` is ``stem``, ``stages[i]`` (downsample + blocks), ``head``, ``total``.

    ``params`` / ``flops`` are counted on the module; ``mixer_*`` cover the token mixers of the stage only
    (``mixer_params`` counted, ``mixer_params_formula`` / ``mixer_macs_formula`` from the registry formulas,
    ``mixer_flops`` counted, to compare with ``2 * mixer_macs_formula``).
    """

    part: str
    mixer: str = ""
    grid: tuple[int, int] | None = None
    dim: int = 0
    depth: int = 0
    params: int = 0
    flops: int = 0
    mixer_params: int = 0
    mixer_params_formula: int = 0
    mixer_macs_formula: int = 0
    mixer_flops: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _grid_for(args: Mapping[str, Any], img_size: int | tuple[int, int] | list[int] | None) -> list:
    from nas.models import stage_grids

    size = args["img_size"] if img_size is None else img_size
    return stage_grids(size, args["stem"], args["downsample"], len(args["stages"]))


def _count_flops(model: nn.Module, args: Mapping[str, Any], hw: tuple[int, int]) -> dict[str, int]:
    """FLOPs per module path (``stages.0.blocks.1.token_mixer``...) for one image of size ``hw``."""
    from nas.models import MixerFormer

    def run(m: nn.Module, device: torch.device | str) -> dict[str, int]:
        x = torch.zeros(1, args["in_chans"], *hw, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x)
        prefix = type(m).__name__
        return {
            ("" if k == prefix else k[len(prefix) + 1 :]): int(sum(v.values()))
            for k, v in fc.get_flop_counts().items()
            if k == prefix or k.startswith(prefix + ".")
        }

    try:
        with torch.device("meta"):
            twin = MixerFormer(**args)
        return run(twin.eval(), "meta")
    except (NotImplementedError, RuntimeError):
        was_training = model.training
        try:
            return run(model.eval(), next(model.parameters()).device)
        finally:
            model.train(was_training)


def stage_costs(model_or_args: nn.Module | Mapping[str, Any], img_size: Any = None) -> list[StageCost]:
    """Cost rows for the stem, every stage, the head and the total, for one image at ``img_size``.

    ``model_or_args`` is a built MixerFormer or a ``model_args`` dict (built on ``meta``, no memory used).
    ``img_size`` defaults to the model's design resolution.
    """
    from nas import mixers
    from nas.models import MixerFormer

    if isinstance(model_or_args, Mapping):
        with torch.device("meta"):
            model = MixerFormer(**model_or_args)
    else:
        model = model_or_args
    args = getattr(model, "model_args", None)
    if args is None:
        raise TypeError(f"stage_costs: expected a MixerFormer or model_args, got {type(model).__name__}")
    grids = _grid_for(args, img_size)
    design = _grid_for(args, None)  # parameters depend on the build grid (static keys), MACs on the run grid
    size = args["img_size"] if img_size is None else img_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    flops = _count_flops(model, args, hw)
    rows = [StageCost("stem", params=_numel(model.stem), flops=flops.get("stem", 0))]
    for i, (st, grid) in enumerate(zip(args["stages"], grids, strict=True)):
        pattern = [st["mixer"]] if isinstance(st["mixer"], str) else st["mixer"]
        mp = mf = pf = mm = 0
        for b, block in enumerate(model.stages[i].blocks):
            name = pattern[b % len(pattern)]
            defn, knobs = mixers.get(name), st["knobs"][name]
            mp += _numel(block.token_mixer)
            mf += flops.get(f"stages.{i}.blocks.{b}.token_mixer", 0)
            pf += defn.params_fn(st["dim"], tuple(design[i]), knobs)
            mm += defn.macs_fn(st["dim"], tuple(grid), knobs)
        rows.append(
            StageCost(
                f"stages[{i}]",
                "·".join(pattern),
                tuple(grid),
                st["dim"],
                st["depth"],
                _numel(model.stages[i]),
                flops.get(f"stages.{i}", 0),
                mp,
                pf,
                mm,
                mf,
            )
        )
    head_params = _numel(model.norm) + _numel(model.head)
    rows.append(StageCost("head", params=head_params, flops=flops.get("norm", 0) + flops.get("head", 0)))
    body = rows[1:-1]
    rows.append(
        StageCost(
            "total",
            params=_numel(model),
            flops=flops.get("", 0),
            mixer_params=sum(r.mixer_params for r in body),
            mixer_params_formula=sum(r.mixer_params_formula for r in body),
            mixer_macs_formula=sum(r.mixer_macs_formula for r in body),
            mixer_flops=sum(r.mixer_flops for r in body),
            depth=sum(r.depth for r in body),
        )
    )
    return rows


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_stage_table(rows: list[StageCost]) -> str:
    """Plain-text table of :func:`stage_costs` rows (what ``nas show`` prints)."""
    head = ("part", "mixer", "grid", "dim", "depth", "params", "GFLOPs", "mixer params", "mixer GFLOPs")
    lines = []
    for r in rows:
        grid = f"{r.grid[0]}x{r.grid[1]}" if r.grid else ""
        lines.append(
            (
                r.part,
                r.mixer,
                grid,
                str(r.dim or ""),
                str(r.depth or ""),
                _si(r.params),
                f"{r.flops / 1e9:.4f}",
                _si(r.mixer_params) if r.part != "stem" and r.part != "head" else "",
                f"{r.mixer_flops / 1e9:.4f}" if r.part not in ("stem", "head") else "",
            )
        )
    widths = [max(len(h), *(len(row[c]) for row in lines)) for c, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if c < 3 else f"{{:>{w}}}" for c, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    return "\n".join(out)
