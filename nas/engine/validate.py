"""``nas validate``: retrain the proxy front (and a few other COMPLETE trials) at a larger budget, then say how far
the proxy can be trusted: Kendall tau proxy-vs-validated, which front members survive, the validated front.

Each architecture is retrained with ``seeds`` training seeds (default 2; seed k is a replicate, ``train.seed + k``):
its validated accuracy is their mean, two seeds' tau against each other is the *ceiling* any proxy's tau is read
against (nas.trust), and front survival comes with its uncertainty — P(on the validated front) per architecture and
the 90 % range of the number of surviving proxy-front members, over resampled seeds and validation images
(nas.replicates).

The retraining is a sub-study ``<study>.validate`` in the same storage, run by the same machinery as a search
(Ray workers, driver, storage; no pruning, the architectures enqueued). Each validated trial carries the arch_id
of the trial it validates, so an interrupted validation resumes where it stopped: the architectures already
retrained are not trained again. The summary is stored on the original study (user attribute ``validation``),
where ``nas status``, the dashboard and ``nas export --validated`` find it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from nas import layout, pareto, results, trust
from nas.engine.config import StudyConfig, retraining_config
from nas.engine.progress import Progress
from nas.errors import ConfigError, StudyError
from nas.evaluation import PRIOR_SEED_SD
from nas.replicates import front_membership
from nas.space import SearchSpace
from nas.stats import rank_agreement
from nas.study_record import StudyRecord, write

if TYPE_CHECKING:
    from nas.engine.executor import Executor

SUFFIX = ".validate"
DRAWS = 1000  # resampled worlds behind P(front) and the survival range


@dataclass
class Validation:
    """What a validation found (stored as the original study's ``validation`` user attribute)."""

    budget: dict[str, Any]
    proxy_budget: dict[str, Any]
    pairs: list[dict[str, Any]] = field(default_factory=list)  # per architecture: trial, proxy_acc, validated_acc...
    tau: float | None = None
    rho: float | None = None
    seeds: int = 1  # training seeds per retrained architecture (validated_acc is their mean)
    ceiling_tau: float | None = None  # Kendall tau between two seeds of the retrained architectures
    survival: dict[str, Any] | None = None  # proxy-front survivors over resampled seeds and images: mean, lo, hi
    survivors: list[int] = field(default_factory=list)  # proxy-front trials still on the validated front
    lost: list[int] = field(default_factory=list)  # proxy-front trials the validated front drops
    validated_front: list[int] = field(default_factory=list)  # original trial numbers, by validated accuracy
    substudy: str = ""
    at: str = ""

    def line(self) -> str:
        """The validation in one line (tau, rho, front members that survived the retraining)."""
        return trust.validation_line(asdict(self))


def _budget(cfg: StudyConfig) -> dict[str, Any]:
    """A training budget as the validation summary stores it (``val_fraction`` null: the dataset's test split)."""
    return {"epochs": cfg.train.epochs, "train_fraction": cfg.train.train_fraction,
            "val_fraction": cfg.dataset.val_fraction}  # fmt: skip


def stored_config(study: Any) -> tuple[StudyConfig, SearchSpace]:
    """The study's own configuration and space, as the engine stored them."""
    rec = StudyRecord.of(study)
    if rec.config is None or rec.space is None:
        raise StudyError(f"study '{study.study_name}': no stored configuration (not written by `nas search`)")
    return StudyConfig.of_record(rec), SearchSpace.from_dict(rec.space, where="stored space")


def select(recs: list[results.TrialRecord], objs: list[Any], top: int, random_m: int, seed: int) -> list[Any]:
    """``top`` proxy-front members spread evenly along the front (its extremes, and the knee when it fits), plus
    ``random_m`` other COMPLETE architectures drawn at random."""
    full = results.front(recs, objs)  # sorted by the first objective
    front = full
    if len(full) > top:
        idx = sorted({round(i * (len(full) - 1) / max(1, top - 1)) for i in range(top)})
        if top >= 3:
            points = [[r.values[o.name] for o in objs] for r in full]
            knee = int(pareto.knee_point(points, [o.direction for o in objs]))
            if knee not in idx:  # the knee replaces the evenly spaced pick nearest to it
                idx[min(range(len(idx)), key=lambda j: abs(idx[j] - knee))] = knee
        front = [full[i] for i in sorted(set(idx))]
    on_front = {r.arch_id for r in full}
    others = [r for r in results.eligible(recs, objs) if r.arch_id not in on_front]
    random.Random(seed).shuffle(others)
    return front + others[:random_m]


def validation_config(
    cfg: StudyConfig, url: str, epochs: int | None, fraction: float | None, test_split: bool = False
) -> StudyConfig:
    """The sub-study configuration that retrains at a larger budget: ``epochs`` and ``fraction`` default to twice
    the proxy's (the data fraction capped at 1); every planned trial trained to the end, in the same storage ``url``
    (:func:`~nas.engine.config.retraining_config`); ``test_split``: on all the training images, validated on the
    dataset's test split (the target budget a user trains at)."""
    proxy = {k: v for k, v in _budget(cfg).items() if k != "val_fraction"}
    epochs = epochs or 2 * proxy["epochs"]
    fraction = fraction or min(1.0, 2 * proxy["train_fraction"])
    if epochs * fraction <= proxy["epochs"] * proxy["train_fraction"] * (1 + 1e-9):  # compute: fewer epochs on
        raise ConfigError(  # more data is a larger budget (the target of 3 epochs on all of it, vs 8 on 15 %)
            f"validate: --epochs {epochs} --fraction {fraction:g} is not a larger budget than the proxy's "
            f"({proxy['epochs']} epochs x {proxy['train_fraction']:g}); give more epochs and/or more data"
        )
    return retraining_config(cfg, cfg.name + SUFFIX, url, epochs, fraction, test_split=test_split)


def validate(
    name: str,
    storage: str | None,
    top: int,
    random_m: int,
    epochs: int | None,
    fraction: float | None,
    progress: Progress | None = None,
    seeds: int = 2,
    test_split: bool = False,
    executor_for: Callable[[StudyConfig], Executor] | None = None,
) -> Validation:
    """Retrain the chosen architectures with ``seeds`` training seeds each (resuming a validation that was
    interrupted) and store the summary; ``test_split``: at the target (all training images, the test split);
    ``executor_for(cfg)``: what runs the sub-study (default Ray Tune; :func:`nas.engine.replay.replay_executors`
    replays tables)."""
    from nas.engine.lifecycle import enqueue_missing
    from nas.engine.run import run_config

    if top < 1:
        raise ConfigError("validate: --top must be at least 1 (the number of front members to retrain)")
    if random_m < 0:
        raise ConfigError("validate: --random must be 0 or more")
    if seeds < 1:
        raise ConfigError("validate: --seeds must be at least 1 (2 or more also measure the ceiling)")
    study = results.open_study(name, storage)
    url = layout.url_of(study)
    cfg, space = stored_config(study)
    recs, objs = results.records(study), results.objectives_of(study)
    if "accuracy" not in [o.name for o in objs]:
        raise StudyError(f"study '{name}': validation compares accuracies, and this study has no accuracy objective")
    if not results.eligible(recs, objs):
        raise StudyError(f"study '{name}': no COMPLETE full-fidelity trial yet: nothing to validate")
    chosen = select(recs, objs, top, random_m, cfg.seed)
    sub = validation_config(cfg, url, epochs, fraction, test_split)

    def plan(sub_study: Any) -> int:
        wanted = [(r.arch_id, r.search_params, dict(validates=r.number, replicate=k or None))
                  for k in range(seeds) for r in chosen]  # fmt: skip
        return enqueue_missing(sub_study, wanted)

    executor = executor_for(sub) if executor_for else None
    run_config(sub, space, f"validate {name}", progress=progress or Progress(), plan=plan, executor=executor)
    outcome = summarize(study, results.open_study(sub.name, url), chosen, sub)
    write(study, validation=asdict(outcome))
    return outcome


def summarize(study: Any, sub_study: Any, chosen: list[Any], sub: StudyConfig) -> Validation:
    """Compare the proxy study with its retraining: rank agreement (tau, rho) of the retrained architectures and
    which members of the proxy front stay on the retrained front."""
    objs = results.objectives_of(study)
    proxy_front = {r.number for r in results.front(results.records(study), objs)}
    retrained = {r.arch_id: r for r in results.eligible(results.records(sub_study), results.objectives_of(sub_study))}
    out = Validation(budget=_budget(sub), proxy_budget=_budget(stored_config(study)[0]), substudy=sub.name)
    out.at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    kept = [(r, retrained[r.arch_id]) for r in chosen if r.arch_id in retrained]
    members = front_membership([v for _, v in kept], objs, PRIOR_SEED_SD, DRAWS) if kept else None
    for i, (r, v) in enumerate(kept):
        out.pairs.append({"trial": r.number, "validated_trial": v.number, "placement": r.placement,
                          "proxy_acc": r.values.get("accuracy"), "validated_acc": v.values.get("accuracy"),
                          "seeds": v.seeds, "seed_accs": v.seed_values, "values": v.values,
                          "p_validated_front": float(members[:, i].mean()),
                          "on_proxy_front": r.number in proxy_front})  # fmt: skip
    out.seeds = min((v.seeds for _, v in kept), default=1)
    out.tau, out.rho = rank_agreement([x["proxy_acc"] for x in out.pairs], [x["validated_acc"] for x in out.pairs])
    two = [x["seed_accs"][:2] for x in out.pairs if len(x["seed_accs"]) >= 2]
    out.ceiling_tau = rank_agreement([a for a, _ in two], [b for _, b in two])[0] if len(two) >= 3 else None
    on = [i for i, x in enumerate(out.pairs) if x["on_proxy_front"]]
    if on and members is not None:
        counts = members[:, on].sum(1)
        out.survival = {"mean": float(counts.mean()), "lo": int(np.quantile(counts, 0.05)),
                        "hi": int(np.quantile(counts, 0.95)), "of": len(on)}  # fmt: skip
    points = [[x["values"][o.name] for o in objs] for x in out.pairs]
    front = [out.pairs[i] for i in pareto.pareto_front(points, [o.direction for o in objs])] if points else []
    out.validated_front = [x["trial"] for x in sorted(front, key=lambda x: -x["validated_acc"])]
    out.survivors = [x["trial"] for x in out.pairs if x["on_proxy_front"] and x["trial"] in out.validated_front]
    out.lost = [x["trial"] for x in out.pairs if x["on_proxy_front"] and x["trial"] not in out.validated_front]
    return out
