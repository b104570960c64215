"""nas.cost: the analytic formulas (source of truth) against the module's own parameters and FlopCounterMode, on
whatever torch is installed — including torch releases whose counter has no formula for the CPU SDPA kernel."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas import mixers
from nas.cost import arch_cost, count_flops, model_flops, sdpa_flop_formulas
from nas.errors import NasError
from nas.models import MixerFormer

torch.set_num_threads(2)


def _random_arch(rng: random.Random, name: str) -> dict:
    """A small 3-stage architecture with ``name`` in stage 2 at random knobs (any knob with listed choices)."""
    defn = mixers.get(name)
    knobs = {k: rng.choice(v.choices) for k, v in defn.knobs.items() if v.choices}
    if "heads" in defn.knobs:
        knobs["heads"] = rng.choice([1, 2, 4])
    return {
        "in_chans": rng.choice([1, 3]),
        "num_classes": rng.choice([0, 7]),
        "img_size": rng.choice([32, [32, 24]]),
        "stem": {"kernel": 3, "stride": 2},
        "stages": [
            {"depth": 1, "dim": 16, "mixer": "dwconv"},
            {"depth": rng.choice([1, 2, 3]), "dim": rng.choice([32, 64]),
             "mixer": [name, "dwconv"][: rng.choice([1, 2])], "knobs": {name: knobs}},
            {"depth": 1, "dim": 64, "mixer": "mhsa", "layer_scale": rng.choice([None, 1e-5])},
        ],
        "mlp_ratio": rng.choice([2.0, 3.0]),
        "head": {"hidden_ratio": rng.choice([0.0, 2.0]), "dropout": 0.0},
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(mixers.names()))
def test_analytic_cost_equals_parameters_and_counted_flops(name: str) -> None:
    rng, checked = random.Random(name), 0
    for _ in range(12):
        args = _random_arch(rng, name)
        try:
            model = MixerFormer(**args)
        except NasError:
            continue  # an infeasible knob draw (e.g. head_dim 64 at dim 32)
        cost = arch_cost(args)
        h, w = (args["img_size"],) * 2 if isinstance(args["img_size"], int) else args["img_size"]
        assert cost.params == sum(p.numel() for p in model.parameters()), args
        assert cost.flops == count_flops(model, torch.randn(1, args["in_chans"], h, w))[""], args
        checked += 1
    assert checked >= 4


def _attention_mixers() -> list[str]:
    """Mixers whose MAC formula has a term in N^2 (macs(4N) > 4 macs(N))."""
    out = []
    for name in mixers.names():
        defn = mixers.get(name)
        if defn.macs(64, (8, 8)) > 4 * defn.macs(64, (4, 4)):
            out.append(name)
    return out


def test_the_attention_mixers_are_the_expected_ones() -> None:
    assert set(_attention_mixers()) == {"mhsa", "ska", "cska", "manifold_key"}  # key_only is linear in N


@pytest.mark.parametrize("name", _attention_mixers())
@pytest.mark.parametrize("backward", [False, True])
def test_counted_flops_keep_the_quadratic_term(name: str, backward: bool) -> None:
    """Counted FLOPs at N and 4N: a + b N + c N^2 with c > 0 exactly when the N^2 work is counted.

    A bare FlopCounterMode on torch <= 2.14 counts the CPU SDPA kernel as 0, which makes c = 0 for mhsa, ska
    and manifold_key: this test fails there unless nas.cost's formulas are in place."""
    defn, dim = mixers.get(name), 64

    def counted(grid: tuple[int, int]) -> int:
        m = defn.build(dim, grid)  # built for the grid it runs at: static keys at their own size
        x = torch.randn(1, *grid, dim, requires_grad=backward)
        return count_flops(m, x, backward=backward)[""]

    small, large = counted((6, 6)), counted((12, 12))
    n = 36
    quadratic = large - 4 * small  # linear terms cancel; c (16 - 4) N^2 remains
    assert quadratic >= 12 * n * n * dim * (2 if not backward else 4), (small, large)
    if not backward:
        assert small == 2 * defn.macs(dim, (6, 6)) and large == 2 * defn.macs(dim, (12, 12))


def test_a_bare_counter_is_what_we_complete() -> None:
    """Whatever this torch's own counter does with the CPU SDPA kernel, ours counts 2 x (QK^T + PV) MACs."""
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 5)
    with FlopCounterMode(display=False, custom_mapping=sdpa_flop_formulas()) as fc:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert fc.get_total_flops() == 2 * (2 * 3 * 10 * 12 * 8) + 2 * (2 * 3 * 10 * 12 * 5)


def test_sdpa_formulas_cover_forward_and_backward_and_agree_with_torch_where_it_has_one() -> None:
    from torch.utils import flop_counter

    formulas = sdpa_flop_formulas()
    names = {str(op).split(".")[1] for op in formulas}
    assert "_scaled_dot_product_flash_attention_for_cpu" in names
    for name in list(names):
        if not name.endswith("_backward"):
            assert f"{name}_backward" in names or not hasattr(torch.ops.aten, f"{name}_backward"), name
    q, k, v = (2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 8)
    registry = getattr(flop_counter, "flop_registry", {})
    compared = 0
    for op, ours in formulas.items():
        theirs = registry.get(op) or registry.get(getattr(op, "default", None))
        if theirs is None:
            continue  # torch has no formula (the CPU flash kernel before 2.15): ours is the only count
        args = (q, k, v) if not str(op).endswith("_backward") else ((2, 4, 9, 8), q, k, v)
        as_tensors = [torch.empty(s, device="meta") for s in args]
        assert ours(*args) == theirs(*as_tensors, out_val=None), op
        compared += 1
    assert compared >= 2  # flash/efficient forward and backward are in every supported torch's registry


def test_model_flops_is_analytic_for_ours_and_counted_for_others() -> None:
    args = _random_arch(random.Random(3), "mhsa")
    model = MixerFormer(**args)
    x1 = torch.randn(1, args["in_chans"], 16, 16)  # another resolution than the design one
    assert model_flops(model, x1) == arch_cost(args, img_size=(16, 16)).flops == count_flops(model, x1)[""]
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    assert model_flops(other, torch.randn(1, 3, 8, 8)) == 2 * (4 * 3 * 9 * 36 + 144 * 2)
