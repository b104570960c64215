"""DeviceLock across real processes (multiprocessing spawn): exclusion, sharing, writer preference, death.

Child processes load ``nas/devlock.py`` standalone (it imports only the standard library): importing the
``nas`` package registers timm models, which would cost seconds per spawned child on a small machine. One
test ships a pickled lock to a child, as Ray does.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
import types
from pathlib import Path

import pytest

CTX = mp.get_context("spawn")
WAIT = 60.0  # generous: a spawned child may take seconds to start on a loaded 2-core machine


def _standalone_lock(name: str, lock_dir: str):
    path = Path(__file__).resolve().parents[1] / "nas" / "devlock.py"
    spec = importlib.util.spec_from_file_location("_devlock_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.DeviceLock(name, lock_dir)


# -- child process bodies (module level so spawn can import them) --------------------------------------
def _try_shared(name, lock_dir, trying, out):
    lock = _standalone_lock(name, lock_dir)
    trying.set()
    with lock.shared():
        out.put(time.monotonic())


def _hold_until(name, lock_dir, mode, ready, release):
    lock = _standalone_lock(name, lock_dir)
    with getattr(lock, mode)():
        ready.set()
        release.wait(WAIT)


def _reader_stream(name, lock_dir, started, stop, active, hold_s):
    lock = _standalone_lock(name, lock_dir)
    while not stop.is_set():
        with lock.shared():
            with active.get_lock():
                active.value += 1
            started.set()
            time.sleep(hold_s)
            with active.get_lock():
                active.value -= 1


def _hold_forever(name, lock_dir, ready):
    lock = _standalone_lock(name, lock_dir)
    with lock.exclusive():
        ready.set()
        time.sleep(600)


def _pickled_try_shared(blob, out):
    # A bare `nas` package stands in for the real one so that unpickling imports nas/devlock.py alone: the
    # real nas/__init__ registers timm models (tens of seconds on a loaded machine). The pickle itself is
    # what a Ray worker receives.
    pkg = types.ModuleType("nas")
    pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "nas")]
    sys.modules.setdefault("nas", pkg)
    lock = pickle.loads(blob)
    try:
        with lock.shared(timeout=0.3):
            out.put("acquired")
    except TimeoutError:
        out.put("timeout")


# -- helpers -------------------------------------------------------------------------------------------
def _start(target, *args):
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _stop(*procs):
    for p in procs:
        p.join(WAIT)
        if p.is_alive():
            p.kill()
            p.join()


@pytest.fixture
def lock(tmp_path):
    from nas.devlock import DeviceLock

    return DeviceLock("cuda:0 Test GPU", tmp_path)


# -- cross-process behaviour ---------------------------------------------------------------------------
def test_exclusive_blocks_reader_in_other_process(lock):
    trying, out = CTX.Event(), CTX.Queue()
    with lock.exclusive():
        p = _start(_try_shared, lock.device_name, str(lock.lock_dir), trying, out)
        assert trying.wait(WAIT)
        time.sleep(0.4)  # the reader is now blocked on the lock
        assert out.empty()
        released_at = time.monotonic()
    acquired_at = out.get(timeout=WAIT)
    _stop(p)
    assert acquired_at >= released_at


def test_two_readers_hold_at_once_and_exclude_writer(lock):
    release = CTX.Event()
    readies = [CTX.Event(), CTX.Event()]
    procs = [_start(_hold_until, lock.device_name, str(lock.lock_dir), "shared", r, release) for r in readies]
    try:
        assert all(r.wait(WAIT) for r in readies)  # both inside shared() at the same time
        with pytest.raises(TimeoutError), lock.exclusive(timeout=0.2):
            pass
        with lock.shared(timeout=5):  # a third reader joins freely
            pass
    finally:
        release.set()
        _stop(*procs)
    with lock.exclusive(timeout=5):
        pass


def test_writer_is_not_starved_by_overlapping_readers(lock):
    stop, active = CTX.Event(), CTX.Value("i", 0)
    starteds = [CTX.Event(), CTX.Event()]
    procs = []
    try:
        for s in starteds:
            procs.append(_start(_reader_stream, lock.device_name, str(lock.lock_dir), s, stop, active, 0.1))
            assert s.wait(WAIT)
            time.sleep(0.05)  # offset the second stream so the shared lock is never free
        time.sleep(0.3)
        t0 = time.monotonic()
        with lock.exclusive(timeout=10):
            waited = time.monotonic() - t0
            time.sleep(0.2)
            assert active.value == 0  # no reader inside while the writer holds
    finally:
        stop.set()
        _stop(*procs)
    # bounded by one reader hold (0.1 s) plus scheduling noise on a loaded machine
    assert waited < 3.0


def test_lock_released_when_holder_is_killed(lock):
    ready = CTX.Event()
    p = _start(_hold_forever, lock.device_name, str(lock.lock_dir), ready)
    assert ready.wait(WAIT)
    with pytest.raises(TimeoutError), lock.shared(timeout=0.2):
        pass
    p.kill()
    p.join(WAIT)
    with lock.exclusive(timeout=5):
        assert lock.held == "exclusive"


def test_pickled_lock_works_in_spawned_child(lock):
    blob = pickle.dumps(lock)
    assert pickle.loads(blob).lock_path == lock.lock_path
    out = CTX.Queue()
    with lock.exclusive():
        p = _start(_pickled_try_shared, blob, out)
        assert out.get(timeout=WAIT) == "timeout"
    _stop(p)


# -- in-process behaviour ------------------------------------------------------------------------------
def test_two_instances_in_one_process_exclude_each_other(lock):
    from nas.devlock import DeviceLock

    other = DeviceLock(lock.device_name, lock.lock_dir)
    with lock.exclusive(), pytest.raises(TimeoutError), other.shared(timeout=0.05):
        pass
    with other.shared(), lock.shared(timeout=1):
        assert lock.held == other.held == "shared"


def test_threads_sharing_one_instance_exclude_each_other(lock):
    got = []

    def worker():
        try:
            with lock.shared(timeout=0.1):
                got.append("acquired")
        except TimeoutError:
            got.append("timeout")

    with lock.exclusive():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert got == ["timeout"]


def test_nesting_and_upgrade_guard(lock):
    with lock.shared():
        with lock.shared():
            assert lock.held == "shared"
        assert lock.held == "shared"  # inner exit must not release the outer hold
        with pytest.raises(RuntimeError, match="would deadlock"), lock.exclusive():
            pass
    assert lock.held is None
    with lock.exclusive(), lock.exclusive():
        assert lock.held == "exclusive"
    assert lock.held is None


def test_forked_child_does_not_reuse_parent_descriptors(lock):
    # The child's inherited descriptors share the parent's lock; the pid check must open fresh ones.
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    r, w = os.pipe()
    with lock.exclusive():
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = b"E"
            try:
                with lock.shared(timeout=0.2):
                    code = b"A"
            except TimeoutError:
                code = b"T"
            finally:
                os.write(w, code)
                os._exit(0)
        os.waitpid(pid, 0)
    assert os.read(r, 1) == b"T"


def test_lock_dir_default_and_file_names(tmp_path, monkeypatch):
    from nas.devlock import DeviceLock

    monkeypatch.setenv("NAS_LOCK_DIR", str(tmp_path / "locks"))
    a, b = DeviceLock("cuda:0"), DeviceLock("cuda_0")  # sanitise alike, must not collide
    assert a.lock_dir == tmp_path / "locks"
    assert a.lock_path != b.lock_path
    with a.exclusive(), b.exclusive(timeout=1):
        assert a.lock_path.exists() and b.lock_path.exists()
    with pytest.raises(ValueError):
        DeviceLock("")
