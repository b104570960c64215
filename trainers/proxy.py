"""The proxy trainer: a short, seeded, resumable supervised fit of any image classifier.

``iter_fit`` yields one :class:`EpochResult` per epoch, so a caller (a pruner, a Ray Tune trainable) can stop
at any epoch; ``fit`` runs to the end (or until ``on_epoch`` returns True) and returns the whole curve. With a
``checkpoint`` path the state after every epoch is saved (model, optimizer, step, epoch, RNG states, curve),
and a later call with the same path and TrainConfig continues the *same* curve.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers import bitmap
from trainers.config import TrainConfig, parse_config
from trainers.data import DeviceData, TensorSplits, to_device_data
from trainers.errors import CheckpointError, TrainerConfigError, TrainingFailed

CHECKPOINT_FORMAT = 1
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)

StepGuard = Callable[[], AbstractContextManager[Any]]
OnEpoch = Callable[["EpochResult"], bool | None]


@dataclass(frozen=True)
class EpochResult:
    """Metrics of one finished epoch (``epoch`` is 1-based, ``val_acc`` in [0, 1], ``lr`` = last step's).

    ``val_correct`` is which validation examples the epoch's model got right (:mod:`trainers.bitmap` text, in the
    validation set's order); None in histories written before it was kept.
    """

    epoch: int
    val_acc: float
    val_loss: float
    train_loss: float
    seconds: float
    images_per_s: float
    lr: float
    val_correct: str | None = None

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> the first CUDA device if any, else CPU; an unavailable CUDA request is a config error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise TrainerConfigError(
                f"train.device: '{spec}' requested but this machine has {count} CUDA device(s); use device: auto or cpu"
            )
    return device


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels only; none on norms, biases, other 1-d params and the
    names the model lists in ``no_weight_decay()`` (timm's convention, e.g. position embeddings)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay, seen = [], [], set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            quiet = p.ndim <= 1 or isinstance(mod, _NORMS) or full in skip or p_name in skip
            (no_decay if quiet else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up to ``lr``, then cosine down to ``lr * min_lr_ratio``."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_seed(seed: int, epoch: int) -> int:
    # each epoch's batch order and augmentation depend only on (seed, epoch): a resume needs no sampler state
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`iter_fit` (CPU tensors; ``weights_only`` unpickling)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path}: unreadable ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a trainers checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def read_checkpoint_history(path: str | Path) -> list[EpochResult]:
    """The curve stored in a checkpoint (empty when the file does not exist)."""
    if not Path(path).is_file():
        return []
    return [EpochResult(**h) for h in read_checkpoint(path)["history"]]


def fit(
    model: nn.Module,
    cfg: TrainConfig | dict[str, Any],
    data: TensorSplits | DeviceData,
    *,
    on_epoch: OnEpoch | None = None,
    checkpoint: str | Path | None = None,
    step_guard: StepGuard | None = None,
) -> list[EpochResult]:
    """Train ``model`` and return its whole curve (epochs restored from ``checkpoint`` included).

    ``on_epoch(result)`` is called after every epoch; returning True stops training there (the checkpoint of
    that epoch is already written, so a later call continues from it).
    """
    history: list[EpochResult] = []
    for result in _run(model, cfg, data, checkpoint, step_guard, history):
        if on_epoch is not None and on_epoch(result) is True:
            break
    return history


def iter_fit(
    model: nn.Module,
    cfg: TrainConfig | dict[str, Any],
    data: TensorSplits | DeviceData,
    *,
    checkpoint: str | Path | None = None,
    step_guard: StepGuard | None = None,
) -> Iterator[EpochResult]:
    """Yield an :class:`EpochResult` after each newly trained epoch; stop iterating to stop training.

    Raises :class:`TrainingFailed` on a non-finite loss (``reason = "non-finite loss at epoch E step S"``) or
    on device out-of-memory. ``step_guard()`` is entered around every training step (default: nothing), so an
    engine can hold a shared device lock while a throughput measurement takes it exclusively.
    """
    yield from _run(model, cfg, data, checkpoint, step_guard, [])


def _run(
    model: nn.Module,
    cfg: TrainConfig | dict[str, Any],
    data: TensorSplits | DeviceData,
    checkpoint: str | Path | None,
    step_guard: StepGuard | None,
    history: list[EpochResult],
) -> Iterator[EpochResult]:
    cfg = parse_config(TrainConfig, cfg, "train")
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    channels_last = cuda and cfg.channels_last
    dd = to_device_data(data, device).with_fidelity(cfg.train_fraction, cfg.img_size, cfg.subset_seed, channels_last)
    steps = dd.steps_per_epoch(cfg.batch_size, cfg.max_batches_per_epoch)
    batch = min(cfg.batch_size, dd.num_train)
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)

    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True if cuda else None)
    step, done = _resume(checkpoint, cfg, model, opt, history, device)
    runner: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    guard = step_guard or contextlib.nullcontext
    # a host sync per step costs GPU throughput, so NaN checks are batched there; on CPU they are free
    check_every = 25 if cuda else 1

    def autocast() -> AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    for epoch in range(done + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        i, oom = 0, False
        try:
            model.train()
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            loss_sum = torch.zeros((), device=device)
            bad_at = torch.full((), -1, device=device, dtype=torch.long)
            lr = cfg.lr
            for i, (x, y) in enumerate(dd.train_batches(cfg.batch_size, gen, cfg.max_batches_per_epoch), 1):
                lr = lr_at(step, cfg, steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                with guard():
                    with autocast():
                        loss = F.cross_entropy(runner(x).float(), y, label_smoothing=cfg.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    if cuda and step_guard is not None:
                        torch.cuda.synchronize(device)  # the guarded work must be finished when the lock is let go
                step += 1
                loss = loss.detach()
                loss_sum += loss
                bad_at = torch.where((bad_at < 0) & ~torch.isfinite(loss), i, bad_at)
                if (i % check_every == 0 or i == steps) and int(bad_at) >= 0:
                    raise TrainingFailed(
                        f"non-finite loss at epoch {epoch} step {int(bad_at)}",
                        kind="non_finite",
                        epoch=epoch,
                        step=int(bad_at),
                    )
            train_loss = float(loss_sum) / steps  # the float() syncs, so the timing below is honest
            train_s = time.perf_counter() - t0
            val_acc, val_loss, val_correct = _evaluate(runner, dd, cfg.eval_batch_size, autocast)
        except torch.OutOfMemoryError:
            oom = True  # leave the except block first so the traceback's tensors can be freed
        if oom:
            raise _out_of_memory(device, epoch, i, batch, dd.img_size)
        if not math.isfinite(val_loss):
            raise TrainingFailed(f"non-finite validation loss at epoch {epoch}", kind="non_finite", epoch=epoch)
        result = EpochResult(
            epoch, val_acc, val_loss, train_loss, time.perf_counter() - t0, steps * batch / train_s, lr, val_correct
        )
        history.append(result)
        if checkpoint is not None:
            _save(checkpoint, model, opt, step, epoch, history, cfg, device)
        yield result


def _resume(
    checkpoint: str | Path | None,
    cfg: TrainConfig,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    history: list[EpochResult],
    device: torch.device,
) -> tuple[int, int]:
    """Restore model, optimizer, curve and RNG states from ``checkpoint`` if it exists (else seed from the config).
    Returns (optimizer steps done, epochs done)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        torch.manual_seed(cfg.seed)
        return 0, 0
    state = read_checkpoint(checkpoint)
    if state["fingerprint"] != cfg.resume_fingerprint():
        changed = sorted(k for k, v in cfg.resume_fingerprint().items() if state["fingerprint"].get(k) != v)
        raise CheckpointError(
            f"checkpoint {checkpoint}: written with a different TrainConfig (changed: {', '.join(changed)}); "
            f"use the original config or delete the checkpoint"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    history.extend(EpochResult(**h) for h in state["history"])
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return state["step"], state["epoch"]


def _out_of_memory(device: torch.device, epoch: int, step: int, batch: int, img_size: Any) -> TrainingFailed:
    """The failure of an epoch that ran out of memory (the CUDA cache emptied first, so the next trial has it)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return TrainingFailed(
        f"out of memory on {device} at epoch {epoch} step {step} (batch_size {batch}, img_size {img_size}); "
        f"lower batch_size or img_size",
        kind="oom",
        epoch=epoch,
        step=step,
    )


@torch.no_grad()
def _evaluate(
    runner: nn.Module, dd: DeviceData, batch_size: int, autocast: Callable[[], AbstractContextManager[Any]]
) -> tuple[float, float, str]:
    """(accuracy, mean loss, which examples were right as :func:`trainers.bitmap.pack` text) on the validation
    set, in its order."""
    runner.eval()
    right: list[Tensor] = []
    loss = torch.zeros((), dtype=torch.float64, device=dd.device)
    for x, y in dd.val_batches(batch_size):
        with autocast():
            logits = runner(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        right.append(logits.argmax(1) == y)
    correct = torch.cat(right).cpu()
    return int(correct.sum()) / dd.num_val, float(loss) / dd.num_val, bitmap.pack(correct)


def _save(
    path: str | Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    epoch: int,
    history: list[EpochResult],
    cfg: TrainConfig,
    device: torch.device,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "epoch": epoch,
        "history": [r.to_dict() for r in history],
        "fingerprint": cfg.resume_fingerprint(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a trial killed mid-save keeps its previous checkpoint
