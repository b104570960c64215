"""Forward+backward time of every token mixer against its plain reference (tests/reference_mixers.py).

Geometry: CAFormer-S18 stages 2 and 3 at 224 px (28x28x128 and 14x14x320), each mixer with its default knobs
and built for that grid. The reference is the spec's equations written the plain way (explicit logits and
softmax, per-chart loops, no algebraic shortcuts) sharing the module's weights. Ours and the reference are
timed interleaved (ours, ref, ours, ref ...) so load from other processes hits both alike; the figure is the
median of ``--repeats`` timed steps after ``--warmup``. Ratio = reference ms / ours ms (> 1: ours is faster).

CPU runs fp32 always; with CUDA present it also runs bf16 autocast (batch 64 by default) and, for the
SDPA-based static-key mixers, forces each ``sdpa_kernel`` backend in turn to show which accept the stride-0
static key. The "kernel" column names the attention op that actually ran (read from FlopCounterMode's op
table: ``flash_for_cpu``, ``efficient``, ``flash``, ``cudnn``; ``math`` = explicit bmm + softmax). CSKA is
timed in each of its formulations; ``*`` marks the ones that are not its default.

    python -m benchmarks.mixers                    # CPU (batch 8) + CUDA when available
    python -m benchmarks.mixers --batch 4 --mixers ska cska --repeats 9
    python -m benchmarks.mixers --device cpu --threads 1 --cpu-clock   # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.measure import cpu_model_name
from nas.mixers import get

ROOT = Path(__file__).resolve().parents[1]


def _load_references():
    spec = importlib.util.spec_from_file_location("reference_mixers", ROOT / "tests" / "reference_mixers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REF = _load_references()
MIXERS = ["dwconv", "mhsa", "ska", "cska", "manifold_key", "key_only"]
GEOMETRIES = [(28, 28, 128), (14, 14, 320)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def attention_kernel(fn: Callable[[], torch.Tensor]) -> str:
    """Which attention op ``fn`` ran, from the op names FlopCounterMode saw (with the project's formulas for every
    SDPA kernel: a bare counter leaves out the kernels it has no formula for, e.g. the CPU one before torch 2.15)."""
    from nas.cost import sdpa_flop_formulas

    with FlopCounterMode(display=False, custom_mapping=sdpa_flop_formulas()) as fc:
        fn()
    ops = [str(op) for op in fc.get_flop_counts().get("Global", {})]
    for op in ops:
        if "scaled_dot_product" in op:
            name = op.split("_scaled_dot_product_")[-1].replace("_attention", "").replace(".default", "")
            return name or "sdpa"
    if any("bmm" in op for op in ops):
        return "math"
    return "-"


class Step:
    """One forward+backward of a mixer (ours: a module; ref: a function over a dict of leaf weights)."""

    def __init__(self, fwd: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor], x, autocast):
        self.fwd, self.params, self.x, self.autocast = fwd, params, x, autocast
        self.grad_out: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        with self.autocast():
            return self.fwd(self.x)

    def __call__(self) -> None:
        for p in self.params:
            p.grad = None
        self.x.grad = None
        y = self.forward()
        if self.grad_out is None:
            self.grad_out = torch.randn_like(y)
        y.backward(self.grad_out)


def time_pair(ours: Step, ref: Step, device: str, warmup: int, repeats: int, clock) -> tuple[float, float]:
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(warmup + repeats):
        for j, step in enumerate((ours, ref)):
            _sync(device)
            t0 = clock()
            step()
            _sync(device)
            if i >= warmup:
                times[j].append(clock() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def make_steps(name: str, h: int, w: int, c: int, batch: int, device: str, dtype, knobs=None, impl=None):
    d = get(name)
    resolved = d.resolve_knobs(c, knobs, "bench")
    module = d.build(c, (h, w), knobs).to(device)
    if impl is not None:
        module.impl = impl
    weights = REF.leaf_copy(module)
    x = torch.randn(batch, h, w, c, device=device).requires_grad_(True)

    def autocast():
        return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    ref_fn = REF.REFERENCES[name]
    ours = Step(module, list(module.parameters()), x, autocast)
    ref = Step(lambda t: ref_fn(t, weights, resolved, (h, w)), list(weights.values()), x, autocast)
    return ours, ref, module


def sdpa_backends(module, x, device: str, dtype) -> str:
    """Force each SDPA backend for one fwd+bwd; report which run and which reject the inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with sdpa_kernel([backend]), torch.autocast(device, dtype=dtype):
                module(x).float().sum().backward()
            _sync(device)
            out.append(f"{backend.name.lower()}=ok")
        except RuntimeError as err:
            out.append(f"{backend.name.lower()}=no ({str(err).splitlines()[0][:60]})")
    return "; ".join(out)


def run(device: str, dtype, batch: int, warmup: int, repeats: int, mixers: list[str], cpu_clock: bool) -> None:
    label = "fp32" if dtype == torch.float32 else "bf16"
    clock = time.process_time if cpu_clock and device == "cpu" else time.perf_counter
    what = "process CPU time" if clock is time.process_time else "wall time"
    print(f"\n== {device} {label}, batch {batch}, {what}: median of {repeats} after {warmup} warm-up, interleaved")
    print(f"{'mixer':<16}{'geometry':<14}{'kernel':<16}{'ours ms':>10}{'ref ms':>10}{'ref/ours':>10}")
    for h, w, c in GEOMETRIES:
        for name in mixers:
            impls = ["conv", "unfold", "sdpa"] if name == "cska" else [None]
            for impl in impls:
                ours, ref, module = make_steps(name, h, w, c, batch, device, dtype, impl=impl)
                if name in ("dwconv", "key_only") or impl in ("conv", "unfold"):
                    kernel = "-" if impl is None else "explicit"  # no SDPA call in this formulation
                else:
                    kernel = attention_kernel(ours.forward)
                t_ours, t_ref = time_pair(ours, ref, device, warmup, repeats, clock)
                default = impl is None or impl == inspect.signature(type(module)).parameters["impl"].default
                tag = (f"{name}[{impl}]" if impl else name) + ("" if default else "*")
                print(
                    f"{tag:<16}{f'{h}x{w}x{c}':<14}{kernel:<16}{t_ours:>10.1f}{t_ref:>10.1f}{t_ref / t_ours:>10.2f}",
                    flush=True,
                )
                if device == "cuda" and (name == "ska" or (name == "cska" and impl == "sdpa")):
                    print(f"    sdpa backends: {sdpa_backends(module, ours.x, device, dtype)}", flush=True)
                del ours, ref, module


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="CPU batch (default 8: the whole run takes minutes)")
    ap.add_argument("--cuda-batch", type=int, default=64, help="CUDA batch (CAFormer-S18 training batch)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mixers", nargs="+", default=MIXERS, choices=MIXERS)
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time CPU steps by process CPU time instead of wall time (steadier on a shared machine; "
        "use with --threads 1, since idle OpenMP threads spin)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, CPU: {cpu_model_name()}, {torch.get_num_threads()} threads")
    if args.device in ("all", "cpu"):
        run("cpu", torch.float32, args.batch, args.warmup, args.repeats, args.mixers, args.cpu_clock)
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"GPU: {torch.cuda.get_device_name()}")
        run("cuda", torch.bfloat16, args.cuda_batch, max(args.warmup, 3), max(args.repeats, 10), args.mixers, False)


if __name__ == "__main__":
    main()
