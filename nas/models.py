"""MixerFormer: a hierarchical MetaFormer backbone whose token mixer is chosen per stage (and per block).

The network follows sail-sg/metaformer's ``MetaFormer`` (Yu et al., "MetaFormer Baselines for Vision",
arXiv 2210.13452) and timm's port of it: a conv stem + LayerNorm, stages of ``downsample (LayerNorm + conv)``
followed by blocks ``x = rs(x) + ls(drop_path(mixer(norm(x))))`` / ``x = rs(x) + ls(drop_path(mlp(norm(x))))``,
and an MLP head. Everything inside the stages is channels-last ``[B, H, W, C]`` (as in sail-sg) so any
registered mixer (``nas.mixers``) fits any stage. The model is configured by the JSON-safe ``model_args``
contract (docs/model_args.md) and registered with timm as ``mixerformer`` plus two presets.

Configured as CAFormer-S18 / ConvFormer-S18 it computes the same function as timm's ``caformer_s18`` /
``convformer_s18`` (see ``nas.timm_compat`` for the state-dict mapping). Imports only torch, timm, stdlib.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._builder import build_model_with_cfg
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs, register_model
from torch import nn

from nas import mixers
from nas.errors import ConfigError, InfeasibleArchError
from nas.mixers.dwconv import SquaredReLU, StarReLU

__all__ = ["MixerFormer", "model_args_from", "resolve_model_args", "stage_grids"]

_S18_DEPTHS, _S18_DIMS = (3, 3, 9, 3), (64, 128, 320, 512)
TOP_FIELDS = ("in_chans", "num_classes", "img_size", "stem", "downsample", "stages", "mlp_ratio")
TOP_FIELDS += ("drop_path_rate", "head")
STAGE_FIELDS = ("depth", "dim", "mixer", "knobs", "res_scale", "layer_scale")


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
def _int(v: Any, where: str, lo: int) -> int:
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
    unknown = sorted(set(v) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {list(fields)}")
    return dict(v)


def _pad(kernel: int, stride: int) -> int:
    return (kernel - stride + 1) // 2


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * _pad(kernel, stride) - kernel) // stride + 1


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
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: must be a mixer name or a non-empty list of names, got {v!r}")
    for n in names:
        mixers.get(n, where=where)
    return list(names)


def resolve_model_args(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``model_args`` and return the fully-resolved JSON-safe dict (every default filled in).

    Raises ConfigError (InfeasibleArchError for well-formed but unbuildable stages) with a one-line message
    naming the field or stage.
    """
    a = _dict(raw, "model_args", TOP_FIELDS)
    a = dict(copy.deepcopy(DEFAULT_MODEL_ARGS), **copy.deepcopy(a))
    out: dict[str, Any] = {
        "in_chans": _int(a["in_chans"], "model_args.in_chans", 1),
        "num_classes": _int(a["num_classes"], "model_args.num_classes", 0),
    }
    img = a["img_size"]
    if isinstance(img, (list, tuple)) and len(img) == 2:
        img = [_int(s, "model_args.img_size", 1) for s in img]
        img = img[0] if img[0] == img[1] else img  # one canonical form (timm's save_for_hf writes [h, w])
    else:
        img = _int(img, "model_args.img_size", 1)
    out["img_size"] = img
    for conv, dflt in (("stem", (7, 4)), ("downsample", (3, 2))):
        c = _dict(a[conv], f"model_args.{conv}", ("kernel", "stride"))
        out[conv] = {
            "kernel": _int(c.get("kernel", dflt[0]), f"model_args.{conv}.kernel", 1),
            "stride": _int(c.get("stride", dflt[1]), f"model_args.{conv}.stride", 1),
        }
    if not isinstance(a["stages"], (list, tuple)) or not a["stages"]:
        raise ConfigError(f"model_args.stages: must be a non-empty list of stages, got {a['stages']!r}")
    grids = stage_grids(img, out["stem"], out["downsample"], len(a["stages"]))
    stages = []
    for i, (s, grid) in enumerate(zip(a["stages"], grids, strict=True)):
        w = f"stages[{i}]"
        s = _dict(s, w, STAGE_FIELDS)
        for req in ("depth", "dim", "mixer"):
            if req not in s:
                raise ConfigError(f"{w}: missing required field '{req}'")
        st: dict[str, Any] = {"depth": _int(s["depth"], f"{w}.depth", 1), "dim": _int(s["dim"], f"{w}.dim", 1)}
        names = _mixer_names(s["mixer"], f"{w}.mixer")
        st["mixer"] = names[0] if isinstance(s["mixer"], str) else names
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
        rs = s.get("res_scale", 1.0 if i >= 2 else None)
        ls = s.get("layer_scale")
        st["res_scale"] = None if rs is None else _float(rs, f"{w}.res_scale", -math.inf)
        st["layer_scale"] = None if ls is None else _float(ls, f"{w}.layer_scale", -math.inf)
        if grid[0] < 1 or grid[1] < 1:
            raise InfeasibleArchError(
                f"{w}: token grid would be {grid[0]}x{grid[1]} at img_size {img} (stem k{out['stem']['kernel']}"
                f" s{out['stem']['stride']}, downsample k{out['downsample']['kernel']}"
                f" s{out['downsample']['stride']}); use fewer stages, a larger img_size or smaller strides"
            )
        for n in st["knobs"]:
            reasons = mixers.get(n).feasibility_fn(st["dim"], grid, st["knobs"][n])
            if reasons:
                raise InfeasibleArchError(
                    f"{w}: mixer '{n}' at dim={st['dim']}, grid={grid[0]}x{grid[1]}: {'; '.join(reasons)}"
                )
        stages.append(st)
    out["stages"] = stages
    out["mlp_ratio"] = _float(a["mlp_ratio"], "model_args.mlp_ratio", 1e-9)
    out["drop_path_rate"] = _float(a["drop_path_rate"], "model_args.drop_path_rate", 0.0, 1.0, hi_open=True)
    h = _dict(a["head"], "model_args.head", ("hidden_ratio", "dropout"))
    out["head"] = {
        "hidden_ratio": _float(h.get("hidden_ratio", 4.0), "model_args.head.hidden_ratio", 0.0),
        "dropout": _float(h.get("dropout", 0.0), "model_args.head.dropout", 0.0, 1.0, hi_open=True),
    }
    return out


# ------------------------------------------------------------------------------------------------- modules
def _ln(dim: int, bias: bool = False) -> nn.LayerNorm:
    # MetaFormer's norms: LayerNorm over channels, eps 1e-6, no bias inside the network (bias in the head)
    return nn.LayerNorm(dim, eps=1e-6, bias=bias)


class Scale(nn.Module):
    """Learnable per-channel scale (res scale, Shleifer et al. arXiv 2110.09456; layer scale, CaiT 2103.17239)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Stem(nn.Module):
    """Conv stem + LayerNorm (MetaFormer): NCHW image in, channels-last tokens out."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=_pad(kernel, stride))
        self.norm = _ln(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsampling(nn.Module):
    """LayerNorm then strided conv between stages (MetaFormer), channels-last in and out."""

    def __init__(self, in_dim: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.norm = _ln(in_dim)
        self.conv = nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=_pad(kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MetaFormerBlock(nn.Module):
    """One MetaFormer block (arXiv 2210.13452): token mixer and StarReLU MLP, each pre-norm with residual."""

    def __init__(
        self,
        dim: int,
        token_mixer: nn.Module,
        mlp_ratio: float,
        drop_path: float,
        res_scale: float | None,
        layer_scale: float | None,
    ) -> None:
        super().__init__()
        self.norm1 = _ln(dim)
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = Scale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.res_scale1 = Scale(dim, res_scale) if res_scale is not None else nn.Identity()
        self.norm2 = _ln(dim)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=StarReLU, bias=False)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = Scale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.res_scale2 = Scale(dim, res_scale) if res_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


class MixerFormerStage(nn.Module):
    """Optional downsampling followed by ``depth`` MetaFormer blocks (channels-last)."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MlpHead(nn.Module):
    """MetaFormer MLP classifier: fc1 -> SquaredReLU -> LayerNorm -> dropout -> fc2 (hidden_ratio 0: fc2 only).

    The classifier layer is always ``head.fc2`` so timm's ``pretrained_cfg['classifier']`` is one name.
    """

    def __init__(self, dim: int, num_classes: int, hidden_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(hidden_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden) if hidden > 0 else nn.Identity()
        self.act = SquaredReLU() if hidden > 0 else nn.Identity()
        self.norm = nn.LayerNorm(hidden, eps=1e-6) if hidden > 0 else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden if hidden > 0 else dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_drop(self.norm(self.act(self.fc1(x)))))


class MixerFormer(nn.Module):
    """Hierarchical MetaFormer (Yu et al., arXiv 2210.13452) with a token mixer chosen per stage/block.

    Build it from the ``model_args`` contract (docs/model_args.md): ``MixerFormer(**model_args)`` or, through
    timm, ``timm.create_model("mixerformer", **model_args)``. ``self.model_args`` is the fully-resolved
    JSON-safe dict that rebuilds the same architecture.
    """

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        a = resolve_model_args(model_args)
        self.model_args = a
        self.in_chans, self.num_classes = a["in_chans"], a["num_classes"]
        self.grids = stage_grids(a["img_size"], a["stem"], a["downsample"], len(a["stages"]))
        st0 = a["stages"][0]
        self.stem = Stem(a["in_chans"], st0["dim"], a["stem"]["kernel"], a["stem"]["stride"])
        total = sum(s["depth"] for s in a["stages"])
        # linear 0 -> drop_path_rate over all blocks (torch.linspace semantics; plain Python so meta init works)
        dpr = [a["drop_path_rate"] * j / (total - 1) if total > 1 else 0.0 for j in range(total)]
        stages, prev, j, reduction = [], st0["dim"], 0, a["stem"]["stride"]
        self.feature_info = []
        for i, (s, grid) in enumerate(zip(a["stages"], self.grids, strict=True)):
            down: nn.Module = nn.Identity()
            if i > 0:
                down = Downsampling(prev, s["dim"], a["downsample"]["kernel"], a["downsample"]["stride"])
                reduction *= a["downsample"]["stride"]
            pattern = [s["mixer"]] if isinstance(s["mixer"], str) else s["mixer"]
            blocks = []
            for b in range(s["depth"]):
                name = pattern[b % len(pattern)]
                mixer = mixers.get(name).build(s["dim"], grid, s["knobs"][name], where=f"stages[{i}]")
                blocks.append(
                    MetaFormerBlock(s["dim"], mixer, a["mlp_ratio"], dpr[j], s["res_scale"], s["layer_scale"])
                )
                j += 1
            stages.append(MixerFormerStage(down, blocks))
            self.feature_info.append({"num_chs": s["dim"], "reduction": reduction, "module": f"stages.{i}"})
            prev = s["dim"]
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm = _ln(prev, bias=True)
        self.head = self._make_head(self.num_classes)
        self.grad_checkpointing = False
        self.apply(self._init_weights)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        h = self.model_args["head"]
        return MlpHead(self.num_features, num_classes, h["hidden_ratio"], h["dropout"])

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (fresh init); only average pooling is supported."""
        if global_pool not in (None, "avg"):
            raise ConfigError(f"reset_classifier: global_pool {global_pool!r} is not supported; use 'avg'")
        self.num_classes = _int(num_classes, "reset_classifier.num_classes", 0)
        self.model_args["num_classes"] = self.num_classes
        ref = next(self.parameters())
        self.head = self._make_head(self.num_classes).to(device=ref.device, dtype=ref.dtype)
        self.head.apply(self._init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(
                f"input: expected images [B, {self.in_chans}, H, W] (model_args.in_chans={self.in_chans}), got "
                f"shape {list(x.shape)}; convert the data or rebuild the model with a matching in_chans"
            )
        a = self.model_args
        grid = stage_grids((int(x.shape[2]), int(x.shape[3])), a["stem"], a["downsample"], len(self.stages))
        if min(min(g) for g in grid) < 1:
            raise ConfigError(
                f"input: {x.shape[2]}x{x.shape[3]} images leave an empty token grid in a later stage "
                f"(grids {grid}); use larger images (design img_size {a['img_size']})"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C_in, H, W]`` -> last-stage feature map ``[B, C, h, w]`` (NCHW view, as timm returns)."""
        self._check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def model_args_from(model: nn.Module) -> dict[str, Any]:
    """The fully-resolved JSON-safe ``model_args`` of a built MixerFormer (a deep copy)."""
    if not isinstance(model, MixerFormer):
        raise ConfigError(f"model_args_from: expected a MixerFormer, got {type(model).__name__}")
    return copy.deepcopy(model.model_args)


# -------------------------------------------------------------------------------------------- timm registry
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc2",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"mixerformer": _cfg(), "mixerformer_caformer_s18": _cfg(), "mixerformer_convformer_s18": _cfg()}
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> MixerFormer:
    # timm injects global_pool from a pretrained_cfg that has one; only average pooling exists here
    pool = kwargs.pop("global_pool", None)
    if pool not in (None, "avg"):
        raise ConfigError(f"{variant}: global_pool {pool!r} is not supported; use 'avg'")
    model = build_model_with_cfg(MixerFormer, variant, pretrained, **dict(copy.deepcopy(defaults), **kwargs))
    # the design resolution is part of the architecture: let timm's data config see it
    a = model.model_args
    hw = (a["img_size"],) * 2 if isinstance(a["img_size"], int) else tuple(a["img_size"])
    model.pretrained_cfg["input_size"] = (a["in_chans"], *hw)
    model.pretrained_cfg["pool_size"] = tuple(model.grids[-1])
    return model


@register_model
def mixerformer(pretrained: bool = False, **kwargs: Any) -> MixerFormer:
    """Generic entrypoint: every keyword is a ``model_args`` field (docs/model_args.md)."""
    return _create("mixerformer", pretrained, DEFAULT_MODEL_ARGS, kwargs)


@register_model
def mixerformer_caformer_s18(pretrained: bool = False, **kwargs: Any) -> MixerFormer:
    """CAFormer-S18 layout (dwconv, dwconv, mhsa, mhsa), 224 px, 1000 classes."""
    return _create("mixerformer_caformer_s18", pretrained, DEFAULT_MODEL_ARGS, kwargs)


@register_model
def mixerformer_convformer_s18(pretrained: bool = False, **kwargs: Any) -> MixerFormer:
    """ConvFormer-S18 layout (dwconv in all four stages), 224 px, 1000 classes."""
    defaults = dict(DEFAULT_MODEL_ARGS, stages=s18_stages(["dwconv"] * 4))
    return _create("mixerformer_convformer_s18", pretrained, defaults, kwargs)
