"""Load timm MetaFormer weights (``caformer_*`` / ``convformer_*``) into a :class:`~nas.models.MixerFormer`.

Our backbone keeps sail-sg's channels-last layout and parameter names, so timm's state dict maps almost 1:1:

* timm's NCHW stages use 1x1 ``Conv2d`` for the MLP and the SepConv pointwise layers; ours use ``nn.Linear``:
  ``[out, in, 1, 1] -> [out, in]``;
* timm's head is ``head.norm`` + ``head.fc.{fc1,norm,fc2}``; ours is ``norm`` + ``head.{fc1,norm,fc2}``.

A block's token-mixer weights load only when the block uses the same mixer family as the timm block (read from
the checkpoint's keys: ``pwconv1`` -> ``dwconv``, ``qkv`` -> ``mhsa``) and the shapes agree; every other
tensor loads when its name and shape agree. Anything else keeps its fresh init and is listed in the report, so
users can start a searched architecture from timm's pretrained CAFormer/ConvFormer weights where it still fits.
Imports only torch and timm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nas.errors import ConfigError
from nas.models import MixerFormer

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


def _our_block_mixers(model: MixerFormer) -> dict[tuple[int, int], tuple[str, dict]]:
    out = {}
    for i, s in enumerate(model.model_args["stages"]):
        pattern = [s["mixer"]] if isinstance(s["mixer"], str) else s["mixer"]
        for b in range(s["depth"]):
            name = pattern[b % len(pattern)]
            out[(i, b)] = (name, s["knobs"][name])
    return out


def load_timm_metaformer(
    model: MixerFormer, source: Mapping[str, torch.Tensor] | nn.Module, strict: bool = False
) -> TimmLoadReport:
    """Copy a timm ``caformer_*``/``convformer_*`` state dict (or model) into ``model``; returns a report.

    ``strict=True`` raises ConfigError unless every tensor of both models was matched (the equivalence use).
    """
    if not isinstance(model, MixerFormer):
        raise ConfigError(f"load_timm_metaformer: expected a MixerFormer, got {type(model).__name__}")
    sd = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    if "stem.conv.weight" not in sd:
        raise ConfigError(
            "load_timm_metaformer: not a timm MetaFormer state dict (no 'stem.conv.weight'); load it through "
            "timm.create_model('caformer_s18', pretrained=True) first (timm converts the original checkpoints)"
        )
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
            from timm.models._manipulate import adapt_input_conv

            value = adapt_input_conv(target.shape[1], value)  # e.g. RGB weights for grayscale inputs
            report.notes.append(f"stem.conv adapted from {sd[key].shape[1]} to {target.shape[1]} input channels")
        if value.shape != target.shape:
            report.skipped[key] = f"shape {list(value.shape)} != {list(target.shape)}"
            continue
        new[k] = value.to(dtype=target.dtype)
        report.loaded.append(k)
    report.missing = sorted(set(ours) - set(new))
    if strict and (report.skipped or report.missing):
        first = next(iter(report.skipped.items()), None) or (report.missing[0], "not in the timm state dict")
        raise ConfigError(f"load_timm_metaformer(strict): {report.summary()}; first: {first[0]}: {first[1]}")
    model.load_state_dict(new, strict=False)
    return report


def init_from_timm(model: MixerFormer, timm_name: str = "caformer_s18", pretrained: bool = True) -> TimmLoadReport:
    """Start ``model`` from timm's (pretrained, downloaded by timm) ``timm_name`` wherever it still fits."""
    import timm

    ref = timm.create_model(timm_name, pretrained=pretrained)
    return load_timm_metaformer(model, ref.state_dict())
