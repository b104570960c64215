"""dwconv (ConvFormer SepConv) and mhsa (CAFormer attention): params, MACs, numerics, knob validation."""

from __future__ import annotations

import math

import pytest
import torch

from nas import mixers
from nas.cost import count_flops
from nas.errors import ConfigError, InfeasibleArchError

torch.set_num_threads(2)


def _numel(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _flops(m: torch.nn.Module, x: torch.Tensor) -> int:
    return count_flops(m, x)[""]


@pytest.mark.parametrize(("dim", "k", "r"), [(64, 7, 2), (128, 3, 1), (48, 5, 3), (320, 9, 4), (24, 7, 2)])
def test_dwconv_params_and_macs_match_spec(dim: int, k: int, r: int) -> None:
    defn = mixers.get("dwconv")
    knobs = {"kernel_size": k, "expansion": r}
    grid = (6, 5)
    m = defn.build(dim, grid, knobs)
    # spec §1: params = 2 r C^2 + k^2 r C + 2 ; MACs = N (2 r C^2 + k^2 r C)
    assert _numel(m) == 2 * r * dim * dim + k * k * r * dim + 2 == defn.params(dim, grid, knobs)
    macs = 30 * (2 * r * dim * dim + k * k * r * dim)
    assert defn.macs(dim, grid, knobs) == macs
    assert _flops(m, torch.randn(1, *grid, dim)) == 2 * macs


@pytest.mark.parametrize(("dim", "hd", "bias"), [(64, 32, False), (128, 16, True), (320, 64, False), (96, 32, True)])
def test_mhsa_params_and_macs_match_spec(dim: int, hd: int, bias: bool) -> None:
    defn = mixers.get("mhsa")
    knobs = {"head_dim": hd, "qkv_bias": bias}
    grid = (7, 6)
    m = defn.build(dim, grid, knobs)
    assert m.num_heads == dim // hd
    # spec §2: params = 4 C^2 (+3C qkv bias); MACs = 4 N C^2 + 2 N^2 C
    assert _numel(m) == 4 * dim * dim + (3 * dim if bias else 0) == defn.params(dim, grid, knobs)
    n = 42
    macs = 4 * n * dim * dim + 2 * n * n * dim
    assert defn.macs(dim, grid, knobs) == macs
    # the counter (with nas.cost's SDPA formulas) sees the 2 N^2 C attention MACs on CPU, on every torch
    assert _flops(m, torch.randn(1, *grid, dim)) == 2 * macs


def _attention_reference(m: torch.nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, written out with explicit matmuls."""
    B, H, W, C = x.shape
    t = x.reshape(B, H * W, C)
    qkv = t @ m.qkv.weight.T + (m.qkv.bias if m.qkv.bias is not None else 0)
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    heads = C // head_dim
    outs = []
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(head_dim)
        outs.append(torch.softmax(logits, dim=-1) @ v[..., sl])
    return (torch.cat(outs, dim=-1) @ m.proj.weight.T).reshape(B, H, W, C)


@pytest.mark.parametrize(("dim", "hd", "bias", "grid"), [(64, 32, False, (5, 7)), (96, 16, True, (4, 4))])
def test_mhsa_matches_plain_reference(dim: int, hd: int, bias: bool, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = mixers.get("mhsa").build(dim, grid, {"head_dim": hd, "qkv_bias": bias})
    if bias:
        torch.nn.init.normal_(m.qkv.bias, std=0.5)
    x = torch.randn(2, *grid, dim)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _attention_reference(m, x, hd), atol=1e-5, rtol=1e-5)


def test_dwconv_matches_timm_sepconv() -> None:
    """Same weights in timm's NCHW SepConv (1x1 convs) give the same output as our channels-last one."""
    from timm.models.metaformer import SepConv

    torch.manual_seed(0)
    dim, k, r = 24, 5, 3
    ours = mixers.get("dwconv").build(dim, (6, 6), {"kernel_size": k, "expansion": r})
    ref = SepConv(dim, expansion_ratio=r, kernel_size=k, padding=k // 2)
    with torch.no_grad():
        ours.act1.scale.fill_(0.7)
        ours.act1.bias.fill_(-0.2)
        ref.pwconv1.weight.copy_(ours.pwconv1.weight[:, :, None, None])
        ref.dwconv.weight.copy_(ours.dwconv.weight)
        ref.pwconv2.weight.copy_(ours.pwconv2.weight[:, :, None, None])
        ref.act1.scale.fill_(0.7)
        ref.act1.bias.fill_(-0.2)
        x = torch.randn(2, 6, 6, dim)
        torch.testing.assert_close(ours(x), ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_starrelu_formula() -> None:
    from nas.mixers.dwconv import StarReLU

    act = StarReLU(scale_value=0.5, bias_value=0.25)
    x = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(act(x), torch.tensor([0.25, 0.25, 4.75]))


def test_knob_defaults_follow_model_args_doc() -> None:
    assert mixers.get("dwconv").resolve_knobs(64, {}, "t") == {"kernel_size": 7, "expansion": 2}
    assert mixers.get("mhsa").resolve_knobs(64, {}, "t") == {"head_dim": 32, "qkv_bias": False}


def test_knob_validation_names_the_knob() -> None:
    with pytest.raises(ConfigError, match="kernel_size"):
        mixers.get("dwconv").build(64, (4, 4), {"kernel_size": 4})
    with pytest.raises(ConfigError, match="head_dim"):
        mixers.get("mhsa").build(64, (4, 4), {"head_dim": 8})
    with pytest.raises(ConfigError, match="unknown knob"):
        mixers.get("mhsa").build(64, (4, 4), {"heads": 2})
    with pytest.raises(InfeasibleArchError, match="not divisible by head_dim 32"):
        mixers.get("mhsa").build(80, (4, 4), {})
    assert mixers.get("mhsa").feasibility(96, (4, 4), {"head_dim": 32}) == []


def test_mixers_keep_shape_and_backprop() -> None:
    for name in ("dwconv", "mhsa"):
        m = mixers.get(name).build(64, (3, 5), {})
        x = torch.randn(2, 3, 5, 64, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
