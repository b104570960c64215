"""Repeatability of nas.measure.measure_throughput, against a plain timm-style single-shot loop.

Measures one model ``--measurements`` times (default 5) and prints:

* the CV of the median across the measurements (does a cached throughput stand for the architecture?),
* the CV of the repeats inside each measurement (the spread we store),
* the same number of single shots of the peer — timm's ``benchmark.py`` loop (10 warm-up + 40 timed steps,
  one figure, no spread) — interleaved with ours, and the ratio of our median to the peer's.

Targets: CV of the median <= 5 % on CPU, <= 2 % on GPU. CPU always; CUDA too when available.

    python -m benchmarks.throughput                 # small mixerformer, CPU (+ GPU if present)
    python -m benchmarks.throughput --model resnet18 --img-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from nas.measure import measure_throughput

# A small CAFormer-style hybrid (conv stages, then attention) at CIFAR size; see docs/model_args.md.
DEFAULT_ARGS = {
    "in_chans": 3,
    "num_classes": 10,
    "img_size": 32,
    "stem": {"kernel": 3, "stride": 2},
    "stages": [
        {"depth": 2, "dim": 32, "mixer": "dwconv"},
        {"depth": 2, "dim": 64, "mixer": "dwconv"},
        {"depth": 2, "dim": 128, "mixer": "mhsa"},
    ],
}


def build_model(name: str | None, img_size: int | None) -> tuple[nn.Module, str, int, int]:
    """(model, description, img_size, in_chans): mixerformer by default, any timm model by name."""
    import timm

    if name is None:
        try:
            import nas  # noqa: F401  (registers mixerformer)

            args = dict(DEFAULT_ARGS, img_size=img_size or DEFAULT_ARGS["img_size"])
            return timm.create_model("mixerformer", **args), f"mixerformer {json.dumps(args)}", args["img_size"], 3
        except Exception as exc:  # the backbone may not be available yet: fall back to a stock model
            print(f"mixerformer unavailable ({type(exc).__name__}: {exc}); using timm resnet18")
            name = "resnet18"
    size = img_size or 64
    return timm.create_model(name, num_classes=10), f"timm {name}", size, 3


def timm_single_shot(model: nn.Module, x: torch.Tensor, device: torch.device, bf16: bool) -> float:
    """The peer: timm benchmark.py's inference loop, one shot (10 warm-up + 40 timed steps), images/s."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for _ in range(10):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(40):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return x.shape[0] * 40 / (time.perf_counter() - t0)


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def run_device(args: argparse.Namespace, device: torch.device) -> dict:
    model, desc, size, in_chans = build_model(args.model, args.img_size)
    on_gpu = device.type == "cuda"
    batch = args.batch or (256 if on_gpu else 32)
    steps = args.steps or 40
    warmup = args.warmup if args.warmup is not None else 10
    model = model.to(device).eval()
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, in_chans, size, size, device=device)
    if on_gpu:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, peers = [], []
    print(f"\n[{device}] {desc}, batch {batch}, {size}x{size}")
    for i in range(args.measurements):
        r = measure_throughput(
            model,
            img_size=size,
            in_chans=in_chans,
            batch_size=batch,
            device=device,
            warmup=warmup,
            steps=steps,
            repeats=args.repeats,
            latency=False,
        )
        ours.append(r)
        peers.append(timm_single_shot(model, x, device, bf16=r.precision == "bf16"))
        print(
            f"  measurement {i + 1}: median {r.median:9.1f} img/s  (repeats CV {100 * r.cv:4.1f}%, "
            f"IQR {r.iqr:7.1f}, batch {r.batch})   peer single shot {peers[-1]:9.1f} img/s"
        )
    medians = [r.median for r in ours]
    summary = {
        "device": ours[0].device,
        "model": desc,
        "batch": ours[0].batch,
        "precision": ours[0].precision,
        "resolution": size,
        "measurements": args.measurements,
        "repeats": args.repeats,
        "steps": steps,
        "warmup": warmup,
        "median_of_medians": statistics.median(medians),
        "cv_of_medians": cv(medians),
        "load_avg_1min": os.getloadavg()[0],
        "cv_of_best_repeat": cv([r.max for r in ours]),
        "within_cv_median": statistics.median(r.cv for r in ours),
        "within_cv_max": max(r.cv for r in ours),
        "peer_median": statistics.median(peers),
        "peer_cv": cv(peers),
        "ratio_ours_over_peer": statistics.median(medians) / statistics.median(peers),
        "target_cv": 0.02 if on_gpu else 0.05,
    }
    ok = summary["cv_of_medians"] <= summary["target_cv"]
    print(
        f"  CV of our median over {args.measurements} measurements: {100 * summary['cv_of_medians']:.2f}% "
        f"(target <= {100 * summary['target_cv']:.0f}%: {'PASS' if ok else 'MISS'})\n"
        f"  CV of the best repeat over the measurements (timeit's min-time view): "
        f"{100 * summary['cv_of_best_repeat']:.2f}%\n"
        f"  CV of repeats within a measurement: median {100 * summary['within_cv_median']:.2f}%, "
        f"max {100 * summary['within_cv_max']:.2f}%\n"
        f"  peer (timm-style single shot) CV over {args.measurements} shots: {100 * summary['peer_cv']:.2f}%\n"
        f"  ratio ours / peer (medians): {summary['ratio_ours_over_peer']:.3f}"
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="timm model name (default: a small mixerformer)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 256 on GPU")
    p.add_argument("--measurements", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (timm: 40)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (timm: 10)")
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    args = p.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load avg {os.getloadavg()}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    t0 = time.perf_counter()
    summaries = [run_device(args, d) for d in devices]
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
