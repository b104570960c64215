"""Configured as CAFormer-S18 / ConvFormer-S18, MixerFormer computes timm's function (weights mapped)."""

from __future__ import annotations

import pytest
import timm
import torch

import nas  # noqa: F401  (registers the entrypoints)
from nas.errors import ConfigError
from nas.models import s18_stages
from nas.timm_compat import load_timm_metaformer

torch.set_num_threads(2)


def _perturbed_timm(name: str, **kwargs) -> torch.nn.Module:
    """timm model (random init, no download) with every tensor moved off its init value.

    At init every norm weight is 1, every scale 1 and every bias 0, so a wrong mapping between two such tensors
    would go unnoticed; perturbing them makes each tensor distinguishable.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim <= 1 else 0.01))
    return model.eval()


_CACHE: dict[str, torch.nn.Module] = {}


def _reference(name: str) -> torch.nn.Module:
    # building an S18 costs seconds on a shared CPU: build each reference once per session
    if name not in _CACHE:
        _CACHE[name] = _perturbed_timm(name)
    return _CACHE[name]


@pytest.mark.parametrize(
    ("timm_name", "ours_name"),
    [("caformer_s18", "mixerformer_caformer_s18"), ("convformer_s18", "mixerformer_convformer_s18")],
)
def test_logits_match_timm(timm_name: str, ours_name: str) -> None:
    ref = _reference(timm_name)
    with torch.device("meta"):  # skip our random init: every tensor is overwritten by the strict load
        ours = timm.create_model(ours_name, pretrained=False)
    ours = ours.to_empty(device="cpu").eval()
    report = load_timm_metaformer(ours, ref.state_dict(), strict=True)
    assert not report.skipped and not report.missing
    assert len(report.loaded) == len(ref.state_dict()) == len(ours.state_dict())
    torch.manual_seed(1)
    for size in (224, 32):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            a, b = ref(x), ours(x)
        assert a.shape == b.shape == (2, 1000)
        assert a.abs().max() > 0.1  # the comparison is not between two near-zero outputs
        assert (a - b).abs().max().item() < 1e-4, size


def test_partial_load_keeps_changed_mixers_fresh() -> None:
    """A searched architecture starts from timm where it still fits; changed mixers keep their init."""
    ref = _reference("caformer_s18")
    stages = s18_stages(["dwconv", "dwconv", "dwconv", "mhsa"])
    stages[1]["depth"] = 2  # one timm block has nowhere to go
    ours = timm.create_model("mixerformer", stages=stages, img_size=32, num_classes=7, in_chans=1)
    fresh = {k: v.clone() for k, v in ours.state_dict().items()}
    report = load_timm_metaformer(ours, ref)
    sd, rsd = ours.state_dict(), ref.state_dict()
    # stage 2 changed mhsa -> dwconv: its mixer weights are fresh, everything else in the block is loaded
    assert "stages.2.blocks.0.token_mixer.qkv.weight" in report.skipped
    assert "mixer changed" in report.skipped["stages.2.blocks.0.token_mixer.qkv.weight"]
    assert torch.equal(
        sd["stages.2.blocks.0.token_mixer.pwconv1.weight"], fresh["stages.2.blocks.0.token_mixer.pwconv1.weight"]
    )
    assert torch.equal(sd["stages.2.blocks.0.norm1.weight"], rsd["stages.2.blocks.0.norm1.weight"])
    assert torch.equal(sd["stages.2.blocks.0.mlp.fc1.weight"], rsd["stages.2.blocks.0.mlp.fc1.weight"])
    assert torch.equal(sd["stages.1.blocks.0.mlp.fc1.weight"], rsd["stages.1.blocks.0.mlp.fc1.weight"][:, :, 0, 0])
    # unchanged stages load fully, including the mixer
    assert torch.equal(sd["stages.3.blocks.2.token_mixer.qkv.weight"], rsd["stages.3.blocks.2.token_mixer.qkv.weight"])
    assert torch.equal(sd["stages.0.blocks.1.token_mixer.act1.scale"], rsd["stages.0.blocks.1.token_mixer.act1.scale"])
    # removed block, new class count
    assert "block does not exist" in report.skipped["stages.1.blocks.2.token_mixer.pwconv1.weight"]
    assert "stages.1.blocks.2.mlp.fc1.weight" in report.skipped
    assert "head.fc.fc2.weight" in report.skipped and "head.fc2.weight" in report.missing
    assert torch.equal(sd["head.fc1.weight"], rsd["head.fc.fc1.weight"])
    # grayscale stem: timm's adapt_input_conv sums the RGB filters
    torch.testing.assert_close(sd["stem.conv.weight"], rsd["stem.conv.weight"].sum(1, keepdim=True))
    assert "stem.conv.weight" in report.loaded
    with pytest.raises(ConfigError, match="strict"):
        load_timm_metaformer(ours, ref, strict=True)


def test_rejects_non_timm_state_dict() -> None:
    ours = timm.create_model("mixerformer", img_size=32, num_classes=10)
    with pytest.raises(ConfigError, match=r"stem\.conv\.weight"):
        load_timm_metaformer(ours, {"network.0.0.mlp.fc1.weight": torch.zeros(1)})


def test_timm_checkpoint_through_timms_own_builder(tmp_path) -> None:
    """pretrained=True + a timm CAFormer-S18 checkpoint file: timm's builder applies our pretrained_filter_fn, so
    the preset computes timm's function, and a searched architecture starts from every tensor that still fits."""
    import safetensors.torch

    ref = _reference("caformer_s18")
    path = tmp_path / "caformer_s18.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = timm.create_model("mixerformer_caformer_s18", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours.eval()(x) - ref(x)).abs().max().item() < 1e-4
    searched = timm.create_model(
        "mixerformer",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        stages=s18_stages(["dwconv", "dwconv", "ska", "mhsa"]),
    )
    got, want = searched.state_dict(), ref.state_dict()
    assert torch.equal(
        got["stages.3.blocks.0.token_mixer.qkv.weight"], want["stages.3.blocks.0.token_mixer.qkv.weight"]
    )
    assert torch.equal(got["stages.2.blocks.0.mlp.fc1.weight"], want["stages.2.blocks.0.mlp.fc1.weight"].flatten(1))
    assert "stages.2.blocks.0.token_mixer.key" in got  # the new mixer keeps its fresh init
