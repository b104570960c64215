"""What a Ray worker runs for one trial: build the model, measure throughput (exclusive device access, unless
cached), proxy-train it reporting every epoch, save the weights of a finished trial.

Runs in a Ray worker process; writes nothing to the study storage (the driver is the only writer) and reports
everything through ``ray.tune.report``. Any failure a trial can cause (NaN loss, out-of-memory, a bad
architecture) is reported as ``{"failed": reason}`` so the driver stores it as FAIL with its reason and the
study goes on.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

_DATA_CACHE: dict[str, Any] = {}  # dataset JSON -> decoded splits (CPU), reused while the worker lives


def device_lock_name(device: Any) -> str:
    """One lock per physical device on this node (fractional-GPU trials share it; a GPU is named by its UUID
    because CUDA_VISIBLE_DEVICES remaps indices per Ray worker)."""
    from nas.measure import device_lock_id

    return f"{socket.gethostname()}-{device_lock_id(device)}"


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return socket.gethostname()


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` is built by the driver (nas.engine.driver.Driver.next_config)."""
    from ray import tune

    last_epoch = 0
    try:
        for report in _trial_reports(config):
            last_epoch = report.get("epoch", last_epoch)
            tune.report(report)
    except Exception as e:  # everything a trial can raise ends as FAIL with its reason, never kills the study
        tune.report({"epoch": last_epoch, "failed": _reason(e)})


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if type(e).__module__.startswith(("nas", "trainers")):
        return msg[:500]
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    loc = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(e).__name__}: {msg}"[:480] + loc


def _trial_reports(config: dict[str, Any]):
    import timm
    import torch
    from safetensors.torch import save_file

    import nas.models  # noqa: F401  (timm entrypoints in this worker)
    from nas.devlock import DeviceLock
    from nas.measure import make_key, measure_throughput, resolve_device
    from trainers.config import DataConfig, TrainConfig
    from trainers.data import load_dataset, to_device_data
    from trainers.proxy import iter_fit

    threads = max(1, int(config.get("cpus", 1)))
    torch.set_num_threads(threads)
    train_cfg = TrainConfig.model_validate(config["train"])
    device = resolve_device(train_cfg.device)
    lock = DeviceLock(device_lock_name(device), config.get("lock_dir"))
    arch = config["arch"]

    def build() -> torch.nn.Module:
        return timm.create_model("mixerformer", **arch)

    # ---- throughput: a property of (arch, device, settings), measured once with the device to itself
    tp_cfg = config["throughput"]
    size = arch["img_size"]
    torch.set_num_threads(tp_cfg.get("threads") or threads)  # part of the CPU device name, hence of the key
    key = make_key(
        config["arch_id"],
        img_size=size,
        batch_size=tp_cfg["batch_size"],
        device=device,
        precision=tp_cfg["precision"],
        compile_mode=tp_cfg["compile"],
    )
    result = config.get("cached_throughput", {}).get(str(key))
    fresh = result is None
    if fresh:
        result = measure_throughput(
            build,
            img_size=size,
            in_chans=arch["in_chans"],
            batch_size=tp_cfg["batch_size"],
            device=device,
            precision=tp_cfg["precision"],
            compile_mode=tp_cfg["compile"],
            warmup=tp_cfg["warmup"],
            steps=tp_cfg["steps"],
            repeats=tp_cfg["repeats"],
            exclusive=lock.exclusive(),
            train_batch_size=train_cfg.batch_size,
            arch_id=config["arch_id"],
        ).to_dict()
    torch.set_num_threads(threads)
    tp = {**result, "cached": not fresh}

    # ---- data (decoded once per worker process) and the proxy training
    data_cfg = DataConfig.model_validate(config["dataset"])
    dkey = data_cfg.model_dump_json()
    if dkey not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[dkey] = load_dataset(data_cfg)
    data = to_device_data(_DATA_CACHE[dkey], device)
    torch.manual_seed(train_cfg.seed)
    model = build()
    started = time.time()
    where = {"pid": os.getpid(), "node": _node_id()}
    for ep in iter_fit(model, train_cfg, data, step_guard=lock.shared):
        row = {
            "epoch": ep.epoch,
            "val_acc": ep.val_acc,
            "val_loss": ep.val_loss,
            "train_loss": ep.train_loss,
            "seconds": ep.seconds,
            "images_per_s": ep.images_per_s,
            "tp_json": json.dumps(tp),
            "device": tp["device"],
            "wall_time_s": time.time() - started,
            **where,
        }
        if ep.epoch == train_cfg.epochs:  # full fidelity: keep the weights for export
            path = Path(config["checkpoint_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
            os.replace(tmp, path)
        yield row
