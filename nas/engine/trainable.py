"""What a Ray worker runs for one trial: build the model, measure throughput (exclusive device access, unless
cached), proxy-train it reporting every epoch, hand back the weights of a finished trial.

Runs in a Ray worker process; writes nothing to the study storage (the driver is the only writer) and reports
everything through ``ray.tune.report`` as :class:`~nas.engine.messages.EpochReport`. The weights of a trial that
reaches full fidelity travel as a Tune checkpoint, so Ray Tune's storage (``ray.storage_path``: a local folder,
an NFS mount, or a pyarrow URI such as ``s3://``) holds them, not the worker's disk: a cluster needs no shared
working directory. Any failure a trial can cause (NaN loss, out-of-memory, a bad architecture) is reported as
``EpochReport(failed=reason)`` so the driver stores it as FAIL with its reason and the study goes on.

:func:`trial_reports` is the whole trial without Ray (the GPU suite runs it directly). How it picks its device
and names the device lock is a *device layer*: the real one (CUDA or CPU), or — to test GPU scheduling on a
machine without GPUs — the ``module:attribute`` that ``$NAS_DEVICE_LAYER`` names.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nas.engine.messages import EpochReport, TrialPayload

_DATA_CACHE: dict[str, Any] = {}  # dataset JSON -> decoded splits (CPU), reused while the worker lives
_TRIALS_HERE = [0]  # trials this worker process has started: its first pays the start and the data
DEVICE_LAYER_ENV = "NAS_DEVICE_LAYER"
WEIGHTS_FILE = "model.safetensors"
Weights = dict[str, Any]  # a CPU state dict


class RealDevices:
    """The device layer of a real machine: ``auto`` is the first visible CUDA device, else the CPU; one lock per
    physical device on this node (fractional-GPU trials share it; a GPU is named by its UUID because
    CUDA_VISIBLE_DEVICES remaps indices per Ray worker)."""

    def resolve(self, spec: str) -> Any:
        """The torch device a ``train.device`` spec names (``auto``: the first visible CUDA device, else the CPU)."""
        from nas.measure import resolve_device

        return resolve_device(spec)

    def lock(self, device: Any, lock_dir: str | None) -> Any:
        """The device lock of ``device`` on this node (one per physical device)."""
        from nas.devlock import DeviceLock
        from nas.measure import device_lock_id

        return DeviceLock(f"{socket.gethostname()}-{device_lock_id(device)}", lock_dir)

    def visible(self) -> str | None:
        """``CUDA_VISIBLE_DEVICES`` as Ray set it for this worker (None if unset)."""
        return os.environ.get("CUDA_VISIBLE_DEVICES")


def device_layer() -> Any:
    """:class:`RealDevices`, or the class ``$NAS_DEVICE_LAYER`` (``module:attribute``) names."""
    spec = os.environ.get(DEVICE_LAYER_ENV)
    if not spec:
        return RealDevices()
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


def _node_id() -> str:
    """Ray's node id inside a Ray worker; the host name elsewhere (never starts a Ray runtime to ask)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except (ImportError, RuntimeError):  # no Ray here, or no runtime context: the host names the node
        pass
    return socket.gethostname()


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` is a :class:`TrialPayload` (``TrialPayload.to_config``)."""
    from ray import tune
    from safetensors.torch import save_file

    for report, weights in guarded_reports(TrialPayload.from_config(config)):
        if weights is None:
            tune.report(report.to_result())
            continue
        with tempfile.TemporaryDirectory() as tmp:  # Tune copies it into its storage before report returns
            save_file(weights, os.path.join(tmp, WEIGHTS_FILE))
            tune.report(report.to_result(), checkpoint=tune.Checkpoint.from_directory(tmp))


def guarded_reports(p: TrialPayload) -> Iterator[tuple[EpochReport, Weights | None]]:
    """:func:`trial_reports`, with anything the trial raises turned into its last report, ``failed`` with the
    reason (:func:`failure_reason`): a trial's failure is its result and never kills the study. What every executor
    runs (Ray's ``run_trial``, a process pool, the GPU suite), so none rewrites the conversion."""
    last_epoch = 0
    try:
        for report, weights in trial_reports(p):
            last_epoch = report.epoch
            yield report, weights
    except Exception as e:
        yield EpochReport(epoch=last_epoch, failed=failure_reason(e)), None


def failure_reason(e: BaseException) -> str:
    """One line for a trial's failure: our own errors' message; anyone else's type, message and where it arose."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if type(e).__module__.startswith(("nas", "trainers")):
        return msg[:500]
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    loc = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(e).__name__}: {msg}"[:480] + loc


@contextlib.contextmanager
def _timed_hold(hold: Any, phases: dict[str, float]) -> Iterator[None]:
    """Enter ``hold`` (the device lock held exclusively) and note how long it took to get (``lock_wait_s``) and how
    long it was held (``exclusive_s``): while a trial measures, every other trial on the device stands still."""
    t0 = time.perf_counter()
    with hold:
        t1 = time.perf_counter()
        phases["lock_wait_s"] = t1 - t0
        try:
            yield
        finally:
            phases["exclusive_s"] = time.perf_counter() - t1


def measure(
    p: TrialPayload, device: Any, lock: Any, threads: int, train_batch: int, phases: dict[str, float] | None = None
) -> dict[str, Any]:
    """The trial's throughput: the cached measurement for this (arch, device, settings), else measured now with
    the device to itself (the wait for it and the hold go in ``phases``). Returns ``ThroughputResult.to_dict()``
    plus ``cached``."""
    import timm
    import torch

    import nas.models  # noqa: F401  (timm entrypoints in this worker)
    from nas.measure import make_key, measure_throughput

    tp = p.throughput
    torch.set_num_threads(tp.get("threads") or threads)  # part of the CPU device name, hence of the key
    try:
        key = make_key(
            p.arch_id,
            img_size=p.arch["img_size"],
            batch_size=tp["batch_size"],
            device=device,
            precision=tp["precision"],
            compile_mode=tp["compile"],
        )
        cached = p.cached_throughput.get(str(key))
        if cached is not None:
            return {**cached, "cached": True}
        result = measure_throughput(
            lambda: timm.create_model("mixerformer", **p.arch),
            img_size=p.arch["img_size"],
            in_chans=p.arch["in_chans"],
            batch_size=tp["batch_size"],
            device=device,
            precision=tp["precision"],
            compile_mode=tp["compile"],
            warmup=tp["warmup"],
            steps=tp["steps"],
            repeats=tp["repeats"],
            exclusive=_timed_hold(lock.exclusive(), phases if phases is not None else {}),
            train_batch_size=train_batch,
            arch_id=p.arch_id,
        )
        return {**result.to_dict(), "cached": False}
    finally:
        torch.set_num_threads(threads)


def train(
    p: TrialPayload,
    device: Any,
    lock: Any,
    throughput: dict[str, Any],
    where: dict[str, Any],
    phases: dict[str, float] | None = None,
) -> Iterator[tuple[EpochReport, Weights | None]]:
    """Proxy-train the architecture (data decoded once per worker process), one report per epoch; the last epoch
    of a trial that reaches full fidelity carries its weights (a CPU state dict). ``phases`` (seconds by phase,
    :data:`nas.engine.messages.PHASES`) gains the data, build, epochs and weights times and rides on every report."""
    phases = phases if phases is not None else {}
    import timm
    import torch

    import nas.models  # noqa: F401
    from trainers.config import DataConfig, TrainConfig
    from trainers.data import load_dataset, to_device_data
    from trainers.proxy import iter_fit

    train_cfg = TrainConfig.model_validate(p.train)
    data_cfg = DataConfig.model_validate(p.dataset)
    dkey = data_cfg.model_dump_json()
    t0 = time.perf_counter()
    if dkey not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[dkey] = load_dataset(data_cfg)
    splits = _DATA_CACHE[dkey]
    data = to_device_data(splits, device)
    t1 = time.perf_counter()
    torch.manual_seed(train_cfg.seed)
    model = timm.create_model("mixerformer", **p.arch)
    phases.update(data_s=t1 - t0, build_s=time.perf_counter() - t1, epochs_s=0.0, weights_s=0.0)
    ckpt = resume_file(p)
    restored = restored_epochs(ckpt, train_cfg.epochs)
    started = time.time() - sum(ep.seconds for ep, _ in restored)
    where = {**where, "val_set": splits.val_fingerprint, "full": train_cfg.epochs}
    for ep, weights in restored:  # reported first: the new trial's curve is whole
        yield _report(ep, time.time() - started, throughput, where, restored=True), weights
    for ep in iter_fit(model, train_cfg, data, checkpoint=ckpt, step_guard=lock.shared):
        weights = None
        phases["epochs_s"] += ep.seconds
        if ep.epoch == train_cfg.epochs:  # full fidelity: keep the weights for export
            t0 = time.perf_counter()
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            phases["weights_s"] = time.perf_counter() - t0
        yield _report(ep, time.time() - started, throughput, where, phases=dict(phases)), weights


def _report(ep: Any, wall_s: float, throughput: dict[str, Any], where: dict[str, Any], **extra: Any) -> EpochReport:
    """The report of one trainer epoch; the full-fidelity epoch (``where["full"]``) also carries which validation
    examples it got right and the validation set's fingerprint (an evaluation the product can compare paired)."""
    where = dict(where)
    val_set, full = where.pop("val_set"), where.pop("full")
    if ep.epoch == full and ep.val_correct is not None:
        extra.update(val_correct=ep.val_correct, val_set=val_set)
    return EpochReport(
        **{k: getattr(ep, k) for k in ("epoch", *EpochReport.CURVE_FIELDS)},  # the trainer's names are ours
        wall_time_s=wall_s,
        throughput=throughput,
        **where,
        **extra,
    )


def resume_file(p: TrialPayload) -> Path | None:
    """The trial's checkpoint file, if its folder is reachable from this worker (the driver's node, or a filesystem
    shared with it); None elsewhere: the trial trains without one rather than leave files on a foreign node."""
    if p.resume is None:
        return None
    path = Path(p.resume)
    return path if path.parent.is_dir() else None


def restored_epochs(path: Path | None, epochs: int) -> list[tuple[Any, Weights | None]]:
    """The epochs an interrupted run of this architecture trained, from its checkpoint (the trainer continues after
    them), with the weights on a final epoch. An unreadable checkpoint is deleted: the trial starts over."""
    from trainers.errors import CheckpointError
    from trainers.proxy import EpochResult, read_checkpoint

    if path is None or not path.is_file():
        return []
    try:
        state = read_checkpoint(path)
    except CheckpointError:
        path.unlink(missing_ok=True)
        return []
    history = [EpochResult(**h) for h in state["history"]]
    final = {k: v.contiguous() for k, v in state["model"].items()}
    return [(ep, final if ep.epoch >= epochs else None) for ep in history]


def warm(dataset: dict[str, Any]) -> float:
    """Ready a worker process before its first trial: import torch, timm and the model code, and decode the study's
    dataset into this process's cache (what a worker's first trial pays otherwise). Returns the seconds it took."""
    t0 = time.perf_counter()
    import timm  # noqa: F401
    import torch  # noqa: F401

    import nas.models  # noqa: F401
    import trainers.proxy  # noqa: F401
    from trainers.config import DataConfig
    from trainers.data import load_dataset

    data_cfg = DataConfig.model_validate(dataset)
    _DATA_CACHE.clear()
    _DATA_CACHE[data_cfg.model_dump_json()] = load_dataset(data_cfg)
    return time.perf_counter() - t0


def trial_reports(p: TrialPayload) -> Iterator[tuple[EpochReport, Weights | None]]:
    """Measure, then train: the whole trial as a stream of (epoch report, weights of the final epoch or None).
    Every report carries the trial's phase times so far (:data:`nas.engine.messages.PHASES`)."""
    import torch

    from trainers.config import TrainConfig

    _TRIALS_HERE[0] += 1
    phases = {"start_s": max(0.0, time.time() - p.sent_at) if p.sent_at else 0.0,  # handed out -> running here
              "worker_trial": _TRIALS_HERE[0]}  # fmt: skip
    threads = max(1, int(p.cpus))
    torch.set_num_threads(threads)
    train_cfg = TrainConfig.model_validate(p.train)
    layer = device_layer()
    device = layer.resolve(train_cfg.device)
    lock = layer.lock(device, p.lock_dir)
    where = {"pid": os.getpid(), "node": _node_id(), "device_lock": lock.device_name, "visible_gpus": layer.visible()}
    t0 = time.perf_counter()
    throughput = measure(p, device, lock, threads, train_cfg.batch_size, phases)
    phases["measure_s"] = time.perf_counter() - t0
    yield from train(p, device, lock, throughput, where, phases)
