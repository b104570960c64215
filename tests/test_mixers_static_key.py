"""SKA and CSKA (nas/mixers/static_key.py) against the plain references and the spec's formulas (§3-§4)."""

from __future__ import annotations

import itertools

import pytest
import torch

from nas.cost import count_flops
from nas.errors import ConfigError, InfeasibleArchError
from nas.mixers import get
from tests.reference_mixers import cska_logits_ref, cska_ref, leaf_copy, ska_ref


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) random weights so that atol 1e-5 is a real test (the 0.02 init would make outputs tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 0:  # the learned temperature keeps its init
                continue
            fan_in = p[0].numel() if p.dim() == 4 else p.shape[-1]  # conv: d*k*k, else the last axis
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
    return module


def _build(name: str, dim: int, grid: tuple[int, int], knobs: dict, seed: int = 0):
    d = get(name)
    resolved = d.resolve_knobs(dim, knobs, "test")
    return _randomize(d.build(dim, grid, knobs), seed), resolved


def _check_against_ref(module, ref_fn, knobs, grid, x, atol=1e-5):
    p = leaf_copy(module)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, ref = module(xa), ref_fn(xb, p, knobs, grid)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=1e-4)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=atol, rtol=1e-4)
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.grad, p[name].grad, atol=atol, rtol=1e-4, msg=name)
    return ours


def _macs_counted(module, x) -> float:
    with torch.no_grad():
        return count_flops(module, x)[""] / 2 / x.shape[0]


# ----------------------------------------------------------------------------------------------------- SKA

SKA_CASES = [
    {"q_proj": q, "scale": s, "head_dim": hd}
    for (q, s), hd in zip(
        itertools.product(["paper", "repo"], ["inv_sqrt_d", "none", "learned"]), [16, 32] * 3, strict=True
    )
]


@pytest.mark.parametrize("knobs", SKA_CASES, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("call_grid", [(4, 5), (6, 3), (2, 3)], ids=["build", "grow", "shrink"])
def test_ska_matches_reference(knobs, call_grid):
    grid, dim = (4, 5), 64
    m, resolved = _build("ska", dim, grid, knobs)
    x = torch.randn(2, *call_grid, dim)
    y = _check_against_ref(m, ska_ref, resolved, grid, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert m.key.grad is not None and m.key.grad.abs().sum() > 0, "gradient must reach the static key"


def test_ska_default_is_the_authors_stu_form():
    """The default is one of the two published pairs (STU: identity q, no biases, 1/sqrt(d)), not a mix."""
    defaults = get("ska").resolve_knobs(64, {}, "t")
    assert (defaults["q_proj"], defaults["scale"]) == ("repo", "inv_sqrt_d")
    m = get("ska").build(64, (4, 4))
    assert isinstance(m.q, torch.nn.Identity) and m.v.bias is None and m.proj.bias is None
    assert m.fixed_scale == 32**-0.5 and m.scale_mode == "inv_sqrt_d"


def test_ska_learned_scale_gets_gradient_and_starts_at_inv_sqrt_d():
    m, _ = _build("ska", 32, (3, 3), {"scale": "learned", "head_dim": 16})
    assert torch.isclose(m.log_scale.exp(), torch.tensor(16**-0.5))
    m(torch.randn(2, 3, 3, 32)).square().sum().backward()
    assert m.log_scale.grad.abs() > 0


@pytest.mark.parametrize(
    "dim,grid,knobs",
    [
        (64, (4, 4), {}),
        (128, (7, 7), {"q_proj": "repo"}),
        (96, (3, 5), {"head_dim": 16, "scale": "learned"}),
        (320, (2, 2), {"q_proj": "repo", "scale": "none", "head_dim": 64}),
    ],
)
def test_ska_params_and_macs_match_formula(dim, grid, knobs):
    d = get("ska")
    m = d.build(dim, grid, knobs)
    r = d.resolve_knobs(dim, knobs, "t")
    n = grid[0] * grid[1]
    assert sum(p.numel() for p in m.parameters()) == d.params(dim, grid, knobs)
    # spec §3: paper 3C^2 + NC + 3C, repo 2C^2 + NC (+1 learned temperature)
    expected = (3 * dim**2 + 3 * dim if r["q_proj"] == "paper" else 2 * dim**2) + n * dim
    assert d.params(dim, grid, knobs) == expected + (r["scale"] == "learned")
    counted = _macs_counted(m, torch.randn(2, *grid, dim))
    assert counted == d.macs(dim, grid, knobs)
    assert d.macs(dim, grid, knobs) == (3 if r["q_proj"] == "paper" else 2) * n * dim**2 + 2 * n * n * dim


def test_ska_uses_a_counted_sdpa_kernel_with_stride0_key():
    """The fused CPU kernel accepts the stride-0 key, and nas.cost's formulas count it (no silent zero)."""
    from torch.utils.flop_counter import FlopCounterMode

    from nas.cost import sdpa_flop_formulas

    m = get("ska").build(64, (4, 4))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=sdpa_flop_formulas()) as fc:
        m(torch.randn(3, 4, 4, 64))
    ops = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    sdpa = {k: v for k, v in ops.items() if "scaled_dot_product" in k}
    assert sdpa and all(v == 2 * 2 * 3 * 16 * 16 * 64 for v in sdpa.values()), ops  # 2 x (QK^T + PV) MACs


def test_static_key_resize_is_identity_at_build_grid():
    m, _ = _build("ska", 64, (4, 6), {})
    assert m.static_key((4, 6)) is m.key
    c = get("cska").build(64, (4, 6))
    w, b = c.conv_params((4, 6))
    assert w is c.logit_conv.weight and b is c.logit_conv.bias


def _keys_cubic_matrix(src: int, dst: int, a: float = -0.75) -> torch.Tensor:
    """[dst, src] interpolation matrix of Keys' cubic convolution, align_corners=False, edge taps clamped."""

    def kernel(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = torch.zeros(dst, src, dtype=torch.float64)
    for i in range(dst):
        x = (i + 0.5) * src / dst - 0.5
        base = int(torch.floor(torch.tensor(x)))
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), src - 1)] += kernel(x - tap)
    return m


def _ramp_key(m, src):
    rows, cols = torch.meshgrid(torch.arange(src[0]), torch.arange(src[1]), indexing="ij")
    coef = torch.randn(m.heads, 1, m.head_dim, 2)
    with torch.no_grad():
        m.key.copy_(coef[..., 0] * rows.reshape(1, -1, 1) + coef[..., 1] * cols.reshape(1, -1, 1) + 0.5)
    return coef


@pytest.mark.parametrize("src,dst", [((4, 5), (7, 9)), ((3, 3), (8, 5))])
def test_static_key_upsample_is_the_analytic_bicubic_resample(src, dst):
    """Growing: each output is Keys' cubic convolution (a = -0.75, PyTorch's bicubic) of the build-grid key."""
    m = get("ska").build(32, src, {"head_dim": 16})
    _ramp_key(m, src)
    with torch.no_grad():
        k = m.static_key(dst)
    assert k.shape == (m.heads, dst[0] * dst[1], m.head_dim)
    grid_key = m.key.detach().double().reshape(m.heads, *src, m.head_dim)
    expected = torch.einsum(
        "ir,jc,hrcd->hijd", _keys_cubic_matrix(src[0], dst[0]), _keys_cubic_matrix(src[1], dst[1]), grid_key
    ).reshape(k.shape)
    torch.testing.assert_close(k.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("src,dst", [((12, 12), (6, 6)), ((6, 12), (9, 6))])
def test_static_key_shrink_reproduces_a_linear_ramp_inside(src, dst):
    """Shrinking antialiases; away from the border a linear ramp is resampled exactly."""
    m = get("ska").build(32, src, {"head_dim": 16})
    coef = _ramp_key(m, src)
    with torch.no_grad():
        k = m.static_key(dst)
    sr = (torch.arange(dst[0]) + 0.5) * src[0] / dst[0] - 0.5
    sc = (torch.arange(dst[1]) + 0.5) * src[1] / dst[1] - 0.5
    gr, gc = torch.meshgrid(sr, sc, indexing="ij")
    expected = coef[..., 0] * gr.reshape(1, -1, 1) + coef[..., 1] * gc.reshape(1, -1, 1) + 0.5
    # interior: every tap within the cubic support (widened by the shrink factor) exists in the source
    reach_r, reach_c = 2 * max(1, src[0] / dst[0]), 2 * max(1, src[1] / dst[1])
    inside = (gr - reach_r > -1) & (gr + reach_r < src[0]) & (gc - reach_c > -1) & (gc + reach_c < src[1])
    inside = inside.reshape(-1)
    assert inside.any()
    torch.testing.assert_close(k[:, inside], expected[:, inside], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- CSKA

CSKA_CASES = [
    {"kernel_size": 3, "scaled": True},
    {"kernel_size": 1, "scaled": True, "heads": 2},
    {"kernel_size": 5, "scaled": False, "heads": 1},
    {"kernel_size": 3, "scaled": False, "heads": 8},
]


@pytest.mark.parametrize("impl", ["conv", "unfold", "sdpa"])
@pytest.mark.parametrize("knobs", CSKA_CASES, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("call_grid", [(5, 6), (7, 8), (4, 3)], ids=["build", "grow", "shrink"])
def test_cska_both_impls_match_reference(impl, knobs, call_grid):
    grid, dim = (5, 6), 32
    m, resolved = _build("cska", dim, grid, knobs)
    m.impl = impl
    x = torch.randn(2, *call_grid, dim)
    y = _check_against_ref(m, cska_ref, resolved, grid, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert m.logit_conv.weight.grad.abs().sum() > 0, "gradient must reach the static (conv) key"


def test_cska_default_impl_is_the_measured_fastest_path():
    assert get("cska").build(32, (4, 4)).impl == "unfold"  # benchmarks/RESULTS.md, "Mixers"


def test_cska_reference_logits_follow_the_definition():
    """Independent check of the reference: logit[b, h, n, m] = sum over the k x k neighbourhood of query n."""
    g = torch.Generator().manual_seed(1)
    b, h, w, heads, d, k = 2, 3, 4, 2, 3, 3
    c, n = heads * d, h * w
    q = torch.randn(b, h, w, c, generator=g)
    weight, bias = torch.randn(heads * n, d, k, k, generator=g), torch.randn(heads * n, generator=g)
    logits = cska_logits_ref(q, weight, bias, heads)
    for bi, hi, qn, km in [(0, 0, 0, 5), (1, 1, 7, 11), (0, 1, 11, 0), (1, 0, 5, 6)]:
        y, x = divmod(qn, w)
        acc = bias[hi * n + km].item()
        for j, ky, kx in itertools.product(range(d), range(k), range(k)):
            yy, xx = y + ky - k // 2, x + kx - k // 2
            if 0 <= yy < h and 0 <= xx < w:
                acc += q[bi, yy, xx, hi * d + j].item() * weight[hi * n + km, j, ky, kx].item()
        assert logits[bi, hi, qn, km].item() == pytest.approx(acc, abs=1e-5)


@pytest.mark.parametrize(
    "dim,grid,knobs",
    [
        (32, (4, 4), {}),
        (64, (3, 5), {"kernel_size": 5, "heads": 2}),
        (48, (6, 6), {"kernel_size": 1}),
        (128, (4, 4), {"heads": 16, "scaled": False}),
    ],
)
def test_cska_params_and_macs_match_formula(dim, grid, knobs):
    d = get("cska")
    r = d.resolve_knobs(dim, knobs, "t")
    n, k, hh = grid[0] * grid[1], r["kernel_size"], r["heads"]
    m = d.build(dim, grid, knobs)
    assert sum(p.numel() for p in m.parameters()) == d.params(dim, grid, knobs) == 3 * dim**2 + k * k * n * dim + hh * n
    macs = d.macs(dim, grid, knobs)
    assert macs == 3 * n * dim**2 + k * k * n * n * dim + n * n * dim
    x = torch.randn(2, *grid, dim)
    for impl in ("conv", "unfold"):
        m.impl = impl
        assert _macs_counted(m, x) == macs, impl
    # the SDPA path carries the bias as one extra key feature: exactly H*N^2 more multiply-adds
    m.impl = "sdpa"
    assert _macs_counted(m, x) == macs + hh * n * n


def test_cska_default_heads_is_dim_over_16():
    assert get("cska").resolve_knobs(320, {}, "t")["heads"] == 20
    assert get("cska").build(64, (4, 4)).heads == 4


# -------------------------------------------------------------------------------------------- feasibility


@pytest.mark.parametrize("name", ["ska", "cska"])
def test_single_token_grid_is_infeasible_with_reason(name):
    reasons = get(name).feasibility(64, (1, 1))
    assert any("zero gradient" in r for r in reasons), reasons
    with pytest.raises(InfeasibleArchError, match="N = 1"):
        get(name).build(64, (1, 1), where="stages[3]")


@pytest.mark.parametrize("name", ["ska", "cska"])
@pytest.mark.parametrize("grid", [(1, 2), (1, 3), (3, 1)])
def test_fewer_than_four_tokens_is_infeasible(name, grid):
    reasons = get(name).feasibility(64, grid, {"kernel_size": 1} if name == "cska" else {})
    assert len(reasons) == 1 and "fewer than 4" in reasons[0]


def test_four_tokens_is_feasible():
    assert get("ska").feasibility(64, (2, 2)) == []
    assert get("cska").feasibility(64, (2, 2)) == []


def test_cska_notes_centre_tap_on_1x1_and_dead_taps_on_small_grids():
    assert "centre tap" in get("cska").feasibility(64, (1, 1))[0]
    assert "centre tap" not in get("cska").feasibility(64, (1, 1), {"kernel_size": 1})[0]
    reasons = get("cska").feasibility(64, (2, 2), {"kernel_size": 5})
    assert len(reasons) == 1 and "kernel_size <= 3" in reasons[0]


def test_divisibility_reasons():
    assert get("ska").feasibility(48, (4, 4), {"head_dim": 32}) == ["dim 48 is not divisible by head_dim 32"]
    assert get("cska").feasibility(64, (4, 4), {"heads": 3}) == ["dim 64 is not divisible by heads 3"]
    with pytest.raises(InfeasibleArchError, match=r"stages\[1\].*heads 3"):
        get("cska").build(64, (4, 4), {"heads": 3}, where="stages[1]")


def test_bad_knob_values_raise_config_error():
    with pytest.raises(ConfigError, match="q_proj"):
        get("ska").resolve_knobs(64, {"q_proj": "linear"}, "stages[2].knobs.ska")
    with pytest.raises(ConfigError, match="heads"):
        get("cska").resolve_knobs(64, {"heads": 0}, "stages[1].knobs.cska")
    with pytest.raises(ConfigError, match="kernel_size"):
        get("cska").resolve_knobs(64, {"kernel_size": 7}, "stages[1].knobs.cska")


@pytest.mark.parametrize(
    "name,knobs", [("ska", {}), ("ska", {"scale": "learned"}), ("cska", {}), ("cska", {"kernel_size": 1})]
)
def test_bf16_autocast_runs_with_fp32_static_keys(name, knobs):
    """Under autocast the projections give bf16 while the static key stays an fp32 parameter."""
    m = get(name).build(32, (4, 4), knobs)
    for impl in ["conv", "unfold"] if name == "cska" else [None]:
        if impl:
            m.impl = impl
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(torch.randn(2, 5, 3, 32))
        assert y.shape == (2, 5, 3, 32) and torch.isfinite(y.float()).all()
