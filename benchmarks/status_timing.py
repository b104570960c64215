"""``nas status`` against a bare Optuna load of the same study, paired (issue 30: within 1.2x).

Each round runs both as fresh processes, A then B on even rounds and B then A on odd ones (so a load that comes and
goes touches both alike), and the ratio is the paired geometric mean of the per-round ratios with its 95 % t interval
(nas.settle.paired_ratio). B is what a user would otherwise run: ``optuna.load_study`` and reading every trial.

    python -m benchmarks.status_timing                       # the demo study, 10 rounds
    python -m benchmarks.status_timing --study NAME --rounds 20 [--storage URL]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from nas.settle import paired_ratio

ROOT = Path(__file__).resolve().parent.parent


def _seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="fashion_mnist_tiny")
    ap.add_argument("--storage", default=None, help="default: sqlite:///studies/<study>/study.db")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    url = args.storage or f"sqlite:///studies/{args.study}/study.db"
    nas = [str(Path(sys.executable).with_name("nas")), "status", args.study, "--storage", url]
    bare = [sys.executable, "-c", f"import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING); "
            f"s = optuna.load_study(study_name={args.study!r}, storage={url!r}); print(len(s.trials))"]  # fmt: skip
    a, b = [], []
    for r in range(args.rounds):
        for which in "ab" if r % 2 == 0 else "ba":
            (a if which == "a" else b).append(_seconds(nas if which == "a" else bare))
    ratio, lo, hi = paired_ratio(a, b)
    med_a, med_b = sorted(a)[len(a) // 2], sorted(b)[len(b) // 2]
    print(f"nas status / bare Optuna load of '{args.study}': {ratio:.2f}x (95 % CI {lo:.2f}–{hi:.2f}) over "
          f"{args.rounds} paired rounds; medians {med_a:.2f} s vs {med_b:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
