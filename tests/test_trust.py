"""Trusting the answer: the placement report finds a planted effect with the right sign; validation's front survival
on hand-made studies; the live view; calibration's budget ladder; one-line refusals."""

from __future__ import annotations

import io
import random
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console

from nas import report, results, trust
from nas.engine.calibrate import budgets
from nas.engine.config import StudyConfig
from nas.engine.validate import stored_config, validate, validation_config
from nas.engine.validate import summarize as summarize_validation
from nas.errors import ConfigError, StudyError
from nas.evaluation import accuracy_interval
from trainers import bitmap

OBJECTIVES = [{"name": "accuracy", "direction": "maximize"}, {"name": "throughput", "direction": "maximize"}]
MIXERS = ["dwconv", "mhsa", "ska", "key_only"]
SPACE = {"name": "s", "input": {"img_size": 28, "in_chans": 1},
         "stages": [{"depth": 1, "dim": 16, "mixers": ["dwconv"]}]}  # fmt: skip


def _trial(number_attrs: dict, values: list[float]) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.COMPLETE, values=values, user_attrs={"full_fidelity": True, **number_attrs})


def _synthetic(storage: str, name: str, n: int = 80, seed: int = 0) -> optuna.Study:
    """Accuracy 0.80 + 0.04 when stage 1 uses ska (the planted effect), noise 0.01; throughput 5000 x 0.6 when
    stage 2 uses mhsa (a planted slowdown), noise 3 %."""
    rng = random.Random(seed)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "maximize"])
    study.set_user_attr("objectives", OBJECTIVES)
    for i in range(n):
        mixers = [rng.choice(MIXERS) for _ in range(3)]
        acc = 0.80 + (0.04 if mixers[1] == "ska" else 0.0) + rng.gauss(0, 0.01)
        tp = 5000 * (0.6 if mixers[2] == "mhsa" else 1.0) * rng.uniform(0.97, 1.03)
        arch = {"stages": [{"mixer": m} for m in mixers]}
        study.add_trial(_trial({"arch": arch, "arch_id": f"a{i}", "placement": "·".join(mixers)}, [acc, tp]))
    return study


def test_report_finds_the_planted_effects_with_the_right_sign(tmp_path: Path) -> None:
    study = _synthetic(f"sqlite:///{tmp_path / 'r.db'}", "planted")
    fx = {e.objective: e for e in report.effects(results.eligible(results.records(study), results.objectives_of(study)),
                                                 results.objectives_of(study))}  # fmt: skip
    ska1 = next(x for x in fx["accuracy"].effects if x.stage == 1 and x.mixer == "ska")
    assert ska1.low > 0 and 2.0 < ska1.estimate < 4.5  # +4 pp vs the others' 0: +3 pp against the stage average
    mhsa2 = next(x for x in fx["throughput"].effects if x.stage == 2 and x.mixer == "mhsa")
    assert mhsa2.high < 0 and -40 < mhsa2.estimate < -20  # 0.6x against an average of 0.9x: -33 %
    for x in fx["accuracy"].effects:  # no invented effect elsewhere: every other interval covers 0 or is tiny
        if (x.stage, x.mixer) != (1, "ska") and x.stage != 1:
            assert x.low < 0.6 and x.high > -0.6, x
    text = report.build(study)
    assert "| 1 | `ska` |" in text and "*" in text.split("| 1 | `ska` |")[1].split("\n")[0]
    assert "stage 1: `ska`" in text  # the best mixer at stage 1 for accuracy
    assert "<table" in report.to_html(text) and "<h2>" in report.to_html(text)


@pytest.mark.parametrize(("second", "verdict"), [(895, "inside the noise"), (850, "a difference the images settle")])
def test_report_front_carries_intervals_and_says_whether_the_top_two_differ(
    tmp_path: Path, second: int, verdict: str
) -> None:
    """Four architectures evaluated on the same 1,000 images (hand-made bitmaps): the front's accuracies carry their
    Wilson intervals, and the two most accurate are compared paired (+0.5 pt is noise there, +5 pt is not)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", directions=["maximize", "maximize"])
    study.set_user_attr("objectives", OBJECTIVES)
    for i, (right, tp) in enumerate([(900, 1000.0), (second, 2000.0), (800, 5000.0), (700, 100.0)]):
        shift = 30 if i == 1 else 0  # trial 1 gets other images right than trial 0, as two real models do
        bits = [shift <= k < shift + right for k in range(1000)]
        attrs = {"arch": {"stages": [{"mixer": MIXERS[i]}]}, "arch_id": f"a{i}", "placement": MIXERS[i],
                 "val_correct": bitmap.pack(bits), "val_set": "same-images"}  # fmt: skip
        study.add_trial(_trial(attrs, [right / 1000, tp]))
    text = report.build(study)
    lo, hi = accuracy_interval(900, 1000)
    assert f"| 0 | `dwconv` | 0.9 [{lo:.4g}, {hi:.4g}] | 1000 |" in text
    assert f"trial 0 minus the next, trial 1, paired on the same images: +{(900 - second) / 10:.2f} pt" in text
    assert verdict in text


def test_report_on_too_few_trials_says_so(tmp_path: Path) -> None:
    study = _synthetic(f"sqlite:///{tmp_path / 'r.db'}", "few", n=2)
    assert "nothing to report yet" in report.build(study)
    saturated = _synthetic(f"sqlite:///{tmp_path / 'r.db'}", "seven", n=7)  # 10 free effects, 7 trials
    assert "Few trials for this model" in report.build(saturated)
    assert "Few trials for this model" not in report.build(_synthetic(f"sqlite:///{tmp_path / 'r.db'}", "many"))


def _validation_pair(tmp_path: Path) -> tuple[optuna.Study, optuna.Study, list]:
    """A proxy study whose front is trials 0, 1, 2 and a validation sub-study that swaps two accuracies."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    main = optuna.create_study(study_name="main", storage=url, directions=["maximize", "maximize"])
    sub = optuna.create_study(study_name="main.validate", storage=url, directions=["maximize", "maximize"])
    for s in (main, sub):
        s.set_user_attr("objectives", OBJECTIVES)
    proxy = [(0.90, 1000.0), (0.85, 2000.0), (0.80, 3000.0), (0.70, 1500.0)]  # 3 is dominated by 1
    validated = [(0.91, 1000.0), (0.80, 2000.0), (0.88, 3000.0), (0.75, 1500.0)]  # 1 now dominated by 2
    for i, (p, v) in enumerate(zip(proxy, validated, strict=True)):
        attrs = {"arch": {"stages": []}, "arch_id": f"a{i}", "placement": f"p{i}"}
        main.add_trial(_trial(attrs, list(p)))
        sub.add_trial(_trial({**attrs, "validates": i}, list(v)))
    main.set_user_attr(
        "config",
        StudyConfig.model_validate(
            {"name": "main", "space": "s.yaml", "train": {"epochs": 3, "train_fraction": 0.1}}
        ).model_dump(mode="json"),
    )
    main.set_user_attr("space", SPACE)
    return main, sub, results.records(main)


def test_front_survival_on_a_hand_made_study(tmp_path: Path) -> None:
    main, sub, recs = _validation_pair(tmp_path)
    cfg, _ = stored_config(main)
    out = summarize_validation(main, sub, recs, validation_config(cfg, "sqlite:///x.db", None, None))
    assert out.tau == pytest.approx(2 / 3)  # 6 pairs, one discordant (trials 1 and 2): (5 - 1) / 6
    assert out.survivors == [0, 2] and out.lost == [1]
    assert out.validated_front == [0, 2]
    assert out.budget == {"epochs": 6, "train_fraction": 0.2, "val_fraction": None}
    assert "2/3 proxy-front members stay" in out.line()


def test_status_warns_when_the_proxy_ranks_unlike_longer_training(tmp_path: Path) -> None:
    main, _, _ = _validation_pair(tmp_path)
    budget = {"epochs": 6, "train_fraction": 0.2}
    main.set_user_attr("validation", {"at": "2026-11-30T10:00:00", "pairs": [{}] * 4, "budget": budget,
                                      "tau": 0.33, "survivors": [0], "lost": [1, 2]})  # fmt: skip
    lines = trust.trust_lines(main)
    assert "Kendall tau proxy vs validated 0.33" in lines[0] and lines[1].startswith("warning: the proxy ranks unlike")
    main.set_user_attr("validation", {**main.user_attrs["validation"], "tau": 0.9})
    assert len(trust.trust_lines(main)) == 1


def test_validate_refuses_bad_requests_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--top must be at least 1"):
        validate("main", None, 0, 0, None, None)
    with pytest.raises(StudyError, match="unknown study 'nope'"):
        validate("nope", None, 3, 0, None, None)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    empty = optuna.create_study(study_name="empty", storage=url, directions=["maximize", "maximize"])
    empty.set_user_attr("objectives", OBJECTIVES)
    empty.set_user_attr("config", {"name": "empty", "space": "x.yaml"})
    empty.set_user_attr("space", SPACE)
    with pytest.raises(StudyError, match="no COMPLETE full-fidelity trial yet"):
        validate("empty", url, 3, 0, None, None)
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["empty"]  # nothing written
    main, sub, _ = _validation_pair(tmp_path)  # a study with COMPLETE trials whose data folder has gone
    gone = {"name": "imagefolder", "root": str(tmp_path / "moved-away")}
    main.set_user_attr("config", {**main.user_attrs["config"], "dataset": gone})
    url = f"sqlite:///{tmp_path / 'v.db'}"
    with pytest.raises(ConfigError, match="moved-away"):
        validate("main", url, 3, 0, None, None)
    assert "validation" not in optuna.load_study(study_name="main", storage=url).user_attrs
    assert len(optuna.load_study(study_name="main.validate", storage=url).trials) == len(sub.trials)  # unchanged


def test_a_budget_smaller_than_the_proxys_is_refused() -> None:
    cfg = StudyConfig.model_validate({"name": "x", "space": "s.yaml", "train": {"epochs": 4, "train_fraction": 0.2}})
    with pytest.raises(ConfigError, match="not a larger budget than the proxy's"):
        validation_config(cfg, "sqlite:///x.db", 2, 0.3)  # fewer epochs, more data, less compute (0.6 < 0.8)
    with pytest.raises(ConfigError, match="not a larger budget"):
        validation_config(cfg, "sqlite:///x.db", 4, 0.2)
    assert validation_config(cfg, "sqlite:///x.db", 2, 0.5).train.epochs == 2  # fewer epochs, more compute: larger
    assert validation_config(cfg, "sqlite:///x.db", None, None).train.epochs == 8


def test_calibration_budgets_are_balanced_multiples_of_the_proxy() -> None:
    assert budgets(3, 0.1, 4) == [(3, 0.1), (6, 0.1), (3, 0.2), (6, 0.2)]
    assert budgets(3, 0.5, 4) == [(3, 0.5), (6, 0.5), (3, 1.0), (6, 1.0)]  # data capped at all of it
    assert budgets(5, 1.0, 2) == [(5, 1.0), (10, 1.0)]


def test_live_view_shows_running_trials_the_front_and_an_eta() -> None:
    from nas.engine.progress import Progress

    buf = io.StringIO()
    p = Progress(console=Console(file=buf, force_terminal=True, width=140))
    assert p.live_wanted
    p.budget, p.concurrent, p.objectives = 4, 2, ["accuracy", "throughput"]
    p.event("start", {"number": 0, "placement": "dwconv·mhsa", "params": 1000})
    p.event("epoch", {"number": 0, "epoch": 1, "val_acc": 0.61, "train_loss": 1.0, "images_per_s": 5.0})
    p.event("complete", {"number": 0, "values": [0.7, 3000.0], "wall_time_s": 60.0})
    p.event("start", {"number": 1, "placement": "ska·ska", "params": 1000})
    Console(file=buf, width=140).print(p.render())
    text = buf.getvalue()
    assert "ska·ska" in text and "dwconv·mhsa" in text and "ETA 1m30s" in text  # 3 left x 60 s / 2 at once
    plain = io.StringIO()
    q = Progress(console=Console(file=plain, width=140))  # not a terminal: one line per event
    assert not q.live_wanted
    q.event("start", {"number": 3, "placement": "dwconv·mhsa", "params": 1000})
    assert "trial   3 start" in plain.getvalue()


def test_sub_studies_live_in_their_parents_storage_and_folder() -> None:
    from nas import layout

    assert (
        layout.default_storage_url("st.validate") == layout.default_storage_url("st") == "sqlite:///studies/st/study.db"
    )
    assert layout.study_dir("st.calibrate.e6f0.2") == Path("studies/st/st.calibrate.e6f0.2")
    assert layout.parent_study("v1.2.calibrate.e3f1") == "v1.2"
    for name in ("st", "st.validated", "st.calibrate", "st.calibrate.eXf1"):
        assert layout.parent_study(name) is None and layout.study_dir(name) == Path("studies") / name


def test_the_warning_reads_the_proxys_tau_against_the_ceiling() -> None:
    """Two seeds of the longer training agree at tau 0.40: a proxy at 0.35 ranks about as well as anything can
    (no warning), one at 0.20 is half the ceiling (warning, with both numbers); without a ceiling, tau < 0.6 warns."""
    assert trust.trust_warning(0.35, 0.40) is None
    w = trust.trust_warning(0.20, 0.40)
    assert w is not None and "Kendall tau 0.20, 0.50 of the ceiling 0.40" in w
    assert trust.trust_warning(0.35) is not None and trust.trust_warning(0.7) is None
    assert trust.trust_warning(None, 0.4) is None


def test_validation_with_two_seeds_reads_means_a_ceiling_and_survival_with_its_range(tmp_path: Path) -> None:
    """Each architecture retrained with two seeds (the second a replicate): the validated accuracy is their mean,
    two seeds' tau is the ceiling, and survival comes with P(front) per pair and a 90 % range of survivors."""
    main, sub, recs = _validation_pair(tmp_path)
    second = [(0.89, 1000.0), (0.87, 2000.0), (0.86, 3000.0), (0.74, 1500.0)]  # seed 1 swaps the order of 1 and 2
    for i, v in enumerate(second):
        attrs = {"arch": {"stages": []}, "arch_id": f"a{i}", "placement": f"p{i}", "validates": i, "replicate": 1}
        sub.add_trial(_trial(attrs, list(v)))
    cfg, _ = stored_config(main)
    out = summarize_validation(main, sub, recs, validation_config(cfg, "sqlite:///x.db", None, None))
    means = {p["trial"]: p["validated_acc"] for p in out.pairs}
    assert means == pytest.approx({0: 0.90, 1: 0.835, 2: 0.87, 3: 0.745})
    assert out.seeds == 2 and all(len(p["seed_accs"]) == 2 for p in out.pairs)
    # seed 0: 0.91, 0.80, 0.88, 0.75; seed 1: 0.89, 0.87, 0.86, 0.74 -> 6 pairs, one discordant (1 vs 2)
    assert out.ceiling_tau == pytest.approx(2 / 3)
    assert out.survivors == [0, 2] and out.lost == [1]
    s = out.survival
    assert s["of"] == 3 and 1 <= s["lo"] <= s["hi"] <= 3 and 1 <= s["mean"] <= 3
    assert all(0.0 <= p["p_validated_front"] <= 1.0 for p in out.pairs)
    line = out.line()
    assert "2 seeds each" in line and "(ceiling: seed vs seed 0.67)" in line and "90 % range" in line


def test_report_effects_bootstrap_over_seeds_as_well_as_trials() -> None:
    """The same architectures with the same mean accuracies: when their two seeds agree, the effect of `ska` at
    stage 1 is settled; when the seeds are 4 points apart (a mean known only to about ±2 points), the same effect's
    interval is wider and covers 0 — inside the noise."""
    from nas.replicates import merge
    from nas.trial_record import TrialRecord

    rng = random.Random(1)
    plans = [[rng.choice(MIXERS) for _ in range(3)] for _ in range(40)]

    def study(spread: float) -> list[TrialRecord]:
        recs = []
        for i, mixers in enumerate(plans):
            mean = 0.80 + (0.006 if mixers[1] == "ska" else 0.0) + rng.gauss(0, 0.001)
            arch = {"stages": [{"mixer": m} for m in mixers]}
            for k, acc in enumerate((mean - spread / 2, mean + spread / 2)):
                recs.append(TrialRecord(number=2 * i + k, state="COMPLETE", arch=arch, arch_id=f"a{i}",
                                        values={"accuracy": acc, "throughput": 1000.0}, full_fidelity=True,
                                        replicate=k or None))  # fmt: skip
        return merge(recs)

    objs = [results.Objective("accuracy", "maximize")]

    def ska1(recs: list[TrialRecord]) -> report.Effect:
        (fx,) = report.effects(recs, objs)
        return next(e for e in fx.effects if e.stage == 1 and e.mixer == "ska")

    tight, loose = ska1(study(0.0)), ska1(study(0.04))
    assert tight.low > 0 and (loose.high - loose.low) > 2 * (tight.high - tight.low) and loose.low < 0
    assert tight.estimate == pytest.approx(loose.estimate, abs=0.2)


@pytest.mark.parametrize(("ceiling", "bar"), [(None, 0.8), (0.95, 0.8), (0.45, 0.45), (0.29, 0.8), (-0.33, 0.8)])
def test_calibration_bar_is_the_ceiling_but_never_below_what_a_noisy_reference_allows(ceiling, bar) -> None:
    from nas.engine.calibrate import bar_for

    assert bar_for(ceiling) == bar


def test_a_target_validation_trains_on_every_image_and_validates_on_the_test_split() -> None:
    """``nas validate --test-split``: the proxy's held-out images go back into training and the dataset's test split
    validates; the one-line summary says so; without it the proxy's validation images stay."""
    from nas.trust import validation_line

    cfg = StudyConfig.model_validate({"name": "x", "space": "s.yaml", "dataset": {"val_fraction": 0.05},
                                      "train": {"epochs": 8, "train_fraction": 0.15}})  # fmt: skip
    sub = validation_config(cfg, "sqlite:///x.db", 3, 1.0, test_split=True)
    assert sub.dataset.val_fraction is None and sub.train.train_fraction == 1.0 and sub.train.epochs == 3
    assert sub.dataset.name == cfg.dataset.name and sub.train.lr == cfg.train.lr
    assert validation_config(cfg, "sqlite:///x.db", 16, 0.3).dataset.val_fraction == 0.05
    val = {"at": "2026-12-07T20:00", "pairs": [], "survivors": [], "lost": [], "seeds": 2,
           "budget": {"epochs": 3, "train_fraction": 1.0, "val_fraction": None}}  # fmt: skip
    assert "at 3 epochs x 1 on the test split, 2 seeds each" in validation_line(val)
    older = {**val, "budget": {"epochs": 3, "train_fraction": 1.0}}  # stored before the field existed
    assert "test split" not in validation_line(older)


def test_the_validation_figure_says_where_it_validated() -> None:
    from types import SimpleNamespace

    from nas.dashboard import validation_figure

    pair = {"trial": 0, "placement": "p", "proxy_acc": 0.8, "validated_acc": 0.85, "on_proxy_front": True}
    val = {"pairs": [pair], "tau": None, "budget": {"epochs": 3, "train_fraction": 1.0, "val_fraction": None}}
    title = validation_figure(SimpleNamespace(user_attrs={"validation": val})).layout.title.text
    assert "validated at 3 epochs x 1 of the data, on the test split" in title
    held = {**val, "budget": {"epochs": 3, "train_fraction": 1.0, "val_fraction": 0.05}}
    assert "test split" not in validation_figure(SimpleNamespace(user_attrs={"validation": held})).layout.title.text


@pytest.mark.parametrize(
    ("proxy", "validated", "verdict"),
    [((1.0, 0.5, 1.5), (0.8, 0.2, 1.4), "holds"), ((1.0, 0.5, 1.5), (-0.8, -1.4, -0.2), "reversed"),
     ((0.3, -0.5, 1.1), (-0.8, -1.4, -0.2), "appears there"), ((1.0, 0.5, 1.5), (0.3, -0.4, 1.0), "gone there"),
     ((0.3, -0.5, 1.1), (0.2, -0.4, 1.0), "inside the noise at both"), ((1.0, 0.5, 1.5), None, "not validated")],
)  # fmt: skip
def test_a_proxy_effect_holds_or_not_at_the_validation_budget(proxy, validated, verdict) -> None:
    """Issue 28: the report's verdict per stage and mixer, from the two effects' estimates and 95 % intervals."""
    p = report.Effect(1, "mhsa", 10, *proxy)
    v = None if validated is None else report.Effect(1, "mhsa", 4, *validated)
    assert report.transfer_verdict(p, v) == verdict
