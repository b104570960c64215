"""Parameters and FLOPs of a MixerFormer: the one module that counts them.

**Source of truth: the analytic formulas.** Every layer's cost is written once, here (stem, downsampling, norms,
MLP, head) or in its mixer's registry entry (``MixerDef.params_fn`` / ``macs_fn``, shared/specs/mixers.md), and
summed over the architecture. Conventions (spec §0): params are exact; MACs count Linear/Conv/matmul
multiply-adds only (no norms, softmax, activations); **FLOPs = 2 x MACs**. Parameters depend on the grid a stage
was *built* for (static keys), MACs on the grid it *runs* at. Nothing here depends on which torch is installed,
and costing an architecture is arithmetic on its ``model_args`` (microseconds, nothing is built).

**Cross-check: ``torch.utils.flop_counter.FlopCounterMode``** through :func:`count_flops`, which registers a
formula for every scaled-dot-product-attention kernel the installed torch has (flash, efficient, cuDNN, the
overrideable fused one, and the CPU flash kernel, forward and backward). Older torch (2.14 and before) has no
formula for ``_scaled_dot_product_flash_attention_for_cpu``, so a bare FlopCounterMode silently drops every
attention mixer's N^2 terms on CPU; the tests compare the counter (with these formulas) against the analytic
totals for every mixer. :func:`model_flops` uses the formulas for a MixerFormer and the complete counter for
any other module (e.g. a timm model in a benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nas import mixers
from nas.fmt import si
from nas.model_args import block_mixers, mixer_pattern, resolve_model_args, stage_grids

Grid = tuple[int, int]


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates of one image's forward pass (FLOPs = 2 x MACs)."""

    params: int = 0
    macs: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)

    def __mul__(self, k: int) -> Cost:
        return Cost(self.params * k, self.macs * k)


ZERO = Cost()


# ------------------------------------------------------------------------------------------------- layers
def conv(cin: int, cout: int, kernel: int, grid: Grid, bias: bool = True, groups: int = 1) -> Cost:
    """``Conv2d(cin, cout, kernel, groups)`` producing a ``grid`` output."""
    weights = cout * (cin // groups) * kernel * kernel
    return Cost(weights + (cout if bias else 0), grid[0] * grid[1] * weights)


def linear(cin: int, cout: int, tokens: int, bias: bool) -> Cost:
    """``Linear(cin, cout)`` applied to ``tokens`` vectors."""
    return Cost(cin * cout + (cout if bias else 0), tokens * cin * cout)


def layer_norm(dim: int, bias: bool) -> Cost:
    return Cost(dim * (2 if bias else 1), 0)


def stem(in_chans: int, dim: int, conv_spec: Mapping[str, int], grid: Grid) -> Cost:
    """Conv stem + LayerNorm without bias (MetaFormer)."""
    return conv(in_chans, dim, conv_spec["kernel"], grid) + layer_norm(dim, bias=False)


def downsample(in_dim: int, dim: int, conv_spec: Mapping[str, int], grid: Grid) -> Cost:
    """LayerNorm without bias, then a strided conv with bias (MetaFormer's Downsampling)."""
    return layer_norm(in_dim, bias=False) + conv(in_dim, dim, conv_spec["kernel"], grid)


def mixer(name: str, dim: int, grid: Grid, design_grid: Grid, knobs: Mapping[str, Any]) -> Cost:
    """One token mixer from its registry formulas: params at the build grid, MACs at the run grid."""
    defn = mixers.get(name)
    return Cost(defn.params_fn(dim, tuple(design_grid), knobs), defn.macs_fn(dim, tuple(grid), knobs))


def block_rest(dim: int, grid: Grid, mlp_ratio: float, res_scale: Any, layer_scale: Any) -> Cost:
    """Everything of a MetaFormer block but its mixer: two bias-free norms, the StarReLU MLP, the scales."""
    n, hidden = grid[0] * grid[1], int(mlp_ratio * dim)
    mlp = linear(dim, hidden, n, bias=False) + linear(hidden, dim, n, bias=False) + Cost(2, 0)  # StarReLU s, b
    scales = 2 * dim * ((res_scale is not None) + (layer_scale is not None))
    return layer_norm(dim, bias=False) * 2 + mlp + Cost(scales, 0)


def stage_blocks(stage: Mapping[str, Any], grid: Grid, design_grid: Grid, mlp_ratio: float) -> tuple[Cost, Cost]:
    """(all blocks, their mixers only) of one resolved stage; a block pattern cycles over the depth."""
    dim, total, mix = stage["dim"], ZERO, ZERO
    rest = block_rest(dim, grid, mlp_ratio, stage.get("res_scale"), stage.get("layer_scale"))
    for name in block_mixers(stage["mixer"], stage["depth"]):
        m = mixer(name, dim, grid, design_grid, stage["knobs"][name])
        mix, total = mix + m, total + m + rest
    return total, mix


def head(dim: int, head_spec: Mapping[str, Any], num_classes: int) -> Cost:
    """Final LayerNorm (with bias) and the MLP head (fc1, SquaredReLU, LayerNorm, fc2); pooling is free."""
    out = layer_norm(dim, bias=True)
    if num_classes <= 0:
        return out
    hidden = int(head_spec["hidden_ratio"] * dim)
    if hidden > 0:
        return (
            out
            + linear(dim, hidden, 1, bias=True)
            + layer_norm(hidden, bias=True)
            + linear(hidden, num_classes, 1, True)
        )
    return out + linear(dim, num_classes, 1, bias=True)


# ------------------------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class StageCost:
    """One row of the cost table: ``part`` is ``stem``, ``stages[i]`` (downsample + blocks), ``head``, ``total``.

    ``params`` / ``flops`` are analytic; ``mixer_*`` cover the stage's token mixers only. ``counted_flops`` is the
    FlopCounterMode figure for the same part when the table was built with ``counted=True`` (else None).
    """

    part: str
    mixer: str = ""
    grid: Grid | None = None
    dim: int = 0
    depth: int = 0
    params: int = 0
    flops: int = 0
    mixer_params: int = 0
    mixer_flops: int = 0
    counted_flops: int | None = None


def _resolved(model_or_args: Any) -> dict[str, Any]:
    args = getattr(model_or_args, "model_args", None)
    if args is None:
        if not isinstance(model_or_args, Mapping):
            raise TypeError(f"cost: expected a MixerFormer or model_args, got {type(model_or_args).__name__}")
        args = resolve_model_args(model_or_args)
    return args


def _grids(args: Mapping[str, Any], img_size: Any) -> list[Grid]:
    size = args["img_size"] if img_size is None else img_size
    return stage_grids(size, args["stem"], args["downsample"], len(args["stages"]))


def stage_costs(model_or_args: Any, img_size: Any = None, counted: bool = False) -> list[StageCost]:
    """Cost rows for the stem, every stage, the head and the total, for one image at ``img_size``.

    ``model_or_args`` is a built MixerFormer or a ``model_args`` dict; ``img_size`` defaults to the design
    resolution. ``counted=True`` adds FlopCounterMode's figure per part (a meta-device build: no memory used).
    """
    a = _resolved(model_or_args)
    grids, design = _grids(a, img_size), _grids(a, None)
    measured = _counted_by_part(a, img_size) if counted else {}
    st0 = a["stages"][0]
    c = stem(a["in_chans"], st0["dim"], a["stem"], grids[0])
    rows = [StageCost("stem", params=c.params, flops=c.flops, counted_flops=measured.get("stem"))]
    prev = st0["dim"]
    for i, (st, grid) in enumerate(zip(a["stages"], grids, strict=True)):
        down = downsample(prev, st["dim"], a["downsample"], grid) if i > 0 else ZERO
        blocks, mix = stage_blocks(st, grid, design[i], a["mlp_ratio"])
        pattern = mixer_pattern(st["mixer"])
        total = down + blocks
        rows.append(
            StageCost(
                f"stages[{i}]", "·".join(pattern), tuple(grid), st["dim"], st["depth"], total.params, total.flops,
                mix.params, mix.flops, measured.get(f"stages.{i}"),
            )
        )  # fmt: skip
        prev = st["dim"]
    h = head(prev, a["head"], a["num_classes"])
    rows.append(StageCost("head", params=h.params, flops=h.flops, counted_flops=measured.get("head")))
    body = rows[1:-1]
    rows.append(
        StageCost(
            "total",
            params=sum(r.params for r in rows),
            flops=sum(r.flops for r in rows),
            mixer_params=sum(r.mixer_params for r in body),
            mixer_flops=sum(r.mixer_flops for r in body),
            depth=sum(r.depth for r in body),
            counted_flops=measured.get(""),
        )
    )
    return rows


def arch_cost(model_or_args: Any, img_size: Any = None) -> Cost:
    """Total params and MACs of an architecture for one image at ``img_size`` (default: design resolution)."""
    a = _resolved(model_or_args)
    grids, design = _grids(a, img_size), _grids(a, None)
    total, prev = stem(a["in_chans"], a["stages"][0]["dim"], a["stem"], grids[0]), a["stages"][0]["dim"]
    for i, (st, grid) in enumerate(zip(a["stages"], grids, strict=True)):
        if i > 0:
            total = total + downsample(prev, st["dim"], a["downsample"], grid)
        total = total + stage_blocks(st, grid, design[i], a["mlp_ratio"])[0]
        prev = st["dim"]
    return total + head(prev, a["head"], a["num_classes"])


def format_stage_table(rows: list[StageCost]) -> str:
    """Plain-text table of :func:`stage_costs` rows (what ``nas show`` prints)."""
    counted = any(r.counted_flops is not None for r in rows)
    head_row = ["part", "mixer", "grid", "dim", "depth", "params", "GFLOPs", "mixer params", "mixer GFLOPs"]
    head_row += ["counted GFLOPs"] if counted else []
    lines = []
    for r in rows:
        inner = r.part not in ("stem", "head")
        line = [
            r.part,
            r.mixer,
            f"{r.grid[0]}x{r.grid[1]}" if r.grid else "",
            str(r.dim or ""),
            str(r.depth or ""),
            si(r.params),
            f"{r.flops / 1e9:.4f}",
            si(r.mixer_params) if inner else "",
            f"{r.mixer_flops / 1e9:.4f}" if inner else "",
        ]
        if counted:
            line.append("" if r.counted_flops is None else f"{r.counted_flops / 1e9:.4f}")
        lines.append(line)
    widths = [max(len(h), *(len(row[c]) for row in lines)) for c, h in enumerate(head_row)]
    fmt = "  ".join(f"{{:<{w}}}" if c < 3 else f"{{:>{w}}}" for c, w in enumerate(widths))
    out = [fmt.format(*head_row), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- counting
def _sdpa_forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    b, h, sq, dq = q
    sk, dv = k[-2], v[-1]
    return 2 * b * h * sq * sk * dq + 2 * b * h * sq * sk * dv  # Q K^T, then P V


def _sdpa_backward(grad_out: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    b, h, sq, dq = q
    sk, dv = k[-2], v[-1]
    # recomputed scores (Q K^T), dP = dO V^T and dV = P^T dO, dQ = dS K and dK = dS^T Q (as torch counts them)
    return 2 * b * h * sq * sk * (3 * dq + 2 * dv)


_SDPA_FORWARD = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def sdpa_flop_formulas() -> dict[Any, Any]:
    """``FlopCounterMode(custom_mapping=...)`` entries for every fused SDPA kernel of the installed torch.

    The math fallback needs none: it decomposes into matmuls the counter already knows.
    """
    import torch

    aten, out = torch.ops.aten, {}
    for name in _SDPA_FORWARD:
        for op, fn in ((name, _sdpa_forward), (f"{name}_backward", _sdpa_backward)):
            if hasattr(aten, op):
                out[getattr(aten, op)] = fn
    return out


def count_flops(model: Any, x: Any, backward: bool = False) -> dict[str, int]:
    """FLOPs FlopCounterMode counts for ``model(x)`` (and the backward pass with ``backward``), by module path.

    Key ``""`` is the total; ``"stages.0"``, ``"head"``... are submodules (paths relative to ``model``).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=sdpa_flop_formulas()) as fc:
        if backward:
            out = model(x)
            (out if isinstance(out, torch.Tensor) else out[0]).float().sum().backward()
        else:
            with torch.no_grad():
                model(x)
    prefix = type(model).__name__
    return {
        ("" if k == prefix else k[len(prefix) + 1 :]): int(sum(v.values()))
        for k, v in fc.get_flop_counts().items()
        if k == prefix or k.startswith(prefix + ".")
    }


def _counted_by_part(args: Mapping[str, Any], img_size: Any) -> dict[str, int]:
    import torch

    from nas.models import MixerFormer

    size = args["img_size"] if img_size is None else img_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    with torch.device("meta"):
        twin = MixerFormer(**args).eval()
        counts = count_flops(twin, torch.empty(1, args["in_chans"], *hw))
    counts["head"] = counts.get("norm", 0) + counts.get("head", 0)
    return counts


def model_flops(model: Any, x1: Any) -> int:
    """FLOPs of one image ``x1`` (batch 1): analytic for a MixerFormer, the complete counter for anything else."""
    if getattr(model, "model_args", None) is not None:
        return arch_cost(model, img_size=tuple(x1.shape[-2:])).flops
    return count_flops(model, x1)[""]
