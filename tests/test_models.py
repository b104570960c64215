"""MixerFormer: model_args contract, every registered mixer, timm API/registration, errors, cost table."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

import nas  # noqa: F401  (registers the entrypoints)
from nas import mixers
from nas.cost import arch_cost, count_flops, format_stage_table, stage_costs
from nas.errors import ConfigError, InfeasibleArchError
from nas.models import MixerFormer, Scale, model_args_from

torch.set_num_threads(2)
ALL_MIXERS = ("dwconv", "mhsa", "ska", "cska", "manifold_key", "key_only")
DIMS = (32, 64, 96, 128)  # divisible by every default head size (16, 32)


def tiny(img_size: int = 32, stage_mixers=("dwconv", "dwconv", "mhsa", "mhsa"), **kw) -> dict:
    stages = [{"depth": 1, "dim": d, "mixer": m} for d, m in zip(DIMS, stage_mixers, strict=True)]
    return {"in_chans": 3, "num_classes": 5, "img_size": img_size, "stages": stages, **kw}


def _fwd_bwd(model: torch.nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, model.in_chans, size, size)
    y = model(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return y


# ------------------------------------------------------------------------------------------- every mixer
def _placements(img_size: int) -> list[tuple[str, ...]]:
    """4-stage layouts that use every registered mixer at least once (new mixers in cheap stages)."""
    layouts = [("dwconv", "dwconv", "mhsa", "mhsa")]
    for name in mixers.names():
        if name in ("dwconv", "mhsa"):
            continue
        # 224 px: stages 2-3 (14x14, 7x7); 32 px: stages 1-2 (4x4, 2x2) — the 1x1 stage is trivial for attention
        layouts.append(("dwconv", "dwconv", name, name) if img_size == 224 else ("dwconv", name, name, "mhsa"))
    return layouts


@pytest.mark.parametrize("img_size", [32, 224])
def test_builds_and_trains_with_every_registered_mixer(img_size: int) -> None:
    used = set()
    for layout in _placements(img_size):
        model = timm.create_model("mixerformer", **tiny(img_size, layout))
        y = _fwd_bwd(model, img_size, batch=2 if img_size == 32 else 1)
        assert y.shape[-1] == 5
        used.update(layout)
    assert used == set(mixers.names())


@pytest.mark.parametrize("name", ALL_MIXERS)
def test_each_named_mixer_in_a_backbone(name: str) -> None:
    assert name in mixers.names()
    args = tiny(32, ("dwconv", name, name, "mhsa"))
    args["stages"][1]["mixer"] = ["dwconv", name]  # a block pattern with the mixer in it
    args["stages"][1]["depth"] = 2
    model = timm.create_model("mixerformer", **args)
    _fwd_bwd(model, 32)
    # params of its blocks equal the registry formula
    defn = mixers.get(name)
    s = model.model_args["stages"][2]
    assert sum(p.numel() for p in model.stages[2].blocks[0].token_mixer.parameters()) == defn.params(
        s["dim"], model.grids[2], s["knobs"][name]
    )


# --------------------------------------------------------------------------------------- model_args contract
def test_json_round_trip_rebuilds_the_same_function() -> None:
    args = tiny(30, ("dwconv", "mhsa", "mhsa", "dwconv"))
    args["stages"][1].update(mixer=["dwconv", "mhsa"], depth=3, knobs={"mhsa": {"head_dim": 16, "qkv_bias": True}})
    args["stages"][0]["knobs"] = {"dwconv": {"kernel_size": 3, "expansion": 1}}
    args["stages"][2]["layer_scale"] = 1e-5
    args.update(stem={"kernel": 4, "stride": 4}, head={"hidden_ratio": 2, "dropout": 0.1}, mlp_ratio=3)
    a = timm.create_model("mixerformer", **args).eval()
    text = json.dumps(model_args_from(a))
    b = timm.create_model("mixerformer", **json.loads(text)).eval()
    assert model_args_from(b) == json.loads(text)  # resolving is idempotent
    b.load_state_dict(a.state_dict())  # same architecture: every tensor name and shape agrees
    x = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_resolved_defaults() -> None:
    m = MixerFormer(**tiny(32))
    a = m.model_args
    assert a["stem"] == {"kernel": 7, "stride": 4} and a["downsample"] == {"kernel": 3, "stride": 2}
    assert a["head"] == {"hidden_ratio": 4.0, "dropout": 0.0} and a["mlp_ratio"] == 4.0
    assert [s["res_scale"] for s in a["stages"]] == [None, None, 1.0, 1.0]
    assert a["stages"][2]["knobs"] == {"mhsa": {"head_dim": 32, "qkv_bias": False}}
    assert isinstance(m.stages[0].blocks[0].res_scale1, torch.nn.Identity)
    assert isinstance(m.stages[2].blocks[0].res_scale2, Scale)
    assert torch.all(m.stages[3].blocks[0].res_scale1.scale == 1.0)


def test_block_pattern_knobs_scales_and_drop_path() -> None:
    args = tiny(32)
    args["stages"][1].update(
        mixer=["dwconv", "mhsa"], depth=3, knobs={"dwconv": {"kernel_size": 3}, "mhsa": {"head_dim": 16}}
    )
    args["stages"][2]["res_scale"] = None
    args["stages"][0]["layer_scale"] = 1e-5
    args["stages"][3]["res_scale"] = 0.5
    args["drop_path_rate"] = 0.5
    m = MixerFormer(**args)
    blocks = m.stages[1].blocks
    kinds = [type(b.token_mixer).__name__ for b in blocks]
    assert kinds == ["SepConvMixer", "MHSAMixer", "SepConvMixer"]
    assert blocks[0].token_mixer.dwconv.kernel_size == (3, 3) and blocks[1].token_mixer.num_heads == 64 // 16
    assert isinstance(m.stages[2].blocks[0].res_scale1, torch.nn.Identity)
    assert torch.all(m.stages[3].blocks[0].res_scale1.scale == 0.5)
    assert torch.allclose(m.stages[0].blocks[0].layer_scale1.scale, torch.full((32,), 1e-5))
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for st in m.stages for b in st.blocks]
    assert rates == pytest.approx([0.5 * j / 5 for j in range(6)])  # linear over all 6 blocks


@pytest.mark.parametrize(
    ("img", "stem", "down"),
    [(32, (7, 4), (3, 2)), (30, (3, 2), (3, 2)), ([40, 52], (4, 4), (2, 2)), (33, (5, 1), (4, 3))],
)
def test_grid_arithmetic_matches_the_forward(img, stem, down) -> None:
    args = tiny(img, stem={"kernel": stem[0], "stride": stem[1]}, downsample={"kernel": down[0], "stride": down[1]})
    m = MixerFormer(**args).eval()
    p = (stem[0] - stem[1] + 1) // 2
    assert m.stem.conv.padding == (p, p) and m.stages[1].downsample.conv.padding == ((down[0] - down[1] + 1) // 2,) * 2
    seen = []
    for st in m.stages:
        st.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[1:3])))
    h, w = (img, img) if isinstance(img, int) else img
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, h, w))
    assert seen == [tuple(g) for g in m.grids]
    assert feats.shape == (1, 128, *m.grids[-1])


# ----------------------------------------------------------------------------------------------- timm API
def test_timm_api_and_overrides() -> None:
    m = timm.create_model("mixerformer", pretrained=False, **tiny(32)).eval()
    assert m.pretrained_cfg["architecture"] == "mixerformer" and m.default_cfg is m.pretrained_cfg
    assert m.pretrained_cfg["input_size"] == (3, 32, 32) and m.num_features == m.head_hidden_size == 128
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 128, 1, 1)
        assert m.forward_head(f, pre_logits=True).shape == (2, 128)
        torch.testing.assert_close(m.forward_head(f), m(x))
        m.reset_classifier(3)
        assert m(x).shape == (2, 3) and m.model_args["num_classes"] == 3
        m.reset_classifier(0)
        assert m(x).shape == (2, 128)
    k = timm.create_model("mixerformer", **dict(tiny(32), num_classes=11))
    assert k.head.fc2.out_features == 11
    with torch.device("meta"):
        s18 = timm.create_model("mixerformer_convformer_s18", num_classes=10)
    assert s18.head.fc2.out_features == 10 and s18.model_args["stages"][3]["mixer"] == "dwconv"
    assert m.feature_info[-1] == {"num_chs": 128, "reduction": 32, "module": "stages.3"}


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    m = MixerFormer(**tiny(32))
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    g0 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for a, b in zip(g0, (p.grad for p in m.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_local_dir_round_trip(tmp_path) -> None:
    from timm.models import save_for_hf

    args = tiny(28, in_chans=1)
    args["head"] = {"hidden_ratio": 0}
    m = timm.create_model("mixerformer", **args).eval()
    save_for_hf(m, str(tmp_path), model_args=model_args_from(m), safe_serialization=True)
    r = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert model_args_from(r) == model_args_from(m)  # same resolved args (timm writes img_size as [h, w])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), r(x))
    r2 = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=4)  # new classifier only
    assert r2.head.fc2.out_features == 4
    assert torch.equal(r2.stem.conv.weight, m.stem.conv.weight)


# -------------------------------------------------------------------------------------------------- errors
def _bad(mutate) -> dict:
    args = copy.deepcopy(tiny(32))
    mutate(args)
    return args


@pytest.mark.parametrize(
    ("mutate", "err", "pattern"),
    [
        (lambda a: a["stages"][2].update(mixer="foo"), ConfigError, r"stages\[2\]\.mixer: unknown mixer 'foo'"),
        (lambda a: a["stages"][1].update(mixer=["dwconv", 3]), ConfigError, r"stages\[1\]\.mixer"),
        (
            lambda a: a["stages"][1].update(knobs={"dwconv": {"kernel_size": 4}}),
            ConfigError,
            r"stages\[1\]\.knobs\.dwconv.*kernel_size",
        ),
        (
            lambda a: a["stages"][2].update(knobs={"mhsa": {"head_dim": 8}}),
            ConfigError,
            r"stages\[2\]\.knobs\.mhsa.*head_dim",
        ),
        (
            lambda a: a["stages"][2].update(knobs={"mhsa": {"heads": 8}}),
            ConfigError,
            r"stages\[2\]\.knobs\.mhsa.*unknown knob",
        ),
        (lambda a: a["stages"][0].update(knobs={"mhsa": {}}), ConfigError, r"stages\[0\]\.knobs\.mhsa: .*not used"),
        (lambda a: a["stages"][2].update(dim=80), InfeasibleArchError, r"stages\[2\].*divisible by head_dim"),
        (
            lambda a: a.update(downsample={"kernel": 4, "stride": 4}),
            InfeasibleArchError,
            r"stages\[2\]: token grid would be 0x0 at img_size 32",
        ),
        (lambda a: a["stages"][1].update(depth=0), ConfigError, r"stages\[1\]\.depth"),
        (lambda a: a["stages"][1].pop("dim"), ConfigError, r"stages\[1\]: missing required field 'dim'"),
        (lambda a: a["stages"][1].update(width=3), ConfigError, r"stages\[1\]: unknown field"),
        (lambda a: a.update(depths=[1]), ConfigError, r"model_args: unknown field"),
        (lambda a: a.update(stem={"kernel": 0}), ConfigError, r"model_args\.stem\.kernel"),
        (lambda a: a.update(drop_path_rate=1.5), ConfigError, r"model_args\.drop_path_rate"),
        (lambda a: a.update(in_chans=True), ConfigError, r"model_args\.in_chans"),
        (lambda a: a.update(stages=[]), ConfigError, r"model_args\.stages"),
    ],
)
def test_bad_model_args_raise_one_line_config_errors(mutate, err, pattern) -> None:
    with pytest.raises(err, match=pattern) as info:
        timm.create_model("mixerformer", **_bad(mutate))
    assert "\n" not in str(info.value)


def test_wrong_input_channels_and_too_small_input() -> None:
    m = MixerFormer(**tiny(32, in_chans=1, downsample={"kernel": 2, "stride": 2}))  # grids 8, 4, 2, 1
    with pytest.raises(ConfigError, match=r"in_chans=1.*\[2, 3, 32, 32\]"):
        m(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="empty token grid"):
        m(torch.randn(1, 1, 16, 16))  # grids 4, 2, 1, 0


# ----------------------------------------------------------------------------------------------- S18 + costs
def test_caformer_s18_matches_timm_params_and_spec_macs() -> None:
    with torch.device("meta"):
        ours, ref = timm.create_model("mixerformer_caformer_s18"), timm.create_model("caformer_s18")
        conv, conv_ref = timm.create_model("mixerformer_convformer_s18"), timm.create_model("convformer_s18")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(ref) and abs(count(ours) / 1e6 - 26.34) < 0.005  # spec §0: 26.34 M
    assert count(conv) == count(conv_ref) and abs(count(conv) / 1e6 - 26.77) < 0.005
    with torch.device("meta"):
        counted_ref = count_flops(ref, torch.empty(1, 3, 224, 224))[""]  # timm's own model, counted
    total = stage_costs(ours)[-1]
    assert total.params == count(ref) and total.flops == counted_ref
    assert abs(total.flops / 2e9 - 4.11) < 0.01  # spec §0: 4.11 GMACs
    assert abs(stage_costs(ours, img_size=32)[-1].flops / 2e9 - 0.082) < 0.001  # spec §0: 0.082 GMACs at 32 px
    assert abs(arch_cost(conv).flops / 2e9 - 3.94) < 0.01  # spec §0: ConvFormer-S18 3.94 GMACs


def test_stage_cost_table_is_consistent() -> None:
    args = tiny(64, ("dwconv", "mhsa", "mhsa", "dwconv"))
    args["stages"][1].update(mixer=["dwconv", "mhsa"], depth=2)
    model = MixerFormer(**args)
    rows = stage_costs(model, counted=True)
    assert [r.part for r in rows] == ["stem", "stages[0]", "stages[1]", "stages[2]", "stages[3]", "head", "total"]
    assert sum(r.params for r in rows[:-1]) == rows[-1].params == sum(p.numel() for p in model.parameters())
    assert sum(r.flops for r in rows[:-1]) == rows[-1].flops == arch_cost(args).flops
    assert rows[2].mixer == "dwconv·mhsa" and rows[2].grid == (8, 8) and rows[2].depth == 2
    for i, r in enumerate(rows[1:5]):
        assert r.params == sum(p.numel() for p in model.stages[i].parameters())
        assert r.mixer_params == sum(sum(p.numel() for p in b.token_mixer.parameters()) for b in model.stages[i].blocks)
    for r in rows:  # analytic (the source of truth) == FlopCounterMode, part by part
        assert r.counted_flops == r.flops, r.part
    table = format_stage_table(rows)
    assert "stages[1]" in table and "dwconv·mhsa" in table and table.count("\n") == len(rows) + 1
    assert stage_costs(args)[-1].params == rows[-1].params  # from model_args == from the module
