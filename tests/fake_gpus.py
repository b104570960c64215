"""A device layer for testing GPU scheduling on a machine without GPUs (``NAS_DEVICE_LAYER=tests.fake_gpus:FakeGpus``).

Ray is started with GPUs declared that do not exist; it still assigns GPU ids to trials and sets
``CUDA_VISIBLE_DEVICES`` for them. This layer trains on the CPU but names the device lock after the assigned GPU,
as the real layer names it after the GPU's UUID, and logs every hold of the lock (process, mode, start, end) to
``$NAS_FAKE_GPU_LOG/<pid>.jsonl`` so a test can check that a throughput measurement never overlaps another
trial's training on the same GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nas.devlock import DeviceLock


class LoggingLock(DeviceLock):
    def _log(self, mode: str, start: float) -> None:
        folder = os.environ.get("NAS_FAKE_GPU_LOG")
        if folder:
            with open(Path(folder) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"lock": self.device_name, "pid": os.getpid(), "mode": mode,
                                    "start": start, "end": time.time()}) + "\n")  # fmt: skip

    @contextlib.contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[DeviceLock]:
        with super().shared(timeout):
            start = time.time()
            yield self
            self._log("shared", start)

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[DeviceLock]:
        with super().exclusive(timeout):
            start = time.time()
            yield self
            self._log("exclusive", start)


class FakeGpus:
    def resolve(self, spec: str) -> torch.device:
        return torch.device("cpu")

    def lock(self, device: Any, lock_dir: str | None) -> DeviceLock:
        return LoggingLock(f"fake-gpu-{self.visible()}", lock_dir)

    def visible(self) -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")
