"""Accuracy sanity: a small fixed CAFormer-like MixerFormer (DW-Conv, DW-Conv, MHSA) trained by our proxy trainer on
the FULL Fashion-MNIST training set for at most 5 epochs must reach >= 85 % test accuracy. Prints the curve, the
wall time and PASS/FAIL. CPU always; CUDA too when available.

    python -m benchmarks.accuracy [--epochs 5] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time

import timm
import torch

import nas  # noqa: F401  (registers the entrypoints)
from trainers.config import TrainConfig
from trainers.data import load_dataset
from trainers.proxy import iter_fit

ARCH = {
    "in_chans": 1,
    "num_classes": 10,
    "img_size": 28,
    "stem": {"kernel": 3, "stride": 2},
    "downsample": {"kernel": 3, "stride": 2},
    "stages": [
        {"depth": 2, "dim": 32, "mixer": "dwconv"},
        {"depth": 2, "dim": 64, "mixer": "dwconv"},
        {"depth": 2, "dim": 128, "mixer": "mhsa"},
    ],
    "mlp_ratio": 4.0,
    "head": {"hidden_ratio": 2.0},
}
TARGET = 0.85


def run(device: str, epochs: int) -> float:
    data = load_dataset("fashion_mnist")
    torch.manual_seed(0)
    model = timm.create_model("mixerformer", **ARCH)
    params = sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, warmup_epochs=0.5, device=device, eval_batch_size=1000)
    t0, acc = time.time(), 0.0
    print(f"[{device}] CAFormer-like dwconv·dwconv·mhsa, {params:,} params, {len(data.train_y):,} train images")
    for ep in iter_fit(model, cfg, data):
        acc = ep.val_acc
        print(
            f"[{device}] epoch {ep.epoch}: test acc {ep.val_acc:.4f}  train loss {ep.train_loss:.3f}  "
            f"{ep.images_per_s:.0f} img/s  {time.time() - t0:.0f}s"
        )
    wall = time.time() - t0
    verdict = "PASS" if acc >= TARGET else "FAIL"
    print(
        f"[{device}] {verdict}: test accuracy {acc:.4f} (target >= {TARGET}) after {epochs} epochs, wall {wall:.0f}s"
        f" on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads,"
        f" torch {torch.__version__}"
    )
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="all", help="cpu | cuda | all")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        run(dev, a.epochs)


if __name__ == "__main__":
    main()
