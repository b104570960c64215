"""The prepared GPU check: every GPU figure the project needs, in one run of at most ~8 minutes on one H100/H200.

Needs only torch, timm, this package's core, ``nas.space`` (+ pydantic, pyyaml) and ``trainers`` — no Ray, Optuna or
SQLAlchemy, which the GPU machine does not have. Each section prints as it goes; the figures land in
``OUT/gpu_suite.json`` and ``OUT/gpu_suite.md`` (a section that fails is recorded with its error, the others run).

Sections (targets in brackets; ``--tiny`` shrinks every size so the same code paths run in seconds on CPU):

* ``env``: device, versions, a measured bf16 matmul peak (the MFU denominator);
* ``mixers``: every mixer's forward+backward in bf16 against its plain reference at CAFormer-S18 stage geometry
  (batch 64), the attention kernel each one actually runs, and which SDPA backends accept the static-key inputs
  [SKA >= 1.3x its reference];
* ``model``: ``mixerformer_caformer_s18`` vs timm's ``caformer_s18``, inference and training images/s (bf16,
  channels_last) [>= 0.95x];
* ``trainer``: the proxy trainer with the dataset resident on the GPU vs a textbook DataLoader loop, same model
  [>= 2x], and ``compile`` on/off;
* ``repeatability``: 5 throughput measurements at batch 256 [CV <= 2 %];
* ``oom``: a trial that does not fit fails with "out of memory" and the next one trains normally (allocated memory
  back to where it was); peak training memory per architecture;
* ``worker``: the engine's own trial code (``nas.engine.trainable``, no Ray) on architectures sampled from
  ``search_spaces/fashion_mnist_tiny.yaml`` at the ``studies/fashion_mnist_tiny.yaml`` proxy budget: accuracy,
  throughput, a mini front; then **proxy trials per GPU-hour** and model-FLOP utilisation with 1, 2, 4 and 8 trial
  processes sharing the GPU (as fractional ``gpus_per_trial`` would place them) [>= 2,000 trials/GPU-hour].

    python -m benchmarks.gpu_suite --out gpu_results                 # on a GPU machine
    python -m benchmarks.gpu_suite --device cpu --tiny --out /tmp/x  # the same paths in seconds (CI runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch

import nas  # noqa: F401  (registers the entrypoints with timm)
from nas.cost import arch_cost
from nas.measure import cpu_model_name, free_memory, measure_throughput, sync

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("env", "mixers", "model", "trainer", "repeatability", "oom", "worker")
TINY_STUDY = ROOT / "studies" / "fashion_mnist_tiny.yaml"


# ---------------------------------------------------------------------------------------------- plumbing
class Suite:
    """Runs sections, keeps their figures and the targets they are judged against."""

    def __init__(self, device: torch.device, tiny: bool) -> None:
        self.device, self.tiny = device, tiny
        self.results: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.t0 = time.time()

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        print(f"\n== {name} ({time.time() - self.t0:.0f} s)", flush=True)
        t = time.time()
        try:
            self.results[name] = {**fn(), "seconds": round(time.time() - t, 1)}
        except Exception as e:  # one broken section must not cost the others their figures
            traceback.print_exc()
            self.results[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        finally:
            free_memory(self.device)

    def target(self, name: str, value: float | None, goal: float, higher_is_better: bool = True) -> None:
        met = value is not None and (value >= goal if higher_is_better else value <= goal)
        self.targets.append({"name": name, "value": value, "target": goal, "higher": higher_is_better, "met": met})
        shown = value if value is None else round(value, 4)
        sign = ">=" if higher_is_better else "<="
        print(f"   target {name}: {shown} ({sign} {goal}) -> {'met' if met else 'NOT met'}", flush=True)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---------------------------------------------------------------------------------------------- env
def env_section(s: Suite) -> dict[str, Any]:
    n = 256 if s.tiny else 8192
    dtype = torch.bfloat16 if s.device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=s.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(s.device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync(s.device)
    peak = 2 * n**3 * reps / (time.perf_counter() - t)
    name = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else cpu_model_name()
    out = {
        "device": name,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "matmul_peak_flops": peak,
        "matmul_dtype": str(dtype),
    }
    print(f"   {name}; torch {torch.__version__}, timm {timm.__version__}; matmul {peak / 1e12:.1f} TFLOP/s")
    s.results["env_peak"] = peak
    return out


# ---------------------------------------------------------------------------------------------- mixers
def mixers_section(s: Suite) -> dict[str, Any]:
    from benchmarks import mixers as mb  # the same steps and reference the CPU benchmark uses

    dev = s.device.type
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    batch = 2 if s.tiny else 64
    geometries = [(8, 8, 32)] if s.tiny else mb.GEOMETRIES
    warmup, repeats = (1, 2) if s.tiny else (3, 10)
    rows, ska_ratios = [], []
    for h, w, c in geometries:
        for name in mb.MIXERS:
            ours, ref, module = mb.make_steps(name, h, w, c, batch, dev, dtype)
            kernel = "-" if name in ("dwconv", "key_only") else mb.attention_kernel(ours.forward)
            t_ours, t_ref = mb.time_pair(ours, ref, dev, warmup, repeats, time.perf_counter)
            row = {"mixer": name, "geometry": f"{h}x{w}x{c}", "kernel": kernel, "ours_ms": t_ours, "ref_ms": t_ref}
            row["ratio"] = t_ref / t_ours
            if dev == "cuda" and name in ("mhsa", "ska", "manifold_key"):
                row["backends"] = mb.sdpa_backends(module, ours.x, dev, dtype)
            if dev == "cuda" and dtype == torch.bfloat16:
                row["peak_mem_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
                torch.cuda.reset_peak_memory_stats(s.device)
            rows.append(row)
            if name == "ska":
                ska_ratios.append(row["ratio"])
            print(f"   {name:<13} {h}x{w}x{c:<5} {kernel:<16} ours {t_ours:8.2f} ms  ref {t_ref:8.2f} ms  "
                  f"x{row['ratio']:.2f}  {row.get('backends', '')}", flush=True)  # fmt: skip
            del ours, ref, module
            free_memory(s.device)
    s.target("SKA fwd+bwd vs reference (min over geometries)", min(ska_ratios), 1.3)
    return {"batch": batch, "dtype": str(dtype), "rows": rows}


# ---------------------------------------------------------------------------------------------- model
def _train_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync(x.device)
            t = time.perf_counter()
        with _autocast(x.device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - t)


def model_section(s: Suite) -> dict[str, Any]:
    size, batch, tbatch = (64, 8, 4) if s.tiny else (224, 256, 64)
    steps, warmup = (2, 1) if s.tiny else (20, 5)
    cl = s.device.type == "cuda"
    out: dict[str, Any] = {"img_size": size, "infer_batch": batch, "train_batch": tbatch}
    for key, name in (("ours", "mixerformer_caformer_s18"), ("timm", "caformer_s18")):
        torch.manual_seed(0)
        m = timm.create_model(name).to(s.device)
        m = m.to(memory_format=torch.channels_last) if cl else m
        infer = measure_throughput(
            m, img_size=size, in_chans=3, batch_size=batch, device=s.device, precision="auto",
            warmup=warmup, steps=steps, repeats=3, latency=False,
        )  # fmt: skip
        x = torch.randn(tbatch, 3, size, size, device=s.device)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        y = torch.randint(0, 1000, (tbatch,), device=s.device)
        out[key] = {
            "infer_img_s": infer.median,
            "infer_cv": infer.cv,
            "train_img_s": _train_rate(m, x, y, steps, warmup),
        }
        print(f"   {name:<26} inference {infer.median:9.0f} img/s   training {out[key]['train_img_s']:8.0f} img/s")
        del m, x, y
        free_memory(s.device)
    for kind in ("infer", "train"):
        out[f"{kind}_ratio"] = out["ours"][f"{kind}_img_s"] / out["timm"][f"{kind}_img_s"]
        s.target(f"CAFormer-S18 {kind} ours/timm", out[f"{kind}_ratio"], 0.95)
    return out


# ---------------------------------------------------------------------------------------------- trainer
def trainer_section(s: Suite, data_root: str | None) -> dict[str, Any]:
    from benchmarks import trainer as tb  # ours vs the textbook DataLoader loop, interleaved

    args = argparse.Namespace(
        model="tiny_cnn", steps=3 if s.tiny else 200, batch_size=32 if s.tiny else 256, img_size=None,
        workers=0 if s.tiny else min(8, os.cpu_count() or 1), repeats=1 if s.tiny else 3, root=data_root,
    )  # fmt: skip
    ours, plain, _, _ = tb.run(args, s.device)
    out = {"model": args.model, "batch": args.batch_size, "ours_img_s": ours, "plain_img_s": plain}
    out["ratio"] = ours / plain
    s.target("proxy trainer vs DataLoader loop", out["ratio"], 2.0)
    # compile on/off, ours only (the trainer's `compile` setting)
    from trainers import DataConfig, DeviceData, TrainConfig, fit, load_dataset

    ds = load_dataset(DataConfig(name="fashion_mnist", root=data_root))
    data = DeviceData(ds, s.device)
    for compiled in (False, True):
        cfg = TrainConfig(
            epochs=2, batch_size=args.batch_size, max_batches_per_epoch=args.steps, device=str(s.device),
            compile=compiled, eval_batch_size=1000,
        )  # fmt: skip
        model = tb.make_model("tiny_cnn", ds.in_chans, ds.num_classes, seed=0, size=ds.img_size)
        rate = fit(model, cfg, data)[-1].images_per_s
        out[f"compile_{compiled}".lower()] = rate
        print(f"   ours compile={compiled}: {rate:.0f} img/s (second epoch)")
    return out


# ---------------------------------------------------------------------------------------------- repeatability
def repeatability_section(s: Suite) -> dict[str, Any]:
    size, batch, steps = (32, 8, 3) if s.tiny else (224, 256, 40)
    name = "mixerformer_caformer_s18"
    torch.manual_seed(0)
    model = timm.create_model(name)
    medians, within = [], []
    for _ in range(2 if s.tiny else 5):
        r = measure_throughput(
            model, img_size=size, in_chans=3, batch_size=batch, device=s.device, precision="auto",
            warmup=2 if s.tiny else 10, steps=steps, repeats=5, latency=False,
        )  # fmt: skip
        medians.append(r.median)
        within.append(r.cv)
    cv = statistics.stdev(medians) / statistics.fmean(medians)
    print(f"   medians {[round(m) for m in medians]} img/s; CV across measurements {100 * cv:.2f} %")
    s.target("throughput CV across 5 measurements (%)", 100 * cv, 2.0, higher_is_better=False)
    return {"model": name, "batch": batch, "img_size": size, "medians": medians, "cv": cv, "within_cv": within}


# ---------------------------------------------------------------------------------------------- the engine's trial code
def _study_budget(device: torch.device, tiny: bool) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The shipped tiny study's space, training, dataset and throughput settings (read without Optuna/Ray)."""
    from nas.space import SearchSpace
    from nas.yamlfile import read_yaml

    raw = read_yaml(TINY_STUDY, "the shipped study file is missing")
    space = SearchSpace.load((TINY_STUDY.parent / raw["space"]).resolve())
    train = {**raw["train"], "device": str(device)}
    if tiny:
        train.update(epochs=1, max_batches_per_epoch=2, eval_batch_size=500)
    tp = {"batch_size": 64, "repeats": 3, "warmup": 3, "steps": 10, "precision": "auto", "compile": None,
          "threads": None, **raw.get("throughput", {})}  # fmt: skip
    if tiny:
        tp.update(batch_size=8, repeats=2, warmup=1, steps=2)
    return space, train, dict(raw.get("dataset", {})), tp


def _archs(space: Any, n: int, seed: int) -> list[dict[str, Any]]:
    from nas.errors import NasError

    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        try:
            arch = space.sample(lambda name, choices: rng.choice(choices), num_classes=10)
        except NasError:
            continue
        if arch.arch_id not in seen:
            seen.add(arch.arch_id)
            out.append({"arch": arch.to_model_args(), "arch_id": arch.arch_id, "placement": arch.placement()})
    return out


def run_one(arch: dict[str, Any], train: dict, dataset: dict, tp: dict, lock_dir: str, cpus: int = 1) -> dict:
    """One trial through the engine's worker code (nas.engine.trainable.trial_reports), Ray-free, like run_trial:
    any exception becomes the trial's failure reason."""
    from nas.engine.messages import TrialPayload
    from nas.engine.trainable import guarded_reports

    payload = TrialPayload(
        number=0, arch=arch["arch"], arch_id=arch["arch_id"], train=train, dataset=dataset, throughput=tp,
        cpus=cpus, lock_dir=lock_dir,
    )  # fmt: skip
    t0, last, failed = time.time(), None, None
    for report, _weights in guarded_reports(payload):
        if report.failed:
            failed = report.failed
        else:
            last = report
    return {
        "arch_id": arch["arch_id"],
        "placement": arch["placement"],
        "val_acc": last.val_acc if last else None,
        "throughput": (last.throughput or {}).get("median") if last else None,
        "peak_train_mem": (last.throughput or {}).get("peak_train_mem_bytes") if last else None,
        "seconds": time.time() - t0,
        "failed": failed,
    }


def oom_section(s: Suite, lock_dir: str) -> dict[str, Any]:
    space, train, dataset, tp = _study_budget(s.device, s.tiny)
    small = _archs(space, 1, seed=1)[0]
    hook, filler = None, None
    before = torch.cuda.memory_allocated(s.device) if s.device.type == "cuda" else 0
    big, too_big = {**small, "arch_id": "oom-probe"}, train
    if s.device.type == "cuda":
        # The trainer caps a batch at the dataset's size, and a 141 GB card holds any proxy batch (seen on an H200:
        # a 1M-image batch trained), so the card is filled first, leaving 16 MiB: the trial then hits a real CUDA
        # out-of-memory wherever it first allocates, as it would next to another tenant's job.
        free, _ = torch.cuda.mem_get_info(s.device)
        filler = torch.empty(max(free - (16 << 20), 0), dtype=torch.uint8, device=s.device)
    else:  # no real OOM on CPU: a global forward hook raises the error CUDA would, for the big batch only

        def oom(module: torch.nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].shape[0] >= 4096:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU by the gpu suite)")

        hook = torch.nn.modules.module.register_module_forward_pre_hook(oom)
        too_big = {**train, "batch_size": 4096}
    try:
        failed = run_one(big, too_big, dataset, {**tp}, lock_dir)
    finally:
        if hook is not None:
            hook.remove()
        del filler
    free_memory(s.device)
    after = torch.cuda.memory_allocated(s.device) if s.device.type == "cuda" else 0
    normal = run_one(small, train, dataset, tp, lock_dir)
    ok = bool(failed["failed"]) and "out of memory" in failed["failed"].lower() and not normal["failed"]
    print(f"   oversized trial: {failed['failed']}")
    print(f"   next trial: val_acc {normal['val_acc']}, failed {normal['failed']}; allocated {before} -> {after} bytes")
    s.target("OOM trial fails with reason and the next trains (1 = yes)", float(ok), 1.0)
    return {"oom_reason": failed["failed"], "next": normal, "allocated_before": before, "allocated_after": after}


def _proc(queue: Any, jobs: list[dict], train: dict, dataset: dict, tp: dict, lock_dir: str, seconds: float) -> None:
    """One trial process: trials back to back for ``seconds`` after its start-up (imports, data) is done."""
    torch.set_num_threads(1)
    done, begin = [], time.time()
    for arch in jobs:
        if time.time() - begin >= seconds:
            break
        done.append(run_one(arch, train, dataset, tp, lock_dir))
    queue.put((done, begin, time.time()))


def worker_section(s: Suite, lock_dir: str) -> dict[str, Any]:
    from nas.pareto import pareto_front

    space, train, dataset, tp = _study_budget(s.device, s.tiny)
    archs = _archs(space, 4 if s.tiny else 8, seed=0)
    trials = [run_one(a, train, dataset, tp, lock_dir) for a in archs]
    good = [t for t in trials if not t["failed"]]
    for t in trials:
        print(f"   {t['placement']:<40} acc {t['val_acc']}  {t['throughput'] or 0:9.0f} img/s  {t['seconds']:.1f} s"
              + (f"  FAILED {t['failed']}" if t["failed"] else ""))  # fmt: skip
    points = [[t["val_acc"], t["throughput"]] for t in good]
    front = [good[i]["placement"] for i in pareto_front(points, ["maximize"] * 2)] if good else []
    print(f"   mini front: {front}")
    # concurrency: k trial processes share the device for a fixed time; trials finished per GPU-hour, MFU
    flops_per_trial = {a["arch_id"]: _train_flops(a["arch"], train) for a in archs}
    seconds = 6 if s.tiny else 45
    conc = {}
    ctx = mp.get_context("spawn")
    for k in (1, 2) if s.tiny else (1, 2, 4, 8):
        queue, pool = ctx.Queue(), archs * 50
        procs = [
            ctx.Process(target=_proc, args=(queue, pool[i::k], train, dataset, tp, lock_dir, seconds)) for i in range(k)
        ]
        for p in procs:
            p.start()
        parts = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        finished = [t for done, _, _ in parts for t in done if not t["failed"]]
        wall = max(end for _, _, end in parts) - min(begin for _, begin, _ in parts)  # start-up excluded
        per_hour = len(finished) * 3600 / wall
        mfu = sum(flops_per_trial[t["arch_id"]] for t in finished) / wall / s.results.get("env_peak", float("nan"))
        conc[k] = {"trials": len(finished), "wall_s": wall, "trials_per_hour": per_hour, "mfu": mfu}
        rate = f"{len(finished)} trials in {wall:.0f} s = {per_hour:,.0f} trials/h"
        print(f"   {k} process(es): {rate}, MFU {100 * mfu:.2f} %")
    best = max(c["trials_per_hour"] for c in conc.values())
    s.target("proxy trials per GPU-hour (best concurrency)", best, 2000.0)
    return {"trials": trials, "front": front, "concurrency": conc, "budget": train}


def _train_flops(arch: dict[str, Any], train: dict[str, Any]) -> float:
    """Training FLOPs of one proxy trial: 3 x forward per training image, 1 x per validation image (approximate:
    Fashion-MNIST has 60,000 training images; the validation split is the study's)."""
    fwd = arch_cost(arch).flops
    n_train = 60000 * train.get("train_fraction", 1.0)
    if train.get("max_batches_per_epoch"):
        n_train = min(n_train, train["max_batches_per_epoch"] * train.get("batch_size", 128))
    return train.get("epochs", 1) * (3 * fwd * n_train + fwd * 6000)


# ---------------------------------------------------------------------------------------------- report
def markdown(s: Suite) -> str:
    env = s.results.get("env", {})
    lines = [
        "# GPU suite",
        "",
        f"device: {env.get('device')} · torch {env.get('torch')} · timm {env.get('timm')} · "
        f"{'tiny' if s.tiny else 'full'} run · {time.strftime('%Y-%m-%d')}",
        "",
        "| target | value | goal | met |",
        "|---|---|---|---|",
    ]
    for t in s.targets:
        v = "—" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(
            f"| {t['name']} | {v} | {'≥' if t['higher'] else '≤'} {t['target']:g} | {'yes' if t['met'] else 'NO'} |"
        )
    lines += ["", "| section | seconds | error |", "|---|---|---|"]
    for name, r in s.results.items():
        if isinstance(r, dict):
            lines.append(f"| {name} | {r.get('seconds', '—')} | {r.get('error', '')} |")
    mix = s.results.get("mixers", {}).get("rows", [])
    if mix:
        lines += ["", "| mixer | geometry | kernel | ours ms | ref ms | ref/ours |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['mixer']} | {r['geometry']} | {r['kernel']} | {r['ours_ms']:.2f} | {r['ref_ms']:.2f} | "
                  f"{r['ratio']:.2f} |" for r in mix]  # fmt: skip
    conc = s.results.get("worker", {}).get("concurrency", {})
    if conc:
        lines += ["", "| trial processes | trials | trials/GPU-hour | MFU |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {c['trials']} | {c['trials_per_hour']:,.0f} | {100 * c['mfu']:.2f} % |" for k, c in conc.items()
        ]
    return "\n".join(lines) + "\n"


def _write(out: Path, s: Suite) -> None:
    results = {k: v for k, v in s.results.items() if k != "env_peak"}
    (out / "gpu_suite.json").write_text(json.dumps({"results": results, "targets": s.targets}, indent=2, default=str))
    (out / "gpu_suite.md").write_text(markdown(s))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: every code path in seconds (CI)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the trainers search path)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available; use --device cpu --tiny", file=sys.stderr)
        return 2
    if args.data_root:
        os.environ["FASHION_MNIST_ROOT"] = args.data_root
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock_dir = str(out / "locks")
    torch.manual_seed(0)
    s = Suite(torch.device(args.device), args.tiny)
    sections = {
        "env": lambda: env_section(s),
        "mixers": lambda: mixers_section(s),
        "model": lambda: model_section(s),
        "trainer": lambda: trainer_section(s, args.data_root),
        "repeatability": lambda: repeatability_section(s),
        "oom": lambda: oom_section(s, lock_dir),
        "worker": lambda: worker_section(s, lock_dir),
    }
    for name in ["env", *[n for n in args.sections if n != "env"]]:
        s.run(name, sections[name])
        _write(out, s)  # after every section: a run cut short keeps what it measured
    print(f"\nwrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} in {time.time() - s.t0:.0f} s")
    errors = [n for n, r in s.results.items() if isinstance(r, dict) and "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
