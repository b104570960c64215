"""``nas calibrate``: before a big search, how much proxy training ranks architectures like longer training does.

A small, diverse sample of the space (every mixer of every stage appears when the sample allows) is trained at the
study's proxy budget and at larger ones (more epochs, more of the data, both) up to ``factor`` times its compute.
Each budget's final accuracies are compared with the largest budget's (Kendall tau, Spearman rho), next to what
each budget cost. The largest budget is also trained with a second seed: its two seeds' tau is the *ceiling* (no
budget can be expected to rank like the reference better than the reference ranks like itself), and each budget's
tau against the mean of the two seeds is what decides: the cheapest budget at ``min(0.8, ceiling)`` or more is
recommended, as a ``train:`` block to paste into the study file. Each budget is a sub-study
``<study>.calibrate.e<E>f<F>`` (the second seed: ``....seed1``) in the study's storage (an interrupted calibration
resumes, a repeated one reuses what was trained); the summary is stored on the study itself (user attribute
``calibration``, created before the search if need be), where ``nas status`` shows it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from nas import layout, results
from nas.engine.config import StudyConfig, retraining_config
from nas.engine.progress import Progress
from nas.errors import ConfigError, NasError
from nas.space import SearchSpace
from nas.stats import rank_agreement
from nas.study_record import write

if TYPE_CHECKING:
    from nas.engine.executor import Executor

GOOD_TAU = 0.8
MIN_CEILING = 0.3  # below it the reference's own seeds barely agree: the bar stays at GOOD_TAU


def bar_for(ceiling: float | None) -> float:
    """What "ranks like the reference" means: Kendall tau against the reference's two-seed mean of at least
    ``min(GOOD_TAU, ceiling)`` — no budget can be asked to agree with the reference better than the reference agrees
    with itself — but ``GOOD_TAU`` when the ceiling is unknown or under ``MIN_CEILING`` (a reference whose seeds
    barely agree cannot lower the bar to anything)."""
    return GOOD_TAU if ceiling is None or ceiling < MIN_CEILING else min(GOOD_TAU, ceiling)


@dataclass
class Calibration:
    """Per budget (ordered by compute): epochs, fraction, relative compute, trial-seconds spent, tau and rho against
    the largest budget; and the recommendation."""

    archs: list[str]
    budgets: list[dict[str, Any]] = field(default_factory=list)
    recommended: dict[str, Any] = field(default_factory=dict)
    at: str = ""
    ceiling_tau: float | None = None  # Kendall tau of the reference budget's two seeds against each other
    bar: float = GOOD_TAU  # what "ranks like the reference" means: tau vs the two-seed mean >= min(0.8, ceiling)

    def table(self) -> str:
        """The calibration as a text table: one row per budget (compute, trial-seconds, tau and rho against the
        reference's first seed, tau against the mean of its two seeds), then the ceiling."""
        rows = ["budget (epochs x data)  compute  trial-seconds  Kendall tau  Spearman rho  tau vs 2-seed mean"]
        for b in self.budgets:
            tau = (
                ("target" if b.get("target") else "reference")
                if b["reference"]
                else (f"{b['tau']:.2f}" if b["tau"] is not None else "—")
            )
            rho = "" if b["reference"] or b["rho"] is None else f"{b['rho']:.2f}"
            mean = "" if b["reference"] or b.get("tau_mean") is None else f"{b['tau_mean']:.2f}"
            rows.append(f"{b['epochs']:>3} x {b['train_fraction']:<6g}           {b['compute']:>5g}x  "
                        f"{b['seconds']:>13,.0f}  {tau:>11}  {rho:>12}  {mean:>18}")  # fmt: skip
        if self.ceiling_tau is not None:
            rows.append(f"ceiling: two seeds of the reference agree at Kendall tau {self.ceiling_tau:.2f}; a budget "
                        f"ranks like the reference when its tau vs the 2-seed mean is >= {self.bar:.2f}")  # fmt: skip
            if self.ceiling_tau < MIN_CEILING:
                rows.append(f"the reference's own seeds barely agree (tau < {MIN_CEILING}): its ranking is mostly "
                            "seed noise; calibrate on more architectures (--n) before trusting any budget")  # fmt: skip
        return "\n".join(rows)


def budgets(epochs: int, fraction: float, factor: float) -> list[tuple[int, float]]:
    """The proxy budget and balanced multiples of it by powers of 2 in epochs and in data (neither grows more than
    twice the other), up to ``factor`` times its compute; the last (largest) is the reference."""
    powers = [2**k for k in range(8) if 2**k <= factor]
    out = {
        (epochs * a, round(min(1.0, fraction * b), 6))
        for a in powers
        for b in powers
        if a * b <= factor and a <= 2 * b and b <= 2 * a
    }
    return sorted(out, key=lambda eb: (eb[0] * eb[1], eb[1]))


def diverse_sample(space: SearchSpace, n: int, seed: int, num_classes: int) -> list[tuple[Any, dict[str, Any]]]:
    """``n`` distinct feasible architectures, picked greedily from random draws to cover each stage's mixers, each
    with the Optuna parameters the space asked to build it (what a sub-study enqueues)."""
    rng, pool, seen = random.Random(seed), [], set()
    for _ in range(40 * n):
        params: dict[str, Any] = {}

        def suggest(name: str, choices: list[Any], params: dict[str, Any] = params) -> Any:
            params[name] = rng.choice(choices)
            return params[name]

        try:
            arch = space.sample(suggest, num_classes)
        except NasError:
            continue
        if arch.arch_id not in seen and not space.check_constraints(arch):
            seen.add(arch.arch_id)
            pool.append((arch, params))
    chosen, covered = [], set()

    def stage_mixers(arch: Any) -> set[tuple[int, str]]:
        return {(i, m) for i, st in enumerate(arch.stages) for m in st.pattern}

    while pool and len(chosen) < n:
        best = max(pool, key=lambda ap: len(stage_mixers(ap[0]) - covered))
        pool.remove(best)
        chosen.append(best)
        covered |= stage_mixers(best[0])
    return chosen


def calibrate(
    path: str,
    n: int,
    factor: float,
    progress: Progress | None = None,
    executor_for: Callable[[StudyConfig], Executor] | None = None,
    target: tuple[int, float] | None = None,
    test_split: bool = False,
) -> Calibration:
    """``nas calibrate``: which proxy budget ranks architectures like a longer training — or like the training the
    user will run (``target``).

    Retrains ``n`` diverse architectures of the study's space at a ladder of budgets (the proxy's, up to ``factor``
    times it) in sub-studies of the same storage, and compares each budget's ranking with the reference: the largest
    of them, or the ``target`` when one is named (then every candidate up to ``factor`` is ranked against it).

    Args:
        path: the study file.
        n: architectures to retrain (at least 3).
        factor: the largest budget, in multiples of the proxy's (at least 2).
        progress: where the sub-studies report (default: the terminal).
        executor_for: ``executor_for(cfg)`` runs each budget's sub-study (default Ray Tune;
            :func:`nas.engine.replay.replay_executors` replays a table per budget).
        target: ``(epochs, train_fraction)`` of the training the user will run: the reference (two seeds) instead of
            the largest candidate.
        test_split: the target trains on every training image and validates on the dataset's test split
            (:func:`~nas.engine.config.retraining_config`).

    Returns:
        The :class:`Calibration`, also stored on the study (``calibration``).

    Raises:
        ConfigError: bad arguments (a target no larger than the proxy), an unreadable study file or dataset, fewer
            than 3 feasible architectures.
        StudyError: the storage cannot be opened."""
    from nas.engine.config import read_study_file
    from nas.engine.executor import prepare_dataset

    if n < 3:
        raise ConfigError("calibrate: --n must be at least 3 (a rank correlation needs a few architectures)")
    if factor < 2:
        raise ConfigError("calibrate: --factor must be at least 2 (the largest budget, in multiples of the proxy's)")
    cfg, space = read_study_file(path)
    num_classes = (
        executor_for(cfg).prepare(cfg, space, path) if executor_for else prepare_dataset(cfg, space, path)
    ).num_classes
    url = cfg.storage_url()
    sample = diverse_sample(space, n, cfg.seed, num_classes)
    archs = [a for a, _ in sample]
    if len(archs) < 3:
        raise ConfigError(f"{path}: the space holds fewer than 3 feasible architectures; nothing to calibrate")
    ladder = [(e, f, False) for e, f in budgets(cfg.train.epochs, cfg.train.train_fraction, factor)]
    proxy_cost = cfg.train.epochs * cfg.train.train_fraction
    if target is not None:
        if target[0] < 1 or not 0 < target[1] <= 1 or target[0] * target[1] <= proxy_cost * (1 + 1e-9):
            raise ConfigError(
                f"calibrate: the target ({target[0]} epochs x {target[1]:g} of the data) must train more than "
                f"the proxy's ({cfg.train.epochs} x {cfg.train.train_fraction:g}); give more epochs and/or more data"
            )
        ladder.append((target[0], round(target[1], 6), test_split))
    accs: dict[tuple[int, float, bool], dict[str, float]] = {}
    seconds: dict[tuple[int, float, bool], float] = {}
    train_at = functools.partial(_train_at, cfg, space, sample, progress, executor_for)
    for b in ladder:
        accs[b], seconds[b] = train_at(*b)
    ref = ladder[-1]
    second, second_s = train_at(*ref, seed_offset=1)  # the reference's own seed noise: the ceiling
    both = [a for a in accs[ref] if a in second]
    mean_ref = {a: (accs[ref][a] + second[a]) / 2 for a in both}
    out = Calibration(archs=[a.placement() for a in archs])
    out.at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.ceiling_tau = rank_agreement([accs[ref][a] for a in both], [second[a] for a in both])[0]
    out.bar = bar_for(out.ceiling_tau)
    for b in ladder:
        common = [a for a in accs[b] if a in accs[ref]]
        x, y = [accs[b][a] for a in common], [accs[ref][a] for a in common]
        tau, rho = rank_agreement(x, y)
        paired = [a for a in accs[b] if a in mean_ref]
        tau_mean = rank_agreement([accs[b][a] for a in paired], [mean_ref[a] for a in paired])[0]
        out.budgets.append({
            "epochs": b[0], "train_fraction": b[1], "compute": round(b[0] * b[1] / proxy_cost, 3),
            "seconds": seconds[b] + (second_s if b == ref else 0.0), "n": len(common), "reference": b == ref,
            "tau": tau, "rho": rho, "tau_mean": tau_mean, "target": target is not None and b == ref,
            "test_split": b[2],
        })  # fmt: skip
    ranks = "tau_mean" if out.ceiling_tau is not None else "tau"  # against the two-seed mean when it exists
    good = [b for b in out.budgets if b["reference"] or (b[ranks] is not None and b[ranks] >= out.bar)]
    pick = good[0]
    out.recommended = {"epochs": pick["epochs"], "train_fraction": pick["train_fraction"], "tau": pick[ranks],
                       "compute": pick["compute"], "is_proxy": pick["compute"] == 1,
                       "is_reference": pick["reference"]}  # fmt: skip
    _store(cfg, url, out)
    return out


def _train_at(
    cfg: StudyConfig,
    space: SearchSpace,
    sample: list[tuple[Any, dict[str, Any]]],
    progress: Progress | None,
    executor_for: Callable[[StudyConfig], Executor] | None,
    epochs: int,
    fraction: float,
    test_split: bool = False,
    seed_offset: int = 0,
) -> tuple[dict[str, float], float]:
    """Train the sample at one budget (and training seed; ``test_split``: on every training image, validated on the
    test split) in its sub-study: final accuracy by arch_id, and the trial-seconds it cost."""
    from nas.engine.lifecycle import enqueue_missing
    from nas.engine.run import run_config

    url = cfg.storage_url()
    tag = (
        f"{cfg.name}.calibrate.e{epochs}f{fraction:g}"
        + ".test" * test_split
        + f".seed{seed_offset}" * bool(seed_offset)
    )
    sub = retraining_config(cfg, tag, url, epochs, fraction, seed_offset, test_split=test_split)

    def plan(study: Any) -> int:
        return enqueue_missing(study, [(a.arch_id, params, {}) for a, params in sample])

    what = (f"calibrate {cfg.name} at {epochs} epochs x {fraction:g}" + ", test split" * test_split
            + f", seed +{seed_offset}" * bool(seed_offset))  # fmt: skip
    run_config(sub, space, what, progress=progress, plan=plan, executor=executor_for(sub) if executor_for else None)
    recs = results.records(results.open_study(sub.name, url))
    done = {r.arch_id: r for r in recs if r.state == "COMPLETE" and r.full_fidelity and r.reused_from is None}
    got = {a.arch_id: done[a.arch_id].values["accuracy"] for a, _ in sample if a.arch_id in done}
    return got, sum(done[a].duration or 0.0 for a in got)


def suggested_train(cfg_train: dict[str, Any], cal: Calibration) -> str:
    """The study file's ``train:`` block with the recommended budget."""
    train = {**cfg_train, "epochs": cal.recommended["epochs"], "train_fraction": cal.recommended["train_fraction"]}
    return "train: {" + ", ".join(f"{k}: {v}" for k, v in train.items() if v is not None) + "}"


def _store(cfg: StudyConfig, url: str, cal: Calibration) -> None:
    import optuna

    study = optuna.create_study(
        study_name=cfg.name, storage=layout.create_storage(url), directions=cfg.directions, load_if_exists=True
    )
    write(study, calibration=asdict(cal))
