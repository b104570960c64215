"""Load timm MetaFormer weights (``caformer_*`` / ``convformer_*``) into a :class:`~nas.models.MixerFormer`.

Our backbone keeps sail-sg's channels-last layout and parameter names, so timm's state dict maps almost 1:1:

* timm's NCHW stages use 1x1 ``Conv2d`` for the MLP and the SepConv pointwise layers; ours use ``nn.Linear``:
  ``[out, in, 1, 1] -> [out, in]``;
* timm's head is ``head.norm`` + ``head.fc.{fc1,norm,fc2}``; ours is ``norm`` + ``head.{fc1,norm,fc2}``.

A block's token-mixer weights load only when the block uses the same mixer family as the timm block (read from
the checkpoint's keys: ``pwconv1`` -> ``dwconv``, ``qkv`` -> ``mhsa``) and the shapes agree; every other
tensor loads when its name and shape agree. Anything else keeps its fresh init and is listed in the report, so
users can start a searched architecture from timm's pretrained CAFormer/ConvFormer weights where it still fits.

:func:`checkpoint_filter_fn` is the ``pretrained_filter_fn`` our entrypoints hand to timm's
``build_model_with_cfg`` (timm's own convention): a timm MetaFormer checkpoint is mapped, one of ours (an exported
folder's ``model.safetensors``) passes through. So ``timm.create_model("mixerformer_caformer_s18", pretrained=True)``
loads timm's CAFormer-S18 weights, and any searched architecture can start from them with
``pretrained_cfg_overlay={"file": ...}``. Imports only torch and timm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nas.errors import ConfigError
from nas.model_args import block_mixers

_BLOCK_MIXER = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.token_mixer\.")
# timm's head -> ours (sail-sg names)
_RENAMES = (("head.norm.", "norm."), ("head.fc.", "head."))


@dataclass
class TimmLoadReport:
    """What :func:`load_timm_metaformer` did: keys loaded, timm keys skipped (with why), our keys left fresh."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors from timm, skipped {len(self.skipped)}, "
            f"{len(self.missing)} left at fresh init" + (f"; {'; '.join(self.notes)}" if self.notes else "")
        )


def _timm_block_mixers(sd: Mapping[str, torch.Tensor]) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for k in sd:
        m = _BLOCK_MIXER.match(k)
        if m:
            rest = k[m.end() :]
            family = "dwconv" if rest.startswith("pwconv1") else "mhsa" if rest.startswith("qkv") else None
            if family:
                out[(int(m.group(1)), int(m.group(2)))] = family
    return out


def _our_block_mixers(model: nn.Module) -> dict[tuple[int, int], tuple[str, dict]]:
    out = {}
    for i, s in enumerate(model.model_args["stages"]):
        for b, name in enumerate(block_mixers(s["mixer"], s["depth"])):
            out[(i, b)] = (name, s["knobs"][name])
    return out


def is_timm_metaformer(sd: Mapping[str, torch.Tensor]) -> bool:
    """A timm caformer_*/convformer_* state dict (its head is ``head.fc.*``; ours is ``head.fc2``/``head.fc1``)."""
    return "stem.conv.weight" in sd and any(k.startswith("head.fc.") for k in sd)


def map_timm_state_dict(
    sd: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], TimmLoadReport]:
    """timm MetaFormer tensors renamed/reshaped into ``model``'s names where they fit, and what happened to each."""
    ours = model.state_dict()
    timm_mixers, our_mixers = _timm_block_mixers(sd), _our_block_mixers(model)
    report, new = TimmLoadReport(), {}
    for key, value in sd.items():
        k = key
        for old, rep in _RENAMES:
            if k.startswith(old):
                k = rep + k[len(old) :]
        m = _BLOCK_MIXER.match(k)
        if m:
            blk = (int(m.group(1)), int(m.group(2)))
            theirs, (mine, knobs) = timm_mixers.get(blk), our_mixers.get(blk, (None, None))
            if mine is None:
                report.skipped[key] = "block does not exist in this model"
                continue
            if theirs != mine:
                report.skipped[key] = f"mixer changed ({theirs} -> {mine})"
                continue
            if mine == "mhsa" and knobs.get("head_dim") != 32 and key.endswith("qkv.weight"):
                report.notes.append(
                    f"stages[{blk[0]}] block {blk[1]}: timm head_dim 32 loaded into head_dim {knobs['head_dim']}"
                )
        if k not in ours:
            report.skipped[key] = "no such tensor in this model"
            continue
        target = ours[k]
        if value.ndim == 4 and target.ndim == 2 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[:2])  # timm's 1x1 conv == our Linear
        if k == "stem.conv.weight" and value.shape != target.shape and value.shape[0] == target.shape[0]:
            from timm.models import adapt_input_conv

            value = adapt_input_conv(target.shape[1], value)  # e.g. RGB weights for grayscale inputs
            report.notes.append(f"stem.conv adapted from {sd[key].shape[1]} to {target.shape[1]} input channels")
        if value.shape != target.shape:
            report.skipped[key] = f"shape {list(value.shape)} != {list(target.shape)}"
            continue
        new[k] = value.to(dtype=target.dtype)
        report.loaded.append(k)
    report.missing = sorted(set(ours) - set(new))
    return new, report


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: map a timm MetaFormer checkpoint (tensors that do not fit keep the model's
    fresh init, so the strict load succeeds); our own checkpoints pass through unchanged."""
    if not is_timm_metaformer(state_dict):
        return dict(state_dict)
    new, _ = map_timm_state_dict(state_dict, model)
    return {**model.state_dict(), **new}


def load_timm_metaformer(
    model: nn.Module, source: Mapping[str, torch.Tensor] | nn.Module, strict: bool = False
) -> TimmLoadReport:
    """Copy a timm ``caformer_*``/``convformer_*`` state dict (or model) into ``model``; returns a report.

    ``strict=True`` raises ConfigError unless every tensor of both models was matched (the equivalence use).
    """
    if not isinstance(getattr(model, "model_args", None), Mapping):  # what the mapping reads (no import of models:
        # nas.models imports this module for its pretrained_filter_fn)
        raise ConfigError(f"load_timm_metaformer: expected a MixerFormer, got {type(model).__name__}")
    sd = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    if "stem.conv.weight" not in sd:
        raise ConfigError(
            "load_timm_metaformer: not a timm MetaFormer state dict (no 'stem.conv.weight'); load it through "
            "timm.create_model('caformer_s18', pretrained=True) first (timm converts the original checkpoints)"
        )
    new, report = map_timm_state_dict(sd, model)
    if strict and (report.skipped or report.missing):
        first = next(iter(report.skipped.items()), None) or (report.missing[0], "not in the timm state dict")
        raise ConfigError(f"load_timm_metaformer(strict): {report.summary()}; first: {first[0]}: {first[1]}")
    model.load_state_dict(new, strict=False)
    return report
