"""The ``nas`` command line (typer). Errors a user can cause print one line and exit with code 2.

Commands: ``search`` (run or continue a study), ``show`` (per-stage table of an architecture), ``bench`` (the
benchmarks), and — from nas.cli_study — ``studies``, ``status``, ``pareto``, ``dashboard``, ``export``. Every
command is a module-level function; heavy libraries (torch, timm, Ray, Optuna) are imported inside the commands
that use them, so ``nas --help``, ``nas studies``, ``nas status`` and ``nas pareto`` start in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

import typer

from nas.cli_study import STORAGE_HELP, cli_errors, register
from nas.errors import ConfigError

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
REPLAY_HELP = (
    "tabulated benchmarks (benchmarks/tables/*.json), one per budget the sub-studies train at: their trials come from "
    "the table whose training is theirs, in simulated time (repeat the option)"
)


def _executors(tables: list[Path] | None):
    """``executor_for`` of the sub-study commands: None (Ray Tune), or replaying ``tables``."""
    if not tables:
        return None
    from nas.engine.replay import Table, replay_executors

    return replay_executors([Table.load(t) for t in tables])


def calibrate(
    study_file: Path = typer.Argument(..., help="a studies/*.yaml file"),
    n: int = typer.Option(8, "--n", help="architectures to train at every budget"),
    factor: float = typer.Option(4, "--factor", help="the largest budget, in multiples of the proxy's compute"),
    plain: bool = typer.Option(False, "--plain", help="one line per event (no live view)"),
    replay: list[Path] = typer.Option(None, "--replay", help=REPLAY_HELP),
    target_epochs: int = typer.Option(
        None, "--target-epochs", help="rank every candidate against the training you will run: its epochs"
    ),
    target_fraction: float = typer.Option(1.0, "--target-fraction", help="... and its share of the training data"),
    test_split: bool = typer.Option(
        False, "--test-split", help="... trained on every training image, validated on the dataset's test split"
    ),
) -> None:
    """Before a big search: does the proxy budget rank architectures like longer training (or like the training you
    will run, --target-epochs)? Recommends a budget.

    Example: nas calibrate studies/fashion_mnist_tiny.yaml --n 6
    Example (against the target): nas calibrate studies/fashion_mnist_tiny.yaml --target-epochs 30 --test-split
    """
    from nas.engine.calibrate import calibrate as run_calibration
    from nas.engine.calibrate import suggested_train
    from nas.engine.config import read_study_file
    from nas.engine.progress import Progress

    cfg, _ = read_study_file(study_file)
    target = (target_epochs, target_fraction) if target_epochs is not None else None
    if target is None and test_split:
        raise ConfigError("calibrate: --test-split belongs to a target; give --target-epochs (and --target-fraction)")
    cal = run_calibration(str(study_file), n, factor, Progress(live=not plain), _executors(replay), target, test_split)
    typer.echo(f"calibration of '{cfg.name}' on {len(cal.archs)} architectures:")
    typer.echo(cal.table())
    rec = cal.recommended
    if rec["is_proxy"]:
        typer.echo(
            f"the proxy budget already ranks like {'the target' if target else 'the largest one'} (Kendall tau "
            f"{rec['tau']:.2f} >= {cal.bar:.2f}): "
            "keep it"
        )
    elif rec.get("is_reference") and target is not None:
        typer.echo(
            f"no candidate up to {factor:g}x the proxy's compute ranks like the target (Kendall tau >= {cal.bar:.2f}):"
            " the proxy's ranking does not carry to the training you will run; try --factor "
            f"{2 * factor:g}, or validate the front at the target (nas validate --epochs {target[0]} --fraction "
            f"{target[1]:g}" + " --test-split" * test_split + ")"
        )
    else:
        if rec.get("is_reference"):
            proxy = cal.budgets[0].get("tau_mean", cal.budgets[0]["tau"])
            proxy_tau = "n/a" if proxy is None else f"{proxy:.2f}"
            cheapest = (
                f"no cheaper budget reached Kendall tau {cal.bar:.2f} (the proxy: {proxy_tau}): the largest tried, "
            )
            cheapest += f"{rec['compute']:g}x the proxy's compute; --factor {2 * factor:g} tries larger ones"
        else:
            cheapest = f"cheapest with Kendall tau >= {cal.bar:.2f}, {rec['compute']:g}x the proxy's compute"
        typer.echo(f"recommended ({cheapest}); paste into {study_file}:")
        typer.echo("  " + suggested_train(cfg.train.model_dump(mode="json", exclude_defaults=True), cal))


def validate(
    study: str = typer.Argument(..., help="study name"),
    top: int = typer.Option(5, "--top", help="front members to retrain (spread along the front, knee included)"),
    random_m: int = typer.Option(2, "--random", help="other COMPLETE architectures to retrain"),
    epochs: int = typer.Option(None, "--epochs", help="validation epochs (default: twice the proxy's)"),
    fraction: float = typer.Option(None, "--fraction", help="validation data fraction (default: twice the proxy's)"),
    seeds: int = typer.Option(2, "--seeds", help="training seeds per retrained architecture (2: the ceiling)"),
    test_split: bool = typer.Option(
        False,
        "--test-split",
        help="validate on the dataset's own test split, the proxy's held-out images back in training: the target "
        "you will train at (e.g. --epochs 30 --fraction 1 --test-split)",
    ),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    plain: bool = typer.Option(False, "--plain", help="one line per event (no live view)"),
    replay: list[Path] = typer.Option(None, "--replay", help=REPLAY_HELP),
) -> None:
    """After a search: retrain the front at a larger budget with several seeds; how far can the proxy be trusted?
    Resumable.

    Example: nas validate fashion_mnist_tiny --top 3 --random 2
    Example (the target you will train at): nas validate fashion_mnist_tiny --epochs 30 --fraction 1 --test-split
    """
    from nas import trust
    from nas.engine.progress import Progress
    from nas.engine.validate import validate as run_validation

    v = run_validation(study, storage, top, random_m, epochs, fraction, Progress(live=not plain), seeds, test_split,
                       _executors(replay))  # fmt: skip
    typer.echo(v.line())
    for p in v.pairs:
        mark = "front" if p["on_proxy_front"] else "     "
        p_front = p.get("p_validated_front")
        typer.echo(f"  trial {p['trial']:>4} {mark}  proxy {p['proxy_acc']:.4f} -> validated {p['validated_acc']:.4f}"
                   f" ({p.get('seeds', 1)} seeds" + (f", P(front) {p_front:.2f})" if p_front is not None else ")")
                   + f"  {p['placement']}")  # fmt: skip
    typer.echo(f"validated front (trials): {v.validated_front}; dropped from the proxy front: {v.lost or 'none'}")
    warning = trust.trust_warning(v.tau, v.ceiling_tau)
    if warning:
        typer.echo(warning)


def report(
    study: str = typer.Argument(..., help="study name"),
    out: Path = typer.Option(None, "--out", help="Markdown file (default studies/STUDY/report.md)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """The placement report: each mixer's effect per stage and objective (with intervals), the front, the knee.

    Example: nas report fashion_mnist_tiny
    """
    from nas import layout, results
    from nas.report import build

    text = build(results.open_study(study, storage))
    path = out or layout.study_dir(study) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {path}")


def search(
    study_file: Path = typer.Argument(..., help="a studies/*.yaml file"),
    n_trials: int = typer.Option(None, "--n-trials", "-n", help="trials this run adds (overrides budget.n_trials)"),
    address: str = typer.Option(None, "--address", help="join this Ray cluster (e.g. 127.0.0.1:6379)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    max_concurrent: int = typer.Option(None, "--max-concurrent", help="trials running at once"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the summary"),
    plain: bool = typer.Option(False, "--plain", help="one line per event even in a terminal (no live view)"),
    replay: Path = typer.Option(
        None,
        "--replay",
        help="a tabulated benchmark (benchmarks/tables/*.json): trials come from it, in simulated time",
    ),
    pool: int = typer.Option(
        None, "--pool", min=1, help="train in this many local processes instead of Ray (a machine without Ray)"
    ),
) -> None:
    """Run a study, or continue it: running the same command again adds trials to the same study.

    Example: nas search studies/fashion_mnist_tiny.yaml --n-trials 4
    """
    from nas.engine.progress import Progress
    from nas.engine.run import run_study

    overrides = {
        k: v
        for k, v in {
            "budget.n_trials": n_trials,
            "ray.address": address,
            "storage": storage,
            "budget.max_concurrent": max_concurrent,
        }.items()
        if v is not None
    }
    if replay is not None and pool is not None:
        raise ConfigError("search: --replay and --pool both say where trials run; give one")
    if pool is not None and address is not None:
        raise ConfigError("search: --pool trains on this machine without Ray; drop --address (a Ray cluster)")
    run_study(study_file, overrides, progress=Progress(quiet=quiet, live=not plain), replay=replay, pool=pool)


def show(
    arch: Path = typer.Argument(None, help="a JSON file with model_args (or an exported config.json)"),
    study: str = typer.Option(None, "--study", help="study name, with --trial"),
    trial: int = typer.Option(None, "--trial", help="trial number of --study"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    img_size: int = typer.Option(None, "--img-size", help="input size to cost at (default: the design size)"),
) -> None:
    """Per-stage table of an architecture: mixer, knobs, grid, params, FLOPs.

    Example: nas show search_spaces/examples/caformer_s18.json   |   nas show --study fashion_mnist_tiny --trial 3
    """
    import timm

    import nas.models  # noqa: F401  (the mixerformer entrypoint)
    from nas.arch import ArchSpec
    from nas.cost import format_stage_table, stage_costs

    if (arch is None) == (trial is None):
        raise ConfigError("show: give either an ARCH.json file or --study NAME --trial N")
    if arch is not None:
        if not arch.is_file():
            raise ConfigError(f"{arch}: file not found")
        try:
            raw = json.loads(arch.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{arch}: not valid JSON ({e})") from None
        args = raw.get("model_args", raw) if isinstance(raw, dict) else raw
        where = str(arch)
    else:
        from nas.results import get_record, open_study

        if not study:
            raise ConfigError("show: --trial needs --study NAME")
        args, where = get_record(open_study(study, storage), trial).arch, f"{study} trial {trial}"
    spec = ArchSpec.from_model_args(args, where=where)
    model = timm.create_model("mixerformer", **spec.to_model_args())
    typer.echo(f"{where}: {spec.placement()}  arch_id {spec.arch_id}")
    for i, st in enumerate(spec.stages):
        typer.echo(f"  stage {i}: knobs {json.dumps(st.knobs, sort_keys=True)}")
    typer.echo(format_stage_table(stage_costs(model, img_size)))


def bench(
    which: str = typer.Argument(
        ..., help="mixers | model | trainer | throughput | search | search-lab | accuracy | gpu"
    ),
    args: list[str] = typer.Argument(None, help="arguments passed to the benchmark"),
) -> None:
    """Run a benchmark of benchmarks/ (each prints ratios against a named peer measured in the same run), as
    ``python -m benchmarks.<module>`` from the repository root would.

    Example: nas bench mixers -- --batch 8
    """
    modules = {
        "mixers": "mixers",
        "model": "throughput",
        "throughput": "throughput",
        "trainer": "trainer",
        "search": "search_efficiency",
        "search-lab": "search_lab",
        "gpu": "gpu_suite",
        "accuracy": "accuracy",
    }
    if which not in modules:
        raise ConfigError(f"bench: unknown benchmark '{which}'; choose one of {sorted(modules)}")
    script = BENCHMARKS / f"{modules[which]}.py"
    if not script.is_file():
        raise ConfigError(f"bench: {script.name} not found next to the package (benchmarks/ ships with the repo)")
    _lab_importable()
    sys.argv = [str(script), *(args or [])]
    # alter_sys: the module is __main__ while it runs, so the processes the lab spawns (multiprocessing) import it
    # by its name, benchmarks.<module>, as they do under ``python -m``
    runpy.run_module(f"benchmarks.{modules[which]}", run_name="__main__", alter_sys=True)


def _lab_importable() -> None:
    """Make the lab's package, benchmarks/ beside this package, importable as ``benchmarks``.

    The lab belongs to the repository, not to the installed distribution: ``python -m benchmarks.<name>`` run from
    the repository root finds it in the working directory, but the ``nas`` script starts wherever it is called.
    Then the repository's root goes first on ``sys.path``, where the processes the lab spawns find it as well
    (multiprocessing hands them the parent's path); nothing else in the project edits the path."""
    found = importlib.util.find_spec("benchmarks")
    if found is None or found.origin is None or Path(found.origin).resolve() != (BENCHMARKS / "__init__.py").resolve():
        sys.path.insert(0, str(BENCHMARKS.parent))


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-objective architecture search over token-mixer placement (Optuna + Ray Tune + timm).",
)
for _command in (search, calibrate, validate, report, show, bench):
    app.command(_command.__name__)(cli_errors(_command))
register(app)


def main() -> None:
    """The ``nas`` console script: Ray's local authentication off (loopback only), then the typer app."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app()


if __name__ == "__main__":
    main()
