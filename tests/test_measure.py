"""nas.measure on CPU: the timm method (one reused batch, warm-up, timed steps), spread, OOM halving, lock."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch
from torch import nn

from nas.errors import ConfigError
from nas.measure import ThroughputKey, ThroughputResult, device_lock_id, make_key, measure_throughput
from tests.test_devlock import CTX, WAIT, _stop, _try_shared

SMALL = {"warmup": 2, "steps": 3, "repeats": 3}


class Probe(nn.Module):
    """Records every forward call; can sleep (known cost) or raise an injected CUDA OOM above a batch."""

    def __init__(self, sleep: float = 0.0, oom_above: int | None = None, on_first_call=None) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.sleep, self.oom_above, self.on_first_call = sleep, oom_above, on_first_call
        self.calls: list[dict] = []
        self.inside = None  # set by a test to a callable telling whether the exclusive section is active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.calls and self.on_first_call is not None:
            self.on_first_call()
        self.calls.append(
            {
                "batch": x.shape[0],
                "ptr": x.data_ptr(),
                "inference": torch.is_inference_mode_enabled(),
                "training": self.training,
                "autocast": torch.is_autocast_enabled("cpu"),
                "channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                "inside": self.inside() if self.inside else None,
            }
        )
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if self.sleep:
            time.sleep(self.sleep)
        return self.fc(x.mean(dim=(2, 3)))


def test_result_fields_stats_and_key():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    r = measure_throughput(
        model, img_size=6, in_chans=3, batch_size=4, device="cpu", train_batch_size=2, arch_id="a1b2", **SMALL
    )
    # parameters and FLOPs from the layer formulas (FLOPs = 2 x MACs, one image; biases are not MACs)
    assert r.params == (3 * 8 * 9 + 8) + (288 * 10 + 10)
    assert r.flops == 2 * (6 * 6 * 8 * 3 * 9 + 288 * 10)
    assert len(r.values) == r.repeats == 3
    assert r.median == statistics.median(r.values)
    assert r.cv == pytest.approx(statistics.stdev(r.values) / statistics.fmean(r.values))
    q1, _, q3 = statistics.quantiles(r.values, n=4, method="inclusive")
    assert r.iqr == pytest.approx(q3 - q1)
    assert (r.min, r.max) == (min(r.values), max(r.values))
    assert r.batch == r.requested_batch == 4 and not r.batch_reduced
    assert r.precision == "fp32" and r.compile == "eager" and not r.channels_last  # CPU defaults
    assert r.resolution == (6, 6) and r.latency_ms_b1 > 0
    assert "threads" in r.device
    assert r.peak_train_mem_bytes is None and any("CUDA only" in n for n in r.notes)
    assert r.key == ThroughputKey("a1b2", r.device, 4, (6, 6), "fp32", "eager")
    assert r.key == make_key("a1b2", img_size=6, batch_size=4, device="cpu")
    assert ThroughputKey.from_str(str(r.key)) == r.key
    assert device_lock_id("cpu") == "cpu"  # one CPU lock per node
    back = ThroughputResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    stored = {"median", "iqr", "cv", "batch", "device", "precision", "resolution", "compile", "latency_ms_b1"}
    assert stored <= set(r.to_dict())  # the trial attribute of docs/storage.md


def test_timm_method_one_reused_batch_in_inference_mode():
    model = Probe()
    model.train()  # measure_throughput must switch to eval
    r = measure_throughput(model, img_size=4, in_chans=3, batch_size=5, device="cpu", **SMALL)
    flop_call, rest = model.calls[0], model.calls[1:]
    assert flop_call["batch"] == 1
    timed = [c for c in rest if c["batch"] == 5]
    lat = [c for c in rest if c["batch"] == 1]
    assert len(timed) == 2 + 3 * 3  # warm-up + steps x repeats
    assert len(lat) == 2 + 3 * 3
    assert len({c["ptr"] for c in timed}) == 1  # one random batch reused
    assert all(c["inference"] and not c["training"] and not c["autocast"] for c in rest)
    assert r.latency_ms_b1 is not None


def test_images_per_second_is_batch_times_steps_over_time():
    # forward costs a known 20 ms whatever the batch: images/s must be close to batch / 0.02
    model = Probe(sleep=0.02)
    r = measure_throughput(model, img_size=4, in_chans=3, batch_size=8, device="cpu", latency=False, **SMALL)
    expected = 8 / 0.02
    assert all(v <= expected * 1.02 for v in r.values)  # sleep never returns early
    assert all(v >= expected * 0.4 for v in r.values)  # slack for a loaded machine
    assert r.latency_ms_b1 is None


def test_oom_halves_batch_and_records_it():
    model = Probe(oom_above=3)
    r = measure_throughput(model, img_size=4, in_chans=3, batch_size=16, device="cpu", arch_id="x", **SMALL)
    assert r.batch == 2 and r.requested_batch == 16 and r.batch_reduced
    assert r.key.batch == 16  # the cache key is the requested batch
    assert any("batch reduced from 16 to 2" in n for n in r.notes)
    tried = [c["batch"] for c in model.calls[1:] if c["batch"] > 1]
    assert tried[:3] == [16, 8, 4]  # each halving is a fresh attempt
    assert all(b == 2 for b in tried[3:]) and len(tried[3:]) == 2 + 3 * 3
    assert r.values and all(v > 0 for v in r.values)


def test_oom_at_batch_one_and_other_errors_propagate():
    with pytest.raises(torch.OutOfMemoryError):
        measure_throughput(Probe(oom_above=0), img_size=4, in_chans=3, batch_size=4, device="cpu", **SMALL)

    class Boom(Probe):
        def forward(self, x):
            if x.shape[0] > 1:
                self.calls.append(x.shape[0])
                raise RuntimeError("shape mismatch")
            return super().forward(x)

    model = Boom()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure_throughput(model, img_size=4, in_chans=3, batch_size=8, device="cpu", **SMALL)
    assert [c for c in model.calls if c == 8] == [8]  # no retry at a smaller batch


def test_bf16_and_channels_last_are_applied_when_asked():
    model = Probe()
    r = measure_throughput(
        model, img_size=4, in_chans=3, batch_size=2, device="cpu", precision="bf16", channels_last=True, **SMALL
    )
    rest = model.calls[1:]
    assert all(c["autocast"] and c["channels_last"] for c in rest)
    assert not model.calls[0]["autocast"]  # FLOPs are counted without autocast
    assert r.precision == "bf16" and r.channels_last


class CountingContext:
    def __init__(self, inner=None):
        self.inner, self.enters, self.exits, self.active = inner, 0, 0, False
        self.entered_at = self.releasing_at = None

    def __enter__(self):
        if self.inner is not None:
            self.inner.__enter__()
        self.enters += 1
        self.active = True
        self.entered_at = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.exits += 1
        self.active = False
        self.releasing_at = time.monotonic()  # before the inner lock is released
        return self.inner.__exit__(*exc) if self.inner is not None else False


def test_exclusive_is_entered_once_around_everything():
    ctx = CountingContext()
    built = []

    def factory():
        built.append(ctx.active)
        m = Probe()
        m.inside = lambda: ctx.active
        return m

    r = measure_throughput(factory, img_size=4, in_chans=3, batch_size=2, device="cpu", exclusive=ctx, **SMALL)
    assert (ctx.enters, ctx.exits) == (1, 1)
    assert built == [True]  # the factory runs inside the exclusive section
    assert r.values


def test_exclusive_device_lock_makes_a_trainer_process_wait(tmp_path):
    from nas.devlock import DeviceLock

    lock = DeviceLock("cpu-test", tmp_path)
    trying, out = CTX.Event(), CTX.Queue()
    procs = []

    def start_trainer():
        # The "trainer" asks for the shared lock while the measurement runs; wait until it is really asking.
        procs.append(CTX.Process(target=_try_shared, args=("cpu-test", str(tmp_path), trying, out), daemon=True))
        procs[0].start()
        assert trying.wait(WAIT)

    ctx = CountingContext(lock.exclusive())
    model = Probe(sleep=0.01, on_first_call=start_trainer)
    measure_throughput(model, img_size=4, in_chans=3, batch_size=2, device="cpu", exclusive=ctx, **SMALL)
    acquired_at = out.get(timeout=WAIT)
    _stop(*procs)
    assert (ctx.enters, ctx.exits) == (1, 1)
    assert acquired_at >= ctx.releasing_at  # the trainer got in only after the measurement released
    assert trying.is_set() and acquired_at > ctx.entered_at


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp16"}, "precision"),
        ({"compile_mode": "reduce-overhead"}, "compile_mode"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"img_size": "big"}, "img_size"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "nope"}, "device"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    base = {"img_size": 4, "in_chans": 3, "device": "cpu", **SMALL}
    with pytest.raises(ConfigError, match=match):
        measure_throughput(Probe(), **{**base, **kwargs})


def test_fast_backend_sets_tf32_and_benchmark_then_restores():
    # The CUDA branch only flips process-global flags, so it can be checked without a GPU.
    from nas.measure import _fast_backend

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):  # torch >= 2.9

        def flags() -> tuple:
            return matmul.fp32_precision, conv.fp32_precision, cudnn.benchmark

        fast = ("tf32", "tf32", True)
    else:  # the legacy API (torch 2.5 - 2.8)

        def flags() -> tuple:
            return torch.get_float32_matmul_precision(), cudnn.allow_tf32, cudnn.benchmark

        fast = ("high", True, True)
    before = flags()
    with _fast_backend(torch.device("cuda")):
        assert flags() == fast
    assert flags() == before
    torch.get_float32_matmul_precision()  # the legacy getter must still work (no "mix of APIs" error)


def test_peak_train_memory_probe_leaves_the_model_untouched(monkeypatch):
    # The CUDA memory counters are faked; what is checked is that the probe trains one step and then
    # restores BN statistics, gradients and eval mode.
    from nas import measure

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 12345)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    seen_training = []
    model.register_forward_hook(lambda m, i, o: seen_training.append(m.training))
    peak = measure._peak_train_mem(model, torch.randn(3, 3, 6, 6), torch.device("cpu"), "fp32")
    assert peak == 12345 and calls == ["reset"]
    assert seen_training == [True]  # one training forward
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k  # running mean/var and num_batches_tracked restored
