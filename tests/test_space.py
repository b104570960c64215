"""Search spaces, study files and ArchSpec: validation before anything runs, define-by-run sampling, constraints.

Bad files live in tests/bad_files/; each one says in its header which field its error must name (``# expect:``),
which words of the fix it must give (``# fix:``) and, when the error is in another file, that file (``# file:``).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from nas import mixers
from nas.arch import ArchSpec
from nas.cost import arch_cost
from nas.engine.config import read_study_file
from nas.errors import ConfigError, InfeasibleArchError
from nas.space import PATTERN_SEP, SearchSpace

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_files"
BAD_FILES = sorted(BAD.glob("*.yaml"))
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
STUDIES = sorted((REPO / "studies").glob("*.yaml"))
ALL_MIXERS = {"dwconv", "mhsa", "ska", "cska", "manifold_key", "key_only"}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ":" in line:
            key, _, value = line[2:].partition(":")
            if key in ("expect", "fix", "file"):
                out[key] = value.strip()
    return out


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _needs_all_mixers() -> None:
    missing = ALL_MIXERS - set(mixers.names())
    assert not missing, f"mixers missing from the registry: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------- bad files
def test_bad_files_cover_spaces_and_studies() -> None:
    spaces = [p for p in BAD_FILES if p.name.startswith("space_")]
    studies = [p for p in BAD_FILES if p.name.startswith("study_")]
    assert len(spaces) >= 10 and len(studies) >= 10
    assert len(spaces) + len(studies) == len(BAD_FILES), "bad files are named space_*.yaml or study_*.yaml"
    for p in BAD_FILES:
        h = _header(p)
        assert h.get("expect") and h.get("fix"), f"{p.name}: header needs '# expect:' and '# fix:'"


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_file_fails_in_one_line_naming_file_field_and_fix(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # default study storage is relative to the working directory
    before = _listing(BAD)
    h = _header(path)
    with pytest.raises(ConfigError) as info:
        if path.name.startswith("space_"):
            SearchSpace.load(path)
        else:
            read_study_file(path)
    msg = str(info.value)
    assert "\n" not in msg and msg == msg.strip()
    assert h.get("file", path.name) in msg
    assert h["expect"] in msg
    assert h["fix"] in msg
    # validation never touches storage: no database, no study folder, nothing next to the bad file
    assert _listing(tmp_path) == []
    assert _listing(BAD) == before


def test_error_in_nested_override_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = REPO / "studies" / "fashion_mnist_tiny.yaml"
    with pytest.raises(ConfigError, match=r"budget\.max_concurrent: Input should be greater than or equal to 1"):
        read_study_file(study, {"budget.max_concurrent": 0})
    cfg, _ = read_study_file(study, {"budget.n_trials": 3, "seed": 7})
    assert (cfg.budget.n_trials, cfg.seed) == (3, 7)
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_loads_without_touching_storage(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_all_mixers()
    monkeypatch.chdir(tmp_path)
    cfg, space = read_study_file(path)
    space_file = yaml.safe_load(path.read_text())["space"]  # a study may reuse another study's space
    assert cfg.name == path.stem and space.name == Path(space_file).stem
    assert all(r < cfg.train.epochs for r in cfg.fidelity.rungs)  # the table build has none: no pruning
    assert cfg.directions == ["maximize", "maximize"]
    assert cfg.storage_url(tmp_path).startswith("sqlite:///")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_space_loads(path: Path) -> None:
    _needs_all_mixers()
    space = SearchSpace.load(path)
    assert space.name == path.stem
    grids = space.grids()
    assert len(grids) == len(space.stages) and all(h >= 1 and w >= 1 for h, w in grids)
    assert space.space_hash() == SearchSpace.load(path).space_hash()


# ---------------------------------------------------------------------------------------------- sampling
def _expected_param_names(space: SearchSpace, arch: ArchSpec) -> set[str]:
    """Independent statement of the conditional space: what Optuna must have been asked for this arch."""
    names = set()
    for i, (st, chosen) in enumerate(zip(space.stages, arch.stages, strict=True)):
        if len(st.mixers) > 1:
            names.add(f"s{i}.mixer")
        for field in ("depth", "dim"):
            if isinstance(getattr(st, field), list) and len(getattr(st, field)) > 1:
                names.add(f"s{i}.{field}")
        for m in dict.fromkeys(chosen.pattern):
            merged = {**space.knobs.get(m, {}), **st.knobs.get(m, {})}
            names |= {f"s{i}.{m}.{k}" for k, v in merged.items() if isinstance(v, list) and len(v) > 1}
    return names


def _sample_many(space: SearchSpace, n: int, seed: int) -> list[tuple[dict[str, Any], ArchSpec | None, str]]:
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        try:
            arch, err = space.sample(trial.suggest_categorical, num_classes=10), ""
        except ConfigError as e:
            arch, err = None, str(e)
        out.append((dict(trial.params), arch, err))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return out


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_random_sampling_is_conditional_and_reproducible(path: Path) -> None:
    _needs_all_mixers()
    space = SearchSpace.load(path)
    samples = _sample_many(space, 150, seed=3)
    seen: set[tuple[int, str]] = set()
    for params, arch, err in samples:
        if arch is None:  # an infeasible combination: a one-line error naming the stage, never a crash
            assert "stages[" in err and "\n" not in err
            continue
        assert set(params) == _expected_param_names(space, arch)
        for i, st in enumerate(arch.stages):
            entry = PATTERN_SEP.join(st.pattern)
            if f"s{i}.mixer" in params:
                assert params[f"s{i}.mixer"] == entry
            seen.add((i, entry))
            assert set(st.knobs) == set(st.pattern)  # resolved knobs only for the mixers it uses
            for m in st.pattern:  # every knob resolved and inside the values the space allows
                merged = {**space.knobs.get(m, {}), **space.stages[i].knobs.get(m, {})}
                for k, allowed in merged.items():
                    assert st.knobs[m][k] in (allowed if isinstance(allowed, list) else [allowed])
        again = space.arch_from_params(params, num_classes=10)
        assert again.arch_id == arch.arch_id
    feasible = [a for _, a, _ in samples if a is not None]
    assert len(feasible) >= 0.8 * len(samples)
    every = {
        (i, e if isinstance(e, str) else PATTERN_SEP.join(e)) for i, s in enumerate(space.stages) for e in s.mixers
    }
    assert seen == every, f"never sampled: {sorted(every - seen)}"
    if path.stem == "fashion_mnist_tiny":
        assert len(feasible) == len(samples)


def _cover(samples: list[tuple[dict[str, Any], ArchSpec | None, str]]) -> list[ArchSpec]:
    """A few sampled archs that together use every sampled (stage, mixer entry), depth, dim and knob value."""
    keys_of: dict[str, set[str]] = {}
    archs: dict[str, ArchSpec] = {}
    for params, arch, _ in samples:
        if arch is not None:
            archs[arch.arch_id] = arch
            keys = {f"s{i}={PATTERN_SEP.join(st.pattern)}" for i, st in enumerate(arch.stages)}
            # a knob value counts once whatever the stage (covering every stage x value would build ~20 archs)
            keys_of[arch.arch_id] = keys | {f"{k.split('.', 1)[1]}={v}" for k, v in params.items()}
    todo = set().union(*keys_of.values())
    picked: list[ArchSpec] = []
    while todo:
        best = max(keys_of, key=lambda aid: len(keys_of[aid] & todo))
        picked.append(archs[best])
        todo -= keys_of[best]
    return picked


@pytest.mark.parametrize("name", [p.stem for p in SPACES])
def test_sampled_archs_build_on_meta(name: str) -> None:
    """Every mixer entry of every stage and every sampled knob value is built (meta device) by some arch."""
    _needs_all_mixers()
    space = SearchSpace.load(REPO / "search_spaces" / f"{name}.yaml")
    archs = _cover(_sample_many(space, 150, seed=5))
    assert len(archs) <= 10
    import timm
    import torch

    for arch in archs:
        args = arch.to_model_args()
        with torch.device("meta"):
            model = timm.create_model("mixerformer", **args)
        cost = arch_cost(args)
        assert cost.params == sum(p.numel() for p in model.parameters()) > 0 and cost.flops > 0, arch.placement()


def test_tiny_space_arch_runs_and_meta_count_matches_real_model() -> None:
    import timm
    import torch

    import nas.models  # noqa: F401

    space = SearchSpace.load(REPO / "search_spaces" / "fashion_mnist_tiny.yaml")
    rng = random.Random(0)
    arch = space.sample(lambda name, choices: rng.choice(choices), num_classes=10)
    model = timm.create_model("mixerformer", **arch.to_model_args())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert arch_cost(arch.to_model_args()).params == sum(p.numel() for p in model.parameters())


def test_fixed_knob_that_differs_from_default_is_feasible() -> None:
    """mhsa's default head_dim 32 does not divide dim 16, but the space fixes head_dim 16: that must load."""
    raw = {
        "name": "fixed_knob",
        "input": {"img_size": 16, "in_chans": 1},
        "stem": {"kernel": 3, "stride": 2},
        "knobs": {"mhsa": {"head_dim": 16}},
        "stages": [{"depth": 1, "dim": 16, "mixers": ["dwconv", "mhsa"]}],
    }
    space = SearchSpace.from_dict(raw)
    arch = space.sample(lambda name, choices: "mhsa" if name == "s0.mixer" else choices[0], num_classes=4)
    assert arch.stages[0].knobs["mhsa"]["head_dim"] == 16
    raw["knobs"]["mhsa"]["head_dim"] = [16, 64]  # 64 can never divide 16
    with pytest.raises(InfeasibleArchError, match=r"stages\[0\]\.mixers\[1\] 'mhsa' with head_dim=64"):
        SearchSpace.from_dict(raw)


def test_only_real_choices_are_asked() -> None:
    space = SearchSpace.load(REPO / "search_spaces" / "fashion_mnist_tiny.yaml")
    asked: dict[str, list[Any]] = {}

    def last(name: str, choices: list[Any]) -> Any:
        asked[name] = list(choices)
        return choices[-1]

    arch = space.sample(last, num_classes=10)
    # stage 2's last entry is the block pattern [dwconv, key_only]: both mixers' knobs are asked, nobody else's
    assert arch.stages[2].pattern == ("dwconv", "key_only")
    assert asked == {
        "s0.mixer": ["dwconv", "key_only"],
        "s0.key_only.heads": [1, 2],
        "s0.key_only.mode": ["broadcast", "qgate"],
        "s1.mixer": ["dwconv", "mhsa", "ska", "key_only"],
        "s1.key_only.heads": [1, 2],
        "s1.key_only.mode": ["broadcast", "qgate"],
        "s2.mixer": ["dwconv", "mhsa", "cska", "manifold_key", "dwconv+key_only"],
        "s2.depth": [1, 2],
        "s2.dwconv.kernel_size": [3, 7],
        "s2.key_only.heads": [1, 2],
        "s2.key_only.mode": ["broadcast", "qgate"],
    }
    assert arch.stages[2].depth == 2 and arch.stages[2].knobs["dwconv"]["expansion"] == 2  # fixed, not asked


# ---------------------------------------------------------------------------------------------- arch ids
def _tiny_args(**stage2: Any) -> dict[str, Any]:
    return {
        "in_chans": 1,
        "num_classes": 10,
        "img_size": 28,
        "stem": {"kernel": 3, "stride": 2},
        "stages": [
            {"depth": 1, "dim": 16, "mixer": "dwconv"},
            {"depth": 1, "dim": 32, "mixer": "cska"},
            {"depth": 1, "dim": 64, "mixer": "mhsa", **stage2},
        ],
    }


def test_arch_id_stable_under_omitted_vs_explicit_defaults() -> None:
    _needs_all_mixers()
    base = ArchSpec.from_model_args(_tiny_args())
    explicit = _tiny_args(knobs={"mhsa": {"head_dim": 32, "qkv_bias": False}}, res_scale=1.0)
    explicit["stages"][0].update(mixer=["dwconv"], knobs={"dwconv": {"kernel_size": 7, "expansion": 2}})
    explicit["stages"][1]["knobs"] = {"cska": {"heads": 32 // 16, "kernel_size": 3, "scaled": True}}
    explicit["mlp_ratio"] = 4.0
    assert ArchSpec.from_model_args(explicit).arch_id == base.arch_id
    # knobs of a mixer the stage does not use are a mistake the user is told about (one contract: the model's)
    with pytest.raises(ConfigError, match=r"knobs\.dwconv: mixer 'dwconv' is not used by this stage"):
        ArchSpec.from_model_args(_tiny_args(knobs={"dwconv": {"kernel_size": 3}}))
    assert ArchSpec.from_model_args(_tiny_args(knobs={"mhsa": {"head_dim": 16}})).arch_id != base.arch_id
    # the resolved JSON round-trips to the same id
    assert ArchSpec.from_model_args(base.to_model_args()).arch_id == base.arch_id


def test_space_with_explicit_default_knob_gives_same_arch_ids() -> None:
    path = REPO / "search_spaces" / "fashion_mnist_tiny.yaml"
    raw = yaml.safe_load(path.read_text())
    explicit = copy.deepcopy(raw)
    explicit["knobs"]["mhsa"]["qkv_bias"] = False  # the default, written out
    explicit["stages"][0]["knobs"] = {"dwconv": {"kernel_size": [3, 7], "expansion": 2}}  # same as the global
    a, b = SearchSpace.from_dict(raw), SearchSpace.from_dict(explicit)
    for params, arch, _ in _sample_many(a, 40, seed=11):
        assert b.arch_from_params(params, num_classes=10).arch_id == arch.arch_id


BAD_ARGS = [
    ({"stages": [{"depth": 0, "dim": 8, "mixer": "dwconv"}]}, "model_args.stages[0].depth"),
    ({"stages": []}, "model_args.stages"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "attn"}]}, "model_args.stages[0].mixer"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": []}]}, "model_args.stages[0].mixer"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": ["dwconv", 3]}]}, "model_args.stages[0].mixer[1]"),
    ({"stages": [{"depth": 1, "dim": 32, "mixer": "mhsa", "knobs": {"mhsa": {"heads": 2}}}]}, "knobs.mhsa"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "dwconv", "knobs": {"dwconv": {"kernel_size": 4}}}]}, "kernel_size"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "dwconv", "knobs": {"conv": {}}}]}, "model_args.stages[0].knobs"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "dwconv"}], "depths": [1]}, "model_args.depths"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "dwconv"}], "img_size": "big"}, "model_args.img_size"),
    ({"stages": [{"depth": 1, "dim": 8, "mixer": "dwconv", "width": 3}]}, "model_args.stages[0].width"),
    ({"img_size": 4, "stages": [{"depth": 1, "dim": 32, "mixer": "ska", "knobs": {}}]}, "model_args.stages[0]"),
    (
        {
            "img_size": 16,
            "stem": {"kernel": 4, "stride": 4},
            "downsample": {"kernel": 4, "stride": 4},
            "stages": [{"depth": 1, "dim": 8, "mixer": "dwconv"}] * 3,
        },
        "model_args.stages[2]",
    ),
]


@pytest.mark.parametrize(("args", "field"), BAD_ARGS, ids=[f for _, f in BAD_ARGS])
def test_bad_model_args_name_the_field(args: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ArchSpec.from_model_args(args)
    msg = str(info.value)
    assert field in msg and "\n" not in msg, msg


# ---------------------------------------------------------------------------------------------- constraints
def _budget_space(**constraints: float) -> SearchSpace:
    return SearchSpace.from_dict(
        {
            "name": "budget",
            "input": {"img_size": 16, "in_chans": 1},
            "stem": {"kernel": 3, "stride": 2},
            "stages": [{"depth": 1, "dim": [8, 32], "mixers": ["dwconv"]}],
            "constraints": constraints,
        }
    )


def test_constraints_reject_over_budget_archs_with_a_reason() -> None:
    import timm

    import nas.models  # noqa: F401

    space = _budget_space()
    small = space.arch_from_params({"s0.dim": 8}, num_classes=4)
    big = space.arch_from_params({"s0.dim": 32}, num_classes=4)
    assert space.check_constraints(big) == []  # no budget, nothing to check
    n_small = sum(p.numel() for p in timm.create_model("mixerformer", **small.to_model_args()).parameters())
    n_big = arch_cost(big.to_model_args()).params
    assert n_small < n_big
    limited = _budget_space(max_params=(n_small + n_big) / 2)
    assert limited.check_constraints(small) == []
    (reason,) = limited.check_constraints(big)
    assert reason.startswith(f"params {n_big:,} > max_params")
    flops_big = arch_cost(big.to_model_args()).flops
    both = _budget_space(max_params=n_small, max_flops=flops_big - 1)
    reasons = both.check_constraints(big)
    assert len(reasons) == 2 and reasons[1].startswith(f"FLOPs {flops_big:,} > max_flops")
    assert both.check_constraints(small) == []


def _every_arch(space: SearchSpace, num_classes: int) -> list:
    """Every architecture of a (small) space: depth-first over the define-by-run decisions."""
    out, stack = [], [[]]
    while stack:
        prefix = stack.pop()
        taken: list = []

        def suggest(name: str, choices: list, prefix=prefix, taken=taken):
            i = len(taken)
            if i < len(prefix):
                taken.append(prefix[i])
            else:
                stack.extend([*taken, alt] for alt in choices[1:])
                taken.append(choices[0])
            return taken[-1]

        try:
            out.append(space.sample(suggest, num_classes))
        except ConfigError:
            continue  # an infeasible combination (e.g. heads that do not divide this width)
    return out


def test_cheapest_is_the_exact_minimum_over_every_architecture() -> None:
    space = SearchSpace.from_dict(
        {
            "name": "small",
            "input": {"img_size": 16, "in_chans": 3},
            "stem": {"kernel": 3, "stride": 2},
            "knobs": {"cska": {"heads": [2, 3]}, "dwconv": {"kernel_size": [3, 5], "expansion": [1, 2]}},
            "stages": [
                {"depth": [1, 2], "dim": [12, 24], "mixers": ["dwconv", "key_only"]},
                {"depth": [1, 3], "dim": [32, 48], "mixers": ["dwconv", "cska", ["mhsa", "dwconv"]],
                 "knobs": {"mhsa": {"head_dim": 16}}},
            ],
        }
    )  # fmt: skip
    archs = _every_arch(space, num_classes=5)
    assert len(archs) > 100 and len({a.arch_id for a in archs}) == len(archs)
    costs = [arch_cost(a.to_model_args()) for a in archs]
    low = space.cheapest(num_classes=5)
    assert low.params == min(c.params for c in costs)
    assert low.macs == min(c.macs for c in costs)
    assert min(costs, key=lambda c: c.params) != min(costs, key=lambda c: c.macs)  # two different minima


def test_check_reachable_accepts_the_boundary_and_refuses_below_it() -> None:
    space = SearchSpace.load(REPO / "search_spaces" / "fashion_mnist_tiny.yaml")
    low = space.cheapest(num_classes=10)
    raw = space.model_dump(mode="json")
    at = SearchSpace.from_dict({**raw, "constraints": {"max_params": low.params, "max_flops": low.flops}})
    at.check_reachable(10)
    below = SearchSpace.from_dict({**raw, "constraints": {"max_flops": low.flops - 1}}, where="sp.yaml")
    with pytest.raises(InfeasibleArchError, match=rf"sp.yaml: constraints.max_flops .* \({low.flops:,} FLOPs"):
        below.check_reachable(10)
