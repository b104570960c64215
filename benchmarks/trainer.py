"""Training throughput of trainers.fit against a plain PyTorch loop on Fashion-MNIST, printed as a ratio.

The peer is what a typical training script does: ``torchvision.datasets.FashionMNIST`` + per-sample
``torchvision.transforms`` (RandomCrop with padding, RandomHorizontalFlip, ToTensor, Normalize) + a
``DataLoader`` with worker processes (persistent, pinned memory on CUDA), then the same model, AdamW, per-step
warm-up/cosine LR, label smoothing, grad clipping and (on CUDA) bf16 autocast. Both sides train the same number
of steps per epoch; the first epoch is a warm-up, the second is timed (images / seconds of the training loop).
Repeats are interleaved (ours, plain, ours, plain ...) so load from other processes hits both alike.

    python -m benchmarks.trainer                      # CPU, plus CUDA when available
    python -m benchmarks.trainer --model resnet10t --img-size 32 --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainers import DataConfig, DeviceData, TrainConfig, fit, load_dataset
from trainers.proxy import lr_at, param_groups


def make_model(name: str, in_chans: int, num_classes: int, seed: int, size: int) -> nn.Module:
    """``tiny_cnn`` (default), or any timm model name (``import nas`` first registers the project's models)."""
    torch.manual_seed(seed)
    if name == "tiny_cnn":
        model = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.LazyLinear(num_classes),
        )  # fmt: skip
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, size, size))  # materialise the lazy head
        return model.train()
    import timm

    with contextlib.suppress(ImportError):
        import nas  # noqa: F401  (registers the project's timm entrypoints when present)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


def write_torchvision_layout(ds, root: Path) -> None:
    """Write the decoded splits as the uncompressed IDX files torchvision's FashionMNIST reads from raw/."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, x, y in (("train", ds.train_x[:, 0], ds.train_y), ("t10k", ds.val_x[:, 0], ds.val_y)):
        n, h, w = x.shape
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + h.to_bytes(4, "big") + w.to_bytes(4, "big")
            + x.numpy().tobytes()
        )  # fmt: skip
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + y.to(torch.uint8).numpy().tobytes()
        )


def plain_epoch_rates(model: nn.Module, cfg: TrainConfig, ds, root: Path, device: torch.device, workers: int) -> float:
    """Images/s of the second of two epochs of a textbook DataLoader loop (the first warms up)."""
    from torchvision import datasets, transforms

    size = cfg.img_size or ds.img_size
    tf = [transforms.RandomCrop(ds.img_size, padding=ds.crop_padding), transforms.RandomHorizontalFlip()]
    tf += [transforms.Resize(size, antialias=True)] if size != ds.img_size else []
    tf += [transforms.ToTensor(), transforms.Normalize(ds.mean, ds.std)]
    train = datasets.FashionMNIST(str(root), train=True, transform=transforms.Compose(tf))
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=cuda, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True if cuda else None)
    steps = cfg.max_batches_per_epoch
    step, rate = 0, 0.0
    for _epoch in range(2):
        model.train()
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if i == steps:
                break
            x = x.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last) if cuda else x
            y = y.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg, steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
        float(loss.detach())  # sync before stopping the clock
        rate = steps * cfg.batch_size / (time.perf_counter() - t0)
    del loader
    return rate


def run(args: argparse.Namespace, device: torch.device) -> tuple[float, float, list[float], list[float]]:
    ds = load_dataset(DataConfig(name="fashion_mnist", root=args.root))
    # a small val split: evaluation is not what is timed, and the peer does none
    ds = dataclasses.replace(ds, val_x=ds.val_x[:512], val_y=ds.val_y[:512])
    cfg = TrainConfig(
        epochs=2, batch_size=args.batch_size, lr=2e-3, warmup_epochs=0.5, img_size=args.img_size, seed=0,
        device=str(device), max_batches_per_epoch=args.steps, amp="auto",
    )  # fmt: skip
    data = DeviceData(ds, device)
    size = cfg.img_size or ds.img_size
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        write_torchvision_layout(ds, Path(tmp))
        for _ in range(args.repeats):
            model = make_model(args.model, ds.in_chans, ds.num_classes, seed=0, size=size)
            ours.append(fit(model, cfg, data)[-1].images_per_s)
            model = make_model(args.model, ds.in_chans, ds.num_classes, seed=0, size=size)
            plain.append(plain_epoch_rates(model, cfg, ds, Path(tmp), device, args.workers))
            print(f"  [{device}] ours {ours[-1]:8.0f} img/s   plain {plain[-1]:8.0f} img/s", flush=True)
    return statistics.median(ours), statistics.median(plain), ours, plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_cnn", help="tiny_cnn or a timm model name")
    p.add_argument("--device", default="all", help="cpu | cuda | all (= cpu, plus cuda when available)")
    p.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: native 28)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="peer DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", default=None, help="Fashion-MNIST folder (default: the trainers search path)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    cpu_name = next(
        (ln.split(":", 1)[1].strip() for ln in _lscpu() if ln.startswith("Model name")), platform.processor()
    )
    print(
        f"torch {torch.__version__} | cpu: {cpu_name} ({os.cpu_count()} logical) | threads {torch.get_num_threads()}"
        f" | model {args.model} | batch {args.batch_size} | steps/epoch {args.steps} | workers {args.workers}"
    )
    for dev in devices[args.device]:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name
        ours, plain, _, _ = run(args, device)
        ratio = ours / plain if plain > 0 else math.inf
        print(f"{dev} ({name}): ours {ours:.0f} img/s, plain {plain:.0f} img/s (medians of {args.repeats}); "
              f"ours/plain = {ratio:.2f}")  # fmt: skip


def _lscpu() -> list[str]:
    try:
        import subprocess

        return subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    main()
