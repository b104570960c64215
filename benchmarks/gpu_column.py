"""Build (part of) a lab seed column on a GPU machine that has neither Ray nor Optuna: the engine's own trial code
(``nas.engine.trainable.trial_reports``, as benchmarks/gpu_suite.py's worker section), several trial processes
sharing the device, each finished architecture appended to a JSON-lines file at once (a run cut by its time limit
keeps what it finished). Back on a machine with Optuna, ``to-column`` turns those lines into the seed column
(benchmarks/lab_seeds.py) that ``python -m benchmarks.search_lab resume`` continues anywhere.

Training is the build study's exactly (same subset, validation images, epochs, ``train.seed``), in float32: autocast
off and TF32 off, so that a GPU-built curve differs from a CPU-built one only as two runs of one seed differ on
two devices, not by a precision the CPU columns never had.

    python -m benchmarks.gpu_column build --study studies/fmnist_bench_build_s2.yaml --out OUT/s2.jsonl \
        --procs 6 --seconds 480 --data-root data/fashion-mnist                   # on the GPU machine
    python -m benchmarks.gpu_column to-column --study studies/fmnist_bench_build_s2.yaml OUT/s2.jsonl   # here
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "fmnist_bench.json"


def _study(study_file: Path) -> tuple[Any, dict[str, Any]]:
    from nas.space import SearchSpace
    from nas.yamlfile import read_yaml

    raw = read_yaml(study_file, "no such study file")
    return SearchSpace.load((study_file.parent / raw["space"]).resolve()), raw


def _grid(space: Any) -> list[dict[str, Any]]:
    grid = space.param_grid()
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _worker(
    jobs: list[dict[str, Any]], raw: dict[str, Any], data_root: str | None, out: str, stop_at: float, device: str
) -> None:
    import torch

    from nas.engine.messages import TrialPayload
    from nas.engine.trainable import guarded_reports

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    train = {**raw["train"], "device": device, "amp": "off"}
    dataset = {**raw.get("dataset", {}), **({"root": data_root} if data_root else {})}
    tp = {"batch_size": 64, "repeats": 1, "warmup": 1, "steps": 2, "precision": "fp32", "compile": None, "threads": 1}
    lock_dir = tempfile.mkdtemp(prefix="nas-locks-")
    for job in jobs:
        if time.time() >= stop_at:
            return
        payload = TrialPayload(number=job["index"], arch=job["arch"], arch_id=job["arch_id"], train=train,
                               dataset=dataset, throughput=tp, cpus=1, lock_dir=lock_dir)  # fmt: skip
        started = time.time()
        reports = [r for r, _ in guarded_reports(payload)]  # the trial's failure is its result, as in the engine
        rows = [r for r in reports if not r.failed]
        failed = next((r.failed for r in reports if r.failed), None)
        last = rows[-1] if rows else None
        line = {"arch_id": job["arch_id"], "params": job["params"], "failed": failed,
                "val_acc": [r.val_acc for r in rows], "val_loss": [r.val_loss for r in rows],
                "train_loss": [r.train_loss for r in rows], "seconds": [r.seconds for r in rows],
                "val_correct": last.val_correct if last else None, "val_set": last.val_set if last else None,
                "throughput": last.throughput if last else None, "device": (last.throughput or {}).get("device")
                if last else None, "wall_time_s": time.time() - started}  # fmt: skip
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{job['index']:4d} {job['arch_id']} acc {line['val_acc'][-1] if rows else None} "
              f"{line['wall_time_s']:.1f} s {failed or ''}", flush=True)  # fmt: skip


def build(
    study_file: Path,
    out: Path,
    procs: int,
    seconds: float,
    data_root: str | None,
    device: str = "cuda",
    table: Path = TABLE,
) -> int:
    """Train every architecture of the study's grid neither in ``out`` nor in the seed's committed column beside
    ``table`` (so a build goes on from git on another machine), ``procs`` processes at once, starting none after
    ``seconds``; returns how many lines ``out`` has."""
    from benchmarks.lab_seeds import column_path, read_column

    space, raw = _study(study_file)
    done = {json.loads(x)["arch_id"] for x in out.read_text().splitlines()} if out.is_file() else set()
    committed = column_path(table, raw["train"]["seed"])
    if committed.is_file():
        done |= set(read_column(committed)["archs"])
    jobs = []
    grid = _grid(space)
    order = list(range(len(grid)))
    random.Random(0).shuffle(order)  # one fixed order for every seed: partial columns of two seeds share architectures,
    for i in order:  # and a partial column is a random sample of the space, not its first corner
        params = grid[i]
        arch = space.sample(lambda name, choices, p=params: p[name], num_classes=10)
        if arch.arch_id not in done:
            jobs.append({"index": i, "params": params, "arch": arch.to_model_args(), "arch_id": arch.arch_id})
    print(f"{len(jobs)} architectures to train, {procs} processes, none started after {seconds:.0f} s", flush=True)
    stop_at = time.time() + seconds
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(jobs[i::procs], raw, data_root, str(out), stop_at, device))
               for i in range(procs)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    n = len(out.read_text().splitlines()) if out.is_file() else 0
    print(f"{n} architectures in {out}")
    return n


def to_column(study_file: Path, lines: Path, device: str, table: Path = TABLE) -> Path:
    """Write the seed column of the study from ``lines`` (grid ids as the study's grid sampler numbers them)."""
    from benchmarks.lab_seeds import column_path, read_column, write_column
    from nas.engine.samplers import GridSampler

    space, raw = _study(study_file)
    grid = space.param_grid()
    sampler = GridSampler(grid, seed=raw.get("seed", 0))
    ids = {tuple(g): i for i, g in enumerate(sampler.grid_points)}
    rows = [json.loads(x) for x in lines.read_text().splitlines()]
    ok = [r for r in rows if not r["failed"] and len(r["val_acc"]) == raw["train"]["epochs"]]
    archs = {r["arch_id"]: {"params": r["params"], "grid_id": ids[tuple(r["params"][k] for k in sampler.param_names)],
                            **{k: r[k] for k in ("val_acc", "val_loss", "train_loss", "seconds", "val_correct",
                                                 "throughput", "device", "wall_time_s")}} for r in ok}  # fmt: skip
    sets = {r["val_set"] for r in ok}
    assert len(sets) == 1, f"{lines}: the architectures were evaluated on {len(sets)} validation sets"
    images = int(ok[0]["val_correct"].split(":", 1)[0])
    provenance = {"study_file": study_file.name, "train_seed": raw["train"]["seed"],
                  "val_set": {"images": images, "fingerprint": sets.pop()}, "devices": [device],
                  "machine": f"{device}; built by benchmarks/gpu_column.py in float32 (autocast and TF32 off)",
                  "sessions": [{"built": time.strftime("%Y-%m-%d", time.gmtime(lines.stat().st_mtime)),
                                "device": device, "trained_here": len(ok), "failed": len(rows) - len(ok)}],
                  "grid_search_space": grid, "done": len(archs), "of": len(ids),
                  "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    out = column_path(table, raw["train"]["seed"])
    if out.is_file():  # the column so far (other machines, earlier sessions) stays; these lines join it
        before = read_column(out)
        archs = {**before["archs"], **archs}
        now = provenance["sessions"][0]
        same = [
            x
            for x in before["provenance"].get("sessions", [])
            if (x.get("built"), x.get("device")) == (now["built"], device)
        ]
        provenance["sessions"] = [*(x for x in before["provenance"].get("sessions", []) if x not in same), now]
        provenance["devices"] = sorted({*before["provenance"].get("devices", []), device})
        provenance["done"] = len(archs)
    write_column(out, provenance, archs)
    print(f"wrote {out}: {len(archs)} of {len(ids)} ({len(rows) - len(ok)} failed)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--study", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--procs", type=int, default=6)
    b.add_argument("--seconds", type=float, default=480)
    b.add_argument("--data-root")
    b.add_argument("--device", default="cuda")
    b.add_argument("--table", type=Path, default=TABLE, help="skip what the seed's column beside it already has")
    c = sub.add_parser("to-column")
    c.add_argument("--study", type=Path, required=True)
    c.add_argument("--device", required=True, help="what built it, e.g. 'NVIDIA H200'")
    c.add_argument("--table", type=Path, default=TABLE, help="the column goes beside it (default: the proxy table)")
    c.add_argument("lines", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(a.study, a.out, a.procs, a.seconds, a.data_root, a.device, a.table)
    else:
        to_column(a.study, a.lines, a.device, a.table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
