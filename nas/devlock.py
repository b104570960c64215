"""A per-device reader/writer lock shared by every process of one node.

Training steps take the lock *shared*; a throughput measurement takes it *exclusive*, so a measurement never
runs while a trial trains on the same device (ARCHITECTURE.md: "measure it with no other work on that
device"). Ray Tune runs each trial in its own worker process, so a ``threading`` lock is not enough: the lock
is ``fcntl.flock`` on a file per device, which the kernel releases when the holder dies.

Plain ``flock`` has no writer preference: while overlapping training steps keep a shared lock alive, an
exclusive request waits forever. We add the classic turnstile (Courtois, Heymans & Parnas, "Concurrent control
with readers and writers", CACM 1971; the "no-starve" readers-writers solution): a second lock file that a
reader holds exclusively only for the instant it takes its shared lock, and that a writer holds for as long
as it waits for and holds the exclusive lock. A waiting writer therefore blocks new readers, current readers
drain, and the writer's wait is bounded by the longest single shared hold.

Only the standard library is imported: Ray ships the object to workers (it pickles to its name and folder;
file descriptors are opened lazily in each process and thread), and a worker can load this module cheaply.
Unix only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR_ENV = "NAS_LOCK_DIR"
DEFAULT_LOCK_SUBDIR = "mixer-nas-locks"
# Poll interval for timed waits: flock itself cannot time out, so a timed wait retries LOCK_NB.
_POLL_S = 0.005


def default_lock_dir() -> Path:
    """``$NAS_LOCK_DIR`` if set, else ``<system temp dir>/mixer-nas-locks``."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / DEFAULT_LOCK_SUBDIR


def _file_stem(device_name: str) -> str:
    # Readable but collision-free: two names that sanitise alike still get distinct files.
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", device_name).strip("_")[:60] or "device"
    digest = hashlib.sha256(device_name.encode()).hexdigest()[:10]
    return f"{safe}-{digest}"


class _Held(threading.local):
    """Per-thread state: file descriptors (opened lazily) and how deep this thread holds the lock."""

    pid: int | None = None
    lock_fd: int | None = None
    turn_fd: int | None = None
    mode: str | None = None  # None, "shared" or "exclusive"
    depth: int = 0


class DeviceLock:
    """Cross-process reader/writer lock for one device, with writer preference.

    Built on ``fcntl.flock`` (advisory, released by the kernel when the holder exits or is killed) plus a
    turnstile file for writer preference (Courtois et al., CACM 1971). ``shared()`` is for training steps,
    ``exclusive()`` for measurements. Each thread of each process gets its own file descriptors, so threads
    and processes exclude each other alike. Re-entering the *same* mode in one thread nests (a counter);
    asking for exclusive while holding shared in the same thread raises ``RuntimeError`` (it would deadlock).
    """

    def __init__(self, device_name: str, lock_dir: str | os.PathLike[str] | None = None) -> None:
        if not device_name:
            raise ValueError("DeviceLock: device_name must be a non-empty string")
        self.device_name = device_name
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        stem = _file_stem(device_name)
        self.lock_path = self.lock_dir / f"{stem}.lock"
        self.turnstile_path = self.lock_dir / f"{stem}.turnstile"
        self._held = _Held()

    # -- pickling: only the name and folder travel; descriptors are per process -------------------------
    def __getstate__(self) -> dict[str, str]:
        return {"device_name": self.device_name, "lock_dir": str(self.lock_dir)}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["device_name"], state["lock_dir"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"DeviceLock({self.device_name!r}, lock_dir={str(self.lock_dir)!r})"

    @property
    def held(self) -> str | None:
        """The mode this thread holds (``"shared"``/``"exclusive"``) or None."""
        h = self._state()
        return h.mode

    # -- public context managers ------------------------------------------------------------------------
    @contextlib.contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[DeviceLock]:
        """Hold the lock shared (many holders at once; none while a writer waits or holds)."""
        h = self._state()
        if h.mode is not None:
            # Nesting: the outer hold already excludes writers; re-taking the turnstile could deadlock
            # against a writer that waits on our own shared hold.
            with self._nested(h):
                yield self
            return
        self._take(h, fcntl.LOCK_SH, timeout)
        with self._holding(h, "shared", (h.lock_fd,)):
            yield self

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[DeviceLock]:
        """Hold the lock exclusively; raises ``TimeoutError`` if not acquired within ``timeout`` seconds."""
        h = self._state()
        if h.mode == "shared":
            raise RuntimeError(
                f"DeviceLock({self.device_name!r}): exclusive() requested while this thread holds it shared "
                "(would deadlock); release the shared hold first"
            )
        if h.mode == "exclusive":
            with self._nested(h):
                yield self
            return
        self._take(h, fcntl.LOCK_EX, timeout)
        with self._holding(h, "exclusive", (h.lock_fd, h.turn_fd)):
            yield self

    def _take(self, h: _Held, op: int, timeout: float | None) -> None:
        """Turnstile first, then the lock with ``op``. A writer (``LOCK_EX``) keeps the turnstile until it lets go:
        holding it while waiting is what stops new readers from overtaking it; a reader passes straight through."""
        deadline = None if timeout is None else time.monotonic() + timeout
        assert h.turn_fd is not None and h.lock_fd is not None
        self._flock(h.turn_fd, fcntl.LOCK_EX, deadline)
        try:
            self._flock(h.lock_fd, op, deadline)
        except BaseException:
            fcntl.flock(h.turn_fd, fcntl.LOCK_UN)
            raise
        if op != fcntl.LOCK_EX:
            fcntl.flock(h.turn_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this thread's descriptors (releases anything it holds)."""
        h = self._held
        for name in ("lock_fd", "turn_fd"):
            fd = getattr(h, name)
            if fd is not None and h.pid == os.getpid():
                os.close(fd)
            setattr(h, name, None)
        h.pid, h.mode, h.depth = None, None, 0

    # -- internals --------------------------------------------------------------------------------------
    @staticmethod
    @contextlib.contextmanager
    def _nested(h: _Held) -> Iterator[None]:
        """Re-entering the mode this thread already holds: a counter, nothing to take."""
        h.depth += 1
        try:
            yield
        finally:
            h.depth -= 1

    @staticmethod
    @contextlib.contextmanager
    def _holding(h: _Held, mode: str, release: tuple[int | None, ...]) -> Iterator[None]:
        """This thread now holds ``mode``; the outermost exit unlocks ``release`` (in that order)."""
        h.mode, h.depth = mode, 1
        try:
            yield
        finally:
            h.depth -= 1
            if h.depth == 0:
                h.mode = None
                for fd in release:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _state(self) -> _Held:
        h = self._held
        if h.pid != os.getpid():
            # First use in this thread, or a forked child that inherited the parent's descriptors: those
            # share the parent's open file description (and its locks), so never reuse them.
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            h.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            h.turn_fd = os.open(self.turnstile_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            h.pid, h.mode, h.depth = os.getpid(), None, 0
        return h

    def _flock(self, fd: int, op: int, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(fd, op)
            return
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"DeviceLock({self.device_name!r}): not acquired before the timeout "
                        f"(lock file {self.lock_path})"
                    ) from None
                time.sleep(_POLL_S)
