"""End-to-end: real Ray runtime, real SQLite/PostgreSQL, real Fashion-MNIST slices (marked slow; CI runs them)."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from nas.engine.progress import Progress
from nas.engine.run import run_study
from tests.engine_fixtures import write_study

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
# Multi-node test clusters: Ray's single-machine switch (tests/conftest.py) refuses a second node, and Ray rewrites
# 127.0.0.1 into the host's network address; other loopback addresses are kept, so each node gets its own.
CLUSTER_ENV = {**ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from nas.engine.tune import init_ray

    init_ray(None, 2)
    yield
    ray.shutdown()


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name / 'study.db'}")


def _no_retraining(study: optuna.Study) -> None:
    trained = collections.Counter(
        t.user_attrs["arch_id"]
        for t in study.trials
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs
    )
    assert all(n == 1 for n in trained.values()), f"an architecture was trained twice: {trained}"


def test_study_completes_prunes_and_resumes(tmp_path, local_ray):
    path = write_study(tmp_path, "e2e")
    s1 = run_study(path, base_dir=tmp_path / "studies", progress=Progress(quiet=True))
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # the local runtime stays on loopback
    study = _study(tmp_path, "e2e")
    assert s1.added == 3 and len(study.trials) >= 3
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done, "the first trial at a rung is always kept, so at least one trial completes"
    for t in done:
        assert t.user_attrs["full_fidelity"] and t.user_attrs["fidelity"] == 2
        assert len(t.values) == 2 and 0 <= t.values[0] <= 1 and t.values[1] > 0
        assert t.intermediate_values.keys() == {1, 2}
        if "reused_from" not in t.user_attrs:
            uri = t.user_attrs["checkpoint"]  # persisted by Ray Tune into the study's storage_path
            assert uri.startswith(f"file://{(tmp_path / 'studies' / 'e2e' / 'ray').resolve()}/"), uri
            assert (Path(uri.removeprefix("file://")) / "model.safetensors").is_file()
        assert t.user_attrs["throughput"]["repeats"] == 2
    # six dominating trials at the rung: a new trial ranks >= 6 while keep = n // eta <= (6 + 5) // 2 = 5, so every
    # new trial is pruned at epoch 1 (a deterministic MO-ASHA decision)
    for i in range(6):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=[0.99 + i / 1000, 1e9 - i],
                user_attrs={
                    "curve": [{"epoch": 1, "val_acc": 0.99 + i / 1000}, {"epoch": 2, "val_acc": 0.999}],
                    "throughput": {"median": 1e9 - i},
                    "full_fidelity": True,
                    "arch_id": f"fake{i}",
                },
            )
        )
    before = {t.number: t.state for t in study.trials}
    s2 = run_study(path, overrides={"budget.n_trials": 2}, base_dir=tmp_path / "studies", progress=Progress(quiet=True))
    study = _study(tmp_path, "e2e")
    assert s2.added == 2
    assert {t.number: t.state for t in study.trials if t.number in before} == before, "earlier trials unchanged"
    new = [t for t in study.trials if t.number not in before]
    assert len(new) == 2
    for t in new:
        if "reused_from" in t.user_attrs:
            continue
        assert t.state == TrialState.PRUNED, (t.number, t.state, t.user_attrs.get("failure"))
        assert t.user_attrs["pruned_at"] == 1 and len(t.user_attrs["curve"]) == 1 and t.values is None
    front_numbers = {row["number"] for row in s2.front}
    assert not front_numbers & {t.number for t in study.trials if t.state != TrialState.COMPLETE}
    _no_retraining(study)


def test_killed_worker_fails_that_trial_and_the_study_goes_on(tmp_path, local_ray):
    path = write_study(
        tmp_path,
        "kill_worker",
        budget={"n_trials": 3, "max_concurrent": 1},
        ray={"max_failures": 0},
        pruner={"name": "none"},
    )
    killed: list[int] = []

    class KillFirstWorker(Progress):
        def event(self, kind, info):
            if kind == "epoch" and not killed and info.get("pid"):
                killed.append(info["number"])
                os.kill(info["pid"], signal.SIGKILL)

    run_study(path, base_dir=tmp_path / "studies", progress=KillFirstWorker(quiet=True))
    study = _study(tmp_path, "kill_worker")
    by_number = {t.number: t for t in study.trials}
    victim = by_number[killed[0]]
    assert victim.state == TrialState.FAIL
    assert "worker" in victim.user_attrs["failure"]
    others = [t for t in study.trials if t.number != killed[0] and "infeasible" not in t.user_attrs]
    assert len(others) == 2 and all(t.state == TrialState.COMPLETE for t in others)


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_driver_then_resume_loses_and_duplicates_nothing(tmp_path):
    path = write_study(
        tmp_path,
        "kill_driver",
        budget={"n_trials": 4, "max_concurrent": 1},
        pruner={"name": "none"},
        train={"epochs": 3, "max_batches_per_epoch": 10},
    )
    cmd = [sys.executable, "-m", "nas.cli", "search", str(path), "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    db = tmp_path / "studies" / "kill_driver" / "study.db"

    def one_done_one_running() -> bool:
        if not db.exists():
            return False
        try:
            st = optuna.load_study(study_name="kill_driver", storage=f"sqlite:///{db}")
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the driver is still creating the schema
            return False
        states = [t.state for t in st.trials]
        running = [t for t in st.trials if t.state == TrialState.RUNNING and t.user_attrs.get("curve")]
        return TrialState.COMPLETE in states and bool(running)

    try:
        _wait_for(one_done_one_running, 400, "a COMPLETE trial and a RUNNING trial with a curve")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray runtime it started: nothing shuts down cleanly
        proc.wait()
    st = optuna.load_study(study_name="kill_driver", storage=f"sqlite:///{db}")
    complete_before = {t.number: t.values for t in st.trials if t.state == TrialState.COMPLETE}
    orphan = [t.number for t in st.trials if t.state == TrialState.RUNNING]
    assert orphan
    out = subprocess.run(
        [*cmd[:-1], "--n-trials", "1"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=500
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    st = optuna.load_study(study_name="kill_driver", storage=f"sqlite:///{db}")
    trials = {t.number: t for t in st.trials}
    assert {n: trials[n].values for n in complete_before} == complete_before, "no completed trial lost or changed"
    for n in orphan:
        assert trials[n].state == TrialState.FAIL and "interrupted" in trials[n].user_attrs["failure"]
        retries = [t for t in st.trials if t.user_attrs.get("retry_of") == n]
        assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert retries[0].params == trials[n].params
    assert not [t for t in st.trials if t.state == TrialState.RUNNING]
    _no_retraining(st)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster(head_cpus: int, worker_cpus: int, worker_port: int | None = None, worker_cwd: Path | None = None):
    """A head (HEAD_IP) and one worker node (WORKER_IP), both on loopback addresses; yields the head's address. The
    worker's raylet listens on ``worker_port`` so a test can kill that node alone. The cluster lives in a temp dir of
    its own, and teardown stops only its processes (not ``ray stop``, which kills every Ray runtime of the machine,
    a user's running study included)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="nasray")  # short: Ray's socket paths live under it
    common = ["--disable-usage-stats"]
    subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", f"--node-ip-address={HEAD_IP}", "--include-dashboard=false",
         f"--num-cpus={head_cpus}", f"--temp-dir={temp_dir}", *common],
        env=CLUSTER_ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    try:
        extra = [f"--node-manager-port={worker_port}"] if worker_port else []
        subprocess.run(
            [ray_bin, "start", f"--address={HEAD_IP}:{port}", f"--node-ip-address={WORKER_IP}",
             f"--num-cpus={worker_cpus}", *common, *extra],
            env=CLUSTER_ENV,
            check=True,
            capture_output=True,
            timeout=120,
            cwd=worker_cwd,
        )  # fmt: skip
        yield f"{HEAD_IP}:{port}"
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_cluster(temp_dir: str) -> None:
    """SIGKILL the Ray processes of the cluster living in ``temp_dir``: those whose command line names it (GCS,
    raylets, monitors) and their descendants (agents and workers, which rename themselves)."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or ())]
    procs = set(roots)
    for root in roots:
        with contextlib.suppress(psutil.Error):
            procs.update(root.children(recursive=True))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(procs), timeout=30)


def test_two_node_local_cluster_runs_trials_on_both_nodes(tmp_path):
    """The worker node runs in another working directory: checkpoints reach the study through Ray Tune's storage,
    so `nas export --weights` works for trials that ran on either node."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with local_cluster(1, 1, worker_cwd=elsewhere) as address:
        path = write_study(
            tmp_path,
            "cluster",
            budget={"n_trials": 4, "max_concurrent": 2},
            pruner={"name": "none"},
            train={"max_batches_per_epoch": 20},
        )
        out = subprocess.run(
            [sys.executable, "-m", "nas.cli", "search", str(path), "--address", address, "--quiet"],
            cwd=tmp_path,
            env=CLUSTER_ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        st = optuna.load_study(
            study_name="cluster", storage=f"sqlite:///{tmp_path / 'studies' / 'cluster' / 'study.db'}"
        )
        done = [t for t in st.trials if t.state == TrialState.COMPLETE]
        nodes = {t.user_attrs.get("node") for t in done}
        assert len(nodes - {None}) == 2, f"trials ran on nodes {nodes}"
        for t in done:  # one export per node: each read back from Tune's storage
            out = subprocess.run(
                [sys.executable, "-m", "nas.cli", "export", "cluster", "--trial", str(t.number), "--weights",
                 "--out", f"exp{t.number}"],
                cwd=tmp_path, env=CLUSTER_ENV, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr[-1500:]
            assert (tmp_path / f"exp{t.number}" / "model.safetensors").is_file()
        assert not list(elsewhere.rglob("*.safetensors")), "weights landed in the worker's working directory"
        import ray

        ray.init(address=address)
        try:  # every node of the cluster is on a loopback address
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {HEAD_IP, WORKER_IP}
        finally:
            ray.shutdown()


def test_losing_the_only_node_that_fits_fails_the_study_loudly(tmp_path):
    """The head offers no CPU; the one worker node is killed while a trial runs: the retry can never be placed,
    and after the grace period the study stops with one line instead of waiting forever."""
    worker_port = _free_port()
    with local_cluster(0, 1, worker_port=worker_port) as address:
        path = write_study(
            tmp_path,
            "lost",
            budget={"n_trials": 3, "max_concurrent": 1},
            pruner={"name": "none"},
            train={"epochs": 3, "max_batches_per_epoch": 400},
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "nas.cli", "search", str(path), "--address", address],
            cwd=tmp_path,
            env={**CLUSTER_ENV, "NAS_PLACEMENT_GRACE_S": "6"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            db = tmp_path / "studies" / "lost" / "study.db"
            _wait_for(lambda: db.is_file() and _running(db), 180, "a trial running on the worker node")
            killed = subprocess.run(["pkill", "-f", f"node_manager_port={worker_port}"], capture_output=True)
            assert killed.returncode == 0, "the worker node's raylet was not found"
            t0 = time.monotonic()
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 2, (out[-1500:], err[-1500:])
    assert "no node of the Ray cluster can place a trial of 1 CPU/0 GPU" in err.strip().splitlines()[-1], err[-1500:]
    assert time.monotonic() - t0 < 240
    st = optuna.load_study(study_name="lost", storage=f"sqlite:///{tmp_path / 'studies' / 'lost' / 'study.db'}")
    assert not [t for t in st.trials if t.state == TrialState.RUNNING]  # told, not left dangling
    assert st.get_trials(states=(TrialState.WAITING,)), "the interrupted trial is queued for the next run"


def _running(db: Path) -> bool:
    try:
        st = optuna.load_study(study_name="lost", storage=f"sqlite:///{db}")
        return any(t.state == TrialState.RUNNING and t.user_attrs.get("curve") for t in st.trials)
    except Exception:
        return False


def test_postgresql_storage_shared_by_two_drivers(tmp_path):
    url = os.environ.get("NAS_TEST_POSTGRES_URL")
    if not url:  # scripts/test.sh starts a local PostgreSQL when run as root; CI must have it
        message = "NAS_TEST_POSTGRES_URL not set (scripts/test.sh starts a local PostgreSQL when run as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    name = f"pg_{os.getpid()}_{int(time.time())}"
    path = write_study(
        tmp_path,
        name,
        storage=url,
        budget={"n_trials": 2, "max_concurrent": 1},
        pruner={"name": "none"},
        resources={"cpus_per_trial": 1},
    )
    cmd = [sys.executable, "-m", "nas.cli", "search", str(path), "--quiet"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-1500:] for o in outs]
    st = optuna.load_study(study_name=name, storage=url)
    real = [t for t in st.trials if "infeasible" not in t.user_attrs]
    assert len(real) == 4
    assert all(t.state in (TrialState.COMPLETE,) for t in real), [(t.number, t.state) for t in real]
    assert len({t.user_attrs["driver"] for t in real}) == 2
    trained = collections.Counter(t.user_attrs["arch_id"] for t in real if "reused_from" not in t.user_attrs)
    assert max(trained.values()) == 1, f"an architecture was trained twice: {trained}"  # reused or waited for
    optuna.delete_study(study_name=name, storage=url)
