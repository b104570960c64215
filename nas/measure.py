"""Throughput, latency, parameters, FLOPs and peak training memory of one architecture on one device.

The method is timm's ``benchmark.py`` (which the wheel does not ship; specs/landscape.md §Throughput): eval
mode + ``inference_mode``, one random batch reused, ``warmup`` untimed steps, ``steps`` timed steps closed by
``torch.cuda.synchronize()``, images/s = batch x steps / elapsed, TF32 and ``cudnn.benchmark`` on, bf16
autocast and channels_last on CUDA. Two differences, both on purpose:

* the timed loop is repeated ``repeats`` times and we report the median with its spread (IQR, CV, min, max,
  every value) — timm reports one number with no spread;
* on OOM timm silently halves the batch; we halve it too but record the batch actually used and
  ``batch_reduced`` in the result (and its notes).

Throughput is a property of (architecture, device, batch, resolution, precision, compile mode), not of a trial:
:class:`ThroughputKey` names that tuple for the engine's cache. ``exclusive`` is a context manager the caller
provides (normally ``DeviceLock(device).exclusive()``) so that no training runs on the device meanwhile.
Imports torch and the standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from nas.cost import model_flops
from nas.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
COMPILE_MODES = (None, "default", "max-autotune")
ModelOrFactory = nn.Module | Callable[[], nn.Module]


@dataclass(frozen=True)
class ThroughputKey:
    """What a cached throughput depends on; ``batch`` is the *requested* batch (known before measuring)."""

    arch_id: str
    device: str
    batch: int
    resolution: tuple[int, int]
    precision: str
    compile: str

    def __str__(self) -> str:
        h, w = self.resolution
        dev = self.device.replace("|", "/")
        return f"{self.arch_id}|{dev}|b{self.batch}|{h}x{w}|{self.precision}|{self.compile}"

    @classmethod
    def from_str(cls, text: str) -> ThroughputKey:
        arch_id, dev, b, res, precision, comp = text.split("|")
        h, w = res.split("x")
        return cls(arch_id, dev, int(b[1:]), (int(h), int(w)), precision, comp)


@dataclass
class ThroughputResult:
    """Inference throughput (images/s) over repeated timm-style timed loops, with the spread kept."""

    median: float
    iqr: float
    cv: float
    min: float
    max: float
    values: list[float]
    batch: int
    requested_batch: int
    batch_reduced: bool
    device: str
    precision: str
    resolution: tuple[int, int]
    compile: str
    channels_last: bool
    latency_ms_b1: float | None
    params: int
    flops: int
    peak_train_mem_bytes: int | None
    train_batch: int | None
    repeats: int
    warmup: int
    steps: int
    key: ThroughputKey
    torch_version: str = torch.__version__
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists, the key its string form)."""
        d = asdict(self)
        d["resolution"] = list(self.resolution)
        d["key"] = str(self.key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThroughputResult:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["resolution"] = tuple(kw["resolution"])
        kw["key"] = ThroughputKey.from_str(kw["key"]) if isinstance(kw["key"], str) else kw["key"]
        kw["values"] = list(kw["values"])
        kw["notes"] = list(kw.get("notes", []))
        return cls(**kw)


# -- resolution of "auto" settings (shared by the measurement and by cache-key construction) ---------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if any, else CPU; an unavailable CUDA request is a one-line error.
    The one device resolver (trainers.proxy's, which the proxy trainer uses too)."""
    from trainers.errors import TrainerConfigError
    from trainers.proxy import resolve_device as _resolve

    try:
        return _resolve(str(device))
    except (TrainerConfigError, RuntimeError) as exc:
        raise ConfigError(f"measure: device={str(device)!r}: {exc}; use auto, cpu or cuda[:N]") from None


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str | torch.device = "auto") -> str:
    """Human name: the GPU's name, or the CPU model with the thread count torch uses."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        return f"{cpu_model_name()} ({torch.get_num_threads()} threads)"
    return str(dev)


def device_lock_id(device: str | torch.device = "auto") -> str:
    """A name for :class:`nas.devlock.DeviceLock` that identifies the *physical* device on this node.

    Not the human name: two GPUs of one model share that, and under Ray each worker's ``cuda:0`` can be a
    different GPU (``CUDA_VISIBLE_DEVICES`` remaps indices). The GPU's UUID is stable across processes.
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev.type
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
    if uuid is not None:
        return f"cuda-{uuid}"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"cuda-{visible[idx] if idx < len(visible) else idx}"


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"measure: precision={precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    return precision


def _resolution(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        h = w = img_size
    elif isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        h, w = (int(v) for v in img_size)
    else:
        raise ConfigError(f"measure: img_size={img_size!r} must be an int or [h, w]; e.g. img_size=224")
    if h < 1 or w < 1:
        raise ConfigError(f"measure: img_size={img_size!r} must be positive")
    return h, w


def _compile_name(compile_mode: str | None) -> str:
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"measure: compile_mode={compile_mode!r} is unknown; use None (eager), 'default' or 'max-autotune'"
        )
    return "eager" if compile_mode is None else compile_mode


def make_key(
    arch_id: str,
    *,
    img_size: int | tuple[int, int],
    batch_size: int = 256,
    device: str | torch.device = "auto",
    precision: str = "auto",
    compile_mode: str | None = None,
) -> ThroughputKey:
    """The cache key :func:`measure_throughput` would report, computed without measuring."""
    dev = resolve_device(device)
    return ThroughputKey(
        arch_id,
        device_name(dev),
        int(batch_size),
        _resolution(img_size),
        resolve_precision(precision, dev),
        _compile_name(compile_mode),
    )


# -- measurement ----------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back (a no-op for the cache on CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _fast_backend(device: torch.device) -> Iterator[None]:
    """TF32 + cudnn.benchmark as timm's benchmark sets them; restored afterwards (they are process-global).

    Uses the per-backend ``fp32_precision`` API where torch has it: reading the legacy getters raises once
    anything in the process has used the new API ("mix of the legacy and new APIs").
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)  # the per-backend API exists from torch 2.9 on
    new_api = hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision")
    if new_api:
        prev = (matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark)
        matmul.fp32_precision = conv.fp32_precision = "tf32"
    else:
        prev = (torch.get_float32_matmul_precision(), cudnn.allow_tf32, cudnn.benchmark)
        torch.set_float32_matmul_precision("high")
        cudnn.allow_tf32 = True
    cudnn.benchmark = True
    try:
        yield
    finally:
        if new_api:
            matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark = prev
        else:
            torch.set_float32_matmul_precision(prev[0])
            cudnn.allow_tf32, cudnn.benchmark = prev[1], prev[2]


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed_loop(model: nn.Module, x: torch.Tensor, steps: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    sync(device)
    return time.perf_counter() - t0


def _repeated(runner: Any, x: torch.Tensor, warmup: int, steps: int, repeats: int, dev: torch.device) -> list[float]:
    """Seconds per timed loop of ``steps`` calls, ``repeats`` times, after ``warmup`` untimed calls."""
    if warmup:
        _timed_loop(runner, x, warmup, dev)
    return [_timed_loop(runner, x, steps, dev) for _ in range(repeats)]


def _input(batch: int, in_chans: int, res: tuple[int, int], device: torch.device, cl: bool) -> torch.Tensor:
    x = torch.randn(batch, in_chans, *res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def _peak_train_mem(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> int:
    """Peak CUDA memory of one forward+backward; buffers (BN stats) and grads are restored afterwards."""
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train()
    try:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with _autocast(device, precision):
            out = model(x)
        loss = (out if isinstance(out, torch.Tensor) else out[0]).float().square().mean()
        loss.backward()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])


def _stats(values: list[float]) -> tuple[float, float, float]:
    med = statistics.median(values)
    if len(values) < 2:
        return med, 0.0, 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if mean > 0 else 0.0
    return med, q3 - q1, cv


def measure_throughput(
    model_or_factory: ModelOrFactory,
    *,
    img_size: int | tuple[int, int],
    in_chans: int,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    compile_mode: str | None = None,
    warmup: int = 10,
    steps: int = 40,
    repeats: int = 5,
    exclusive: contextlib.AbstractContextManager[Any] | None = None,
    latency: bool = True,
    train_batch_size: int | None = None,
    arch_id: str = "",
) -> ThroughputResult:
    """Measure images/s the way timm's benchmark.py does, repeated ``repeats`` times, with the spread.

    ``model_or_factory`` is a module or a zero-argument callable returning one (built inside the exclusive
    section); a module passed in is moved to the device and left in eval mode (channels_last on CUDA).
    ``exclusive`` is entered once around everything (build, FLOPs, memory, timing). On CUDA OOM the batch is
    halved and the timing restarts; the batch used is recorded. ``train_batch_size`` enables the
    peak-training-memory probe (CUDA only; None on CPU, with a note).
    """
    dev = resolve_device(device)
    res = _resolution(img_size)
    prec = resolve_precision(precision, dev)
    comp = _compile_name(compile_mode)
    _check_counts(batch_size=batch_size, in_chans=in_chans, warmup=warmup, steps=steps, repeats=repeats)
    if train_batch_size is not None and (not isinstance(train_batch_size, int) or train_batch_size < 1):
        raise ConfigError(f"measure: train_batch_size={train_batch_size!r} must be None or an int >= 1")
    cl = dev.type == "cuda" if channels_last is None else bool(channels_last)
    dname = device_name(dev)
    notes: list[str] = []

    with exclusive if exclusive is not None else contextlib.nullcontext(), _fast_backend(dev):
        model = _placed(model_or_factory, dev, cl)
        params = sum(p.numel() for p in model.parameters())
        # fp32, no autocast: FLOPs are a property of the architecture (analytic for ours), not of the precision
        inputs = _Inputs(in_chans, res, dev, cl, prec)
        flops = model_flops(model, inputs.batch(1))

        peak_mem = None if train_batch_size is None else _peak_or_note(model, train_batch_size, inputs, notes)
        runner = torch.compile(model, mode=compile_mode) if compile_mode is not None else model
        batch, values = _timed_with_backoff(runner, batch_size, inputs, (warmup, steps, repeats), notes)

        latency_ms = _latency_ms(runner, inputs, (warmup, steps, repeats)) if latency else None

    med, iqr, cv = _stats(values)
    key = ThroughputKey(arch_id, dname, batch_size, res, prec, comp)
    return ThroughputResult(  # positional, in field order (see the class)
        med, iqr, cv, min(values), max(values), values, batch, batch_size, batch != batch_size, dname, prec, res,
        comp, cl, latency_ms, int(params), flops, peak_mem, train_batch_size, repeats, warmup, steps, key, notes=notes,
    )  # fmt: skip


def _placed(model_or_factory: ModelOrFactory, dev: torch.device, cl: bool) -> nn.Module:
    """The module (built now if a factory) on the device, channels-last if asked, in eval mode."""
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"measure: the factory returned {type(model).__name__}, expected an nn.Module")
    model = model.to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


@dataclass(frozen=True)
class _Inputs:
    """The measured inputs: channels, resolution, device, memory format, precision."""

    in_chans: int
    res: tuple[int, int]
    dev: torch.device
    cl: bool
    prec: str

    def batch(self, n: int) -> torch.Tensor:
        return _input(n, self.in_chans, self.res, self.dev, self.cl)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return _autocast(self.dev, self.prec)


def _latency_ms(runner: Any, inputs: _Inputs, counts: tuple[int, int, int]) -> float:
    """Median milliseconds per batch-1 forward pass (``counts`` = warmup, steps, repeats)."""
    warmup, steps, repeats = counts
    x1 = inputs.batch(1)
    with torch.inference_mode(), inputs.autocast():
        lat = [1000.0 * t / steps for t in _repeated(runner, x1, warmup, steps, repeats, inputs.dev)]
    return statistics.median(lat)


def _check_counts(**counts: Any) -> None:
    """Every count of a measurement is an int, at least 1 (``warmup`` at least 0)."""
    for name, v in counts.items():
        lo = 0 if name == "warmup" else 1
        if not isinstance(v, int) or v < lo:
            raise ConfigError(f"measure: {name}={v!r} must be an int >= {lo}")


def _peak_or_note(model: nn.Module, batch: int, inputs: _Inputs, notes: list[str]) -> int | None:
    """Peak training memory at ``batch`` on CUDA; None with a note on CPU or on OOM (the throughput goes on)."""
    if inputs.dev.type != "cuda":
        notes.append("peak training memory is measured on CUDA only (None on CPU)")
        return None
    peak: int | None = None
    try:
        peak = _peak_train_mem(model, inputs.batch(batch), inputs.dev, inputs.prec)
    except Exception as exc:  # OOM: reported as a note; anything else re-raised
        if not _is_oom(exc):
            raise
        notes.append(f"peak training memory: OOM at train batch {batch}")
    free_memory(inputs.dev)
    return peak


def _timed_with_backoff(
    runner: Any, batch_size: int, inputs: _Inputs, counts: tuple[int, int, int], notes: list[str]
) -> tuple[int, list[float]]:
    """Images/s of ``repeats`` timings (``counts`` = warmup, steps, repeats), the batch halved on OOM until it fits.
    Returns the batch used and the values."""
    warmup, steps, repeats = counts
    batch = batch_size
    while True:
        try:
            x = inputs.batch(batch)
            with torch.inference_mode(), inputs.autocast():
                values = [batch * steps / t for t in _repeated(runner, x, warmup, steps, repeats, inputs.dev)]
            break
        except Exception as exc:  # OOM: halve the batch and time again; anything else re-raised
            if not _is_oom(exc) or batch == 1:
                raise
        # Freed only here, outside the except block: the traceback pins the failed step's tensors.
        x = None
        free_memory(inputs.dev)
        notes.append(f"OOM at batch {batch}; retried at {batch // 2}")
        batch //= 2
    del x
    if batch != batch_size:
        notes.append(f"batch reduced from {batch_size} to {batch} (OOM)")
    return batch, values
