"""Manifold-key and key-only mixers against the plain references and their [CHOICE] formulas (spec §5-§6);
plus the dwconv / mhsa references themselves (the mixer benchmark times against them)."""

from __future__ import annotations

import itertools

import pytest
import torch

from nas.cost import count_flops
from nas.errors import ConfigError, InfeasibleArchError
from nas.mixers import get
from tests.reference_mixers import REFERENCES, leaf_copy


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _build(name: str, dim: int, grid: tuple[int, int], knobs: dict):
    """Module with O(1) random weights (atol 1e-5 is then a real test) and its resolved knobs."""
    d = get(name)
    m = d.build(dim, grid, knobs)
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p[0].numel() if p.dim() == 4 else p.shape[-1]
            p.copy_(torch.randn(p.shape) * fan_in**-0.5 + (1.0 if p.dim() == 1 and p.numel() == 1 else 0.0))
    return m, d.resolve_knobs(dim, knobs, "test")


def _check_against_ref(name, module, knobs, grid, x, atol=1e-5):
    p = leaf_copy(module)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, ref = module(xa), REFERENCES[name](xb, p, knobs, grid)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=1e-4)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=atol, rtol=1e-4)
    for pname, param in module.named_parameters():
        torch.testing.assert_close(param.grad, p[pname].grad, atol=atol, rtol=1e-4, msg=pname)
    return ours


def _macs_counted(module, x) -> float:
    with torch.no_grad():
        return count_flops(module, x)[""] / 2 / x.shape[0]


# ------------------------------------------------------------------------------------------ manifold key

MK_CASES = [
    {"aggregation": agg, "layers": layers, "context_broadcast": cb, "charts": charts}
    for (agg, layers), cb, charts in zip(
        itertools.product(["mean", "linear", "spatial", "gated"], [1, 2]),
        [False, True] * 4,
        [2, 4, 8, 2] * 2,
        strict=True,
    )
]


@pytest.mark.parametrize("knobs", MK_CASES, ids=lambda k: "-".join(map(str, k.values())))
def test_manifold_key_matches_reference(knobs):
    dim, grid = 32, (3, 4)
    m, r = _build("manifold_key", dim, grid, dict(knobs, head_dim=16))
    y = _check_against_ref("manifold_key", m, r, grid, torch.randn(2, *grid, dim))
    assert y.shape == (2, *grid, dim)
    # the key branch is live: every chart weight receives gradient
    assert all(p.grad.abs().sum() > 0 for p in m.chart_layers)


@pytest.mark.parametrize(
    "dim,grid,knobs",
    [
        (64, (4, 4), {}),
        (32, (3, 5), {"aggregation": "linear", "layers": 1, "charts": 2, "head_dim": 16}),
        (64, (4, 4), {"aggregation": "spatial", "charts": 4}),
        (128, (2, 3), {"aggregation": "gated", "context_broadcast": True, "head_dim": 64}),
    ],
)
def test_manifold_key_params_and_macs_match_formula(dim, grid, knobs):
    d = get("manifold_key")
    r = d.resolve_knobs(dim, knobs, "t")
    mm, layers, n = r["charts"], r["layers"], grid[0] * grid[1]
    agg_p = {"mean": 0, "linear": mm * dim**2, "spatial": 9 * dim, "gated": dim}[r["aggregation"]]
    agg_m = {"mean": 0, "linear": n * mm * dim**2, "spatial": 9 * n * dim, "gated": mm * dim}[r["aggregation"]]
    m = d.build(dim, grid, knobs)
    assert sum(p.numel() for p in m.parameters()) == d.params(dim, grid, knobs)
    assert d.params(dim, grid, knobs) == 3 * dim**2 + mm * dim + layers * mm * dim**2 + agg_p
    assert d.macs(dim, grid, knobs) == 3 * n * dim**2 + layers * mm * n * dim**2 + 2 * n * n * dim + agg_m
    assert _macs_counted(m, torch.randn(2, *grid, dim)) == d.macs(dim, grid, knobs)


def test_manifold_key_is_resolution_free():
    d = get("manifold_key")
    assert d.params(64, (4, 4)) == d.params(64, (9, 7))
    m = d.build(64, (4, 4), {"aggregation": "spatial"})
    y = m(torch.randn(2, 9, 7, 64))
    assert y.shape == (2, 9, 7, 64) and torch.isfinite(y).all()


def test_manifold_key_context_broadcast_changes_the_function():
    m, _ = _build("manifold_key", 32, (3, 3), {"head_dim": 16})
    x = torch.randn(2, 3, 3, 32)
    y0 = m(x)
    m.context_broadcast = True
    assert not torch.allclose(y0, m(x), atol=1e-3)


# ------------------------------------------------------------------------------------------------ key-only


@pytest.mark.parametrize("mode", ["broadcast", "qgate"])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("grid", [(3, 4), (1, 1)])
def test_key_only_matches_reference(mode, heads, grid):
    dim = 32
    m, r = _build("key_only", dim, grid, {"mode": mode, "heads": heads})
    y = _check_against_ref("key_only", m, r, grid, torch.randn(2, *grid, dim))
    assert y.shape == (2, *grid, dim)
    if grid != (1, 1):  # with one token the softmax is constant and the gate rightly gets no gradient
        assert m.gate.grad.abs().sum() > 0 and m.k.weight.grad.abs().sum() > 0


def test_key_only_gate_starts_uniform():
    m = get("key_only").build(64, (4, 4))
    assert torch.count_nonzero(m.gate) == 0
    x = torch.randn(2, 4, 4, 64)
    expected = m.proj(m.v(x).mean(dim=(1, 2)))  # uniform weights: the token mean of V, projected
    torch.testing.assert_close(m(x)[:, 2, 3], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "dim,grid,knobs",
    [
        (64, (4, 4), {}),
        (128, (7, 7), {"mode": "qgate"}),
        (96, (3, 5), {"heads": 6}),
        (320, (2, 2), {"mode": "qgate", "heads": 10}),
    ],
)
def test_key_only_params_and_macs_match_formula(dim, grid, knobs):
    d = get("key_only")
    r = d.resolve_knobs(dim, knobs, "t")
    n, hh = grid[0] * grid[1], r["heads"]
    m = d.build(dim, grid, knobs)
    assert sum(p.numel() for p in m.parameters()) == d.params(dim, grid, knobs)
    assert d.params(dim, grid, knobs) == (3 if r["mode"] == "broadcast" else 4) * dim**2 + dim
    per_token = 2 * dim * hh + (2 * dim**2 if r["mode"] == "qgate" else 0)
    per_image = dim**2 + (dim**2 if r["mode"] == "broadcast" else 0)
    assert d.macs(dim, grid, knobs) == n * per_token + per_image
    assert _macs_counted(m, torch.randn(2, *grid, dim)) == d.macs(dim, grid, knobs)


@pytest.mark.parametrize("mode", ["broadcast", "qgate"])
def test_key_only_cost_is_linear_in_tokens(mode):
    """Counted cost at N, 2N, 4N tokens is affine in N (no N^2 term); at large N doubling N doubles it."""
    m = get("key_only").build(64, (4, 4), {"mode": mode})
    cost = [_macs_counted(m, torch.randn(1, 64, 16 * s, 64)) for s in (1, 2, 4)]  # N = 1024, 2048, 4096
    assert cost[2] - cost[1] == pytest.approx(2 * (cost[1] - cost[0]), rel=1e-9)
    assert cost[2] <= 2 * cost[1]
    assert cost[2] == pytest.approx(2 * cost[1], rel=0.01)


def test_key_only_default_heads_and_feasibility():
    d = get("key_only")
    assert d.resolve_knobs(320, {}, "t")["heads"] == 10
    assert d.resolve_knobs(16, {}, "t")["heads"] == 1
    assert d.feasibility(64, (1, 1)) == []
    assert d.feasibility(64, (4, 4), {"heads": 3}) == ["dim 64 is not divisible by heads 3"]
    with pytest.raises(InfeasibleArchError, match=r"stages\[0\].*heads 3"):
        d.build(64, (4, 4), {"heads": 3}, where="stages[0]")
    with pytest.raises(ConfigError, match="mode"):
        d.resolve_knobs(64, {"mode": "sigmoid"}, "stages[0].knobs.key_only")


def test_manifold_key_feasibility():
    d = get("manifold_key")
    assert d.feasibility(64, (1, 1)) == []
    assert d.feasibility(48, (4, 4), {"head_dim": 32}) == ["dim 48 is not divisible by head_dim 32"]
    with pytest.raises(ConfigError, match="charts"):
        d.resolve_knobs(64, {"charts": 3}, "stages[2].knobs.manifold_key")


@pytest.mark.parametrize(
    "name,knobs",
    [
        ("manifold_key", {"aggregation": "gated"}),
        ("manifold_key", {}),
        ("key_only", {}),
        ("key_only", {"mode": "qgate"}),
    ],
)
def test_bf16_autocast_runs(name, knobs):
    m = get(name).build(64, (4, 4), knobs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 4, 4, 64))
    assert y.shape == (2, 4, 4, 64) and torch.isfinite(y.float()).all()


# --------------------------------------------------- dwconv / mhsa references (the benchmark's baselines)


@pytest.mark.parametrize(
    "name,knobs",
    [
        ("dwconv", {}),
        ("dwconv", {"kernel_size": 3, "expansion": 1}),
        ("mhsa", {}),
        ("mhsa", {"head_dim": 16, "qkv_bias": True}),
    ],
)
def test_classic_mixers_match_their_references(name, knobs):
    dim, grid = 64, (5, 6)
    m, r = _build(name, dim, grid, knobs)
    _check_against_ref(name, m, r, grid, torch.randn(2, *grid, dim))
