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
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from nas import mixers
from nas.errors import ConfigError
from nas.mixers.dwconv import SquaredReLU, StarReLU
from nas.model_args import (
    DEFAULT_MODEL_ARGS,
    as_int,
    block_mixers,
    conv_padding,
    resolve_model_args,
    s18_stages,
    stage_grids,
)
from nas.timm_compat import checkpoint_filter_fn

__all__ = ["MixerFormer", "model_args_from", "resolve_model_args", "stage_grids"]


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
        self.conv = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=conv_padding(kernel, stride))
        self.norm = _ln(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsampling(nn.Module):
    """LayerNorm then strided conv between stages (MetaFormer), channels-last in and out."""

    def __init__(self, in_dim: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.norm = _ln(in_dim)
        self.conv = nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=conv_padding(kernel, stride))

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
            blocks = []
            for name in block_mixers(s["mixer"], s["depth"]):
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
        self.num_classes = as_int(num_classes, "reset_classifier.num_classes", 0)
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
    {
        "mixerformer": _cfg(),
        # pretrained=True loads timm's weights, mapped by nas.timm_compat.checkpoint_filter_fn
        "mixerformer_caformer_s18": _cfg(hf_hub_id="timm/caformer_s18.sail_in1k"),
        "mixerformer_convformer_s18": _cfg(hf_hub_id="timm/convformer_s18.sail_in1k"),
    }
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> MixerFormer:
    # timm injects global_pool from a pretrained_cfg that has one; only average pooling exists here
    pool = kwargs.pop("global_pool", None)
    if pool not in (None, "avg"):
        raise ConfigError(f"{variant}: global_pool {pool!r} is not supported; use 'avg'")
    model = build_model_with_cfg(
        MixerFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **dict(copy.deepcopy(defaults), **kwargs),
    )
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
