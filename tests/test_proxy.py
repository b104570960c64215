"""The proxy trainer: schedule, parameter groups, determinism, resume, failures, guard, and a real short run."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from trainers import (
    CheckpointError,
    DataConfig,
    DeviceData,
    TrainConfig,
    TrainerConfigError,
    TrainingFailed,
    bitmap,
    fit,
    iter_fit,
    load_dataset,
    read_checkpoint_history,
)
from trainers.data import DEBIAN_FASHION_MNIST
from trainers.proxy import lr_at, param_groups


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny models on a few shared cores: one intra-op thread avoids oversubscription stalls
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data() -> DeviceData:
    return DeviceData(load_dataset(DataConfig(name="synthetic", hflip=True, crop_padding=2)))


def small_net(seed: int, in_chans: int = 3, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.LazyLinear(classes),
    )  # fmt: skip


def build(seed: int) -> nn.Module:
    net = small_net(seed)
    net(torch.zeros(1, 3, 16, 16))  # materialise the lazy layer so the state dict is complete
    return net


CFG = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0.5, seed=7, device="cpu", max_batches_per_epoch=4)


def metrics(curve: list) -> list[tuple]:
    # everything but the wall-clock fields
    return [(r.epoch, r.val_acc, r.val_loss, r.train_loss, r.lr) for r in curve]


# ------------------------------------------------------------------------------------------------ pieces
def test_lr_schedule_matches_reference() -> None:
    cfg = TrainConfig(epochs=4, lr=1.0, warmup_epochs=1.5, min_lr_ratio=0.1)
    spe, total, warm = 10, 40, 15

    def ref(step: int) -> float:  # independent statement of "linear warm-up then cosine to 0.1"
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / (total - warm)
        return 0.1 + 0.9 * (1 + math.cos(math.pi * t)) / 2

    lrs = [lr_at(s, cfg, spe) for s in range(total)]
    assert lrs == pytest.approx([ref(s) for s in range(total)])
    assert lrs[warm - 1] == pytest.approx(1.0) and lrs[-1] == pytest.approx(
        0.1 + 0.9 * (1 + math.cos(math.pi * 24 / 25)) / 2
    )
    assert lr_at(0, TrainConfig(epochs=1, lr=0.5, warmup_epochs=0), 10) == pytest.approx(0.5)


def test_no_weight_decay_on_norms_biases_and_listed_names() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.ln = nn.LayerNorm(4)
            self.pos = nn.Parameter(torch.zeros(1, 4, 2, 2))
            self.head = nn.Linear(4, 2)
            self.tied = self.head.weight  # shared parameter must be listed once

        def no_weight_decay(self) -> set[str]:
            return {"pos"}

    net = Net()
    decay, quiet = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and quiet["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.head.weight)}
    expected_quiet = [net.conv.bias, net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias, net.pos, net.head.bias]
    assert {id(p) for p in quiet["params"]} == {id(p) for p in expected_quiet}
    assert len(decay["params"]) + len(quiet["params"]) == len(list(net.parameters()))


def test_train_config_errors_are_one_line() -> None:
    with pytest.raises(TrainerConfigError) as err:
        fit(build(0), {"epochs": 1, "learning_rate": 0.1}, DeviceData(load_dataset("synthetic")))
    msg = str(err.value)
    assert "unknown field 'learning_rate'" in msg and "lr" in msg and "\n" not in msg
    with pytest.raises(TrainerConfigError, match="device"):
        fit(build(0), {"device": "tpu"}, DeviceData(load_dataset("synthetic")))
    if not torch.cuda.is_available():
        with pytest.raises(TrainerConfigError, match="0 CUDA device"):
            fit(build(0), {"device": "cuda"}, DeviceData(load_dataset("synthetic")))


# ------------------------------------------------------------------------------------------------ behaviour
def test_same_seed_same_curve_other_seed_differs(data: DeviceData) -> None:
    a = fit(build(1), CFG, data)
    b = fit(build(1), CFG, data)
    c = fit(build(1), CFG.model_copy(update={"seed": 8}), data)
    assert metrics(a) == metrics(b) and len(a) == 2
    assert [r.train_loss for r in a] != [r.train_loss for r in c]
    assert all(0 <= r.val_acc <= 1 and r.images_per_s > 0 and r.seconds > 0 for r in a)


def test_stop_and_resume_continues_the_same_curve(data: DeviceData, tmp_path: Path) -> None:
    straight_model = build(1)
    straight = fit(straight_model, CFG, data)
    ckpt = tmp_path / "trial" / "ckpt.pt"
    first = fit(build(1), CFG, data, checkpoint=ckpt, on_epoch=lambda r: True)  # stop after epoch 1
    assert len(first) == 1 and read_checkpoint_history(ckpt) == first
    torch.manual_seed(12345)  # a fresh "process": other global RNG state, other initial weights
    resumed_model = build(99)
    fresh = DeviceData(load_dataset(DataConfig(name="synthetic", hflip=True, crop_padding=2)))
    resumed = fit(resumed_model, CFG, fresh, checkpoint=ckpt)
    assert metrics(resumed) == metrics(straight)
    for (k, v), (k2, v2) in zip(straight_model.state_dict().items(), resumed_model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert fit(build(3), CFG, data, checkpoint=ckpt) == resumed  # finished: nothing left to train
    with pytest.raises(CheckpointError, match=r"changed: lr"):
        fit(build(1), CFG.model_copy(update={"lr": 1e-2}), data, checkpoint=ckpt)


def test_iter_fit_yields_per_epoch_and_guards_every_step(data: DeviceData) -> None:
    entered = []

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        entered.append(1)
        yield

    cfg = CFG.model_copy(update={"epochs": 3})
    it = iter_fit(build(2), cfg, data, step_guard=guard)
    first = next(it)
    assert first.epoch == 1 and len(entered) == 4  # max_batches_per_epoch=4
    assert [r.epoch for r in it] == [2, 3] and len(entered) == 12


def test_fidelity_knobs_reach_the_model(data: DeviceData) -> None:
    shapes = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return self.head(x.mean((2, 3)))

    cfg = TrainConfig(epochs=1, batch_size=16, img_size=8, train_fraction=0.25, device="cpu", eval_batch_size=1000)
    fit(Probe(), cfg, data)
    n = data.with_fidelity(0.25, subset_seed=0).num_train
    assert shapes[: n // 16] == [(16, 3, 8, 8)] * (n // 16) and shapes[-1] == (data.num_val, 3, 8, 8)
    assert len(shapes) == n // 16 + 1


class NanAt(nn.Module):
    """Returns NaN logits from the k-th training forward on."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0
        self.lin = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.calls >= self.k:
                return out * float("nan")
        return out


def test_non_finite_loss_fails_with_epoch_and_step(data: DeviceData) -> None:
    cfg = CFG.model_copy(update={"max_batches_per_epoch": 5})
    with pytest.raises(TrainingFailed) as err:
        fit(NanAt(k=8), cfg, data)  # 5 steps in epoch 1, so the 8th forward is epoch 2 step 3
    assert err.value.reason == "non-finite loss at epoch 2 step 3" and err.value.kind == "non_finite"
    assert (err.value.epoch, err.value.step) == (2, 3)
    with pytest.raises(TrainingFailed, match="non-finite loss at epoch 1 step"):
        fit(build(0), CFG.model_copy(update={"lr": 1e30, "grad_clip": None}), data)


def test_out_of_memory_becomes_a_typed_failure(data: DeviceData) -> None:
    class Oom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.lin(x.mean((2, 3)))

    with pytest.raises(TrainingFailed) as err:
        fit(Oom(), CFG, data)
    assert err.value.kind == "oom" and "epoch 1 step 2" in err.value.reason and "batch_size 32" in err.value.reason


def test_short_real_run_on_fashion_mnist() -> None:
    assert (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), (
        f"{DEBIAN_FASHION_MNIST} absent: run scripts/setup.sh as root (apt-get install dataset-fashion-mnist)"
    )
    ds = load_dataset(DataConfig(name="fashion_mnist", root=str(DEBIAN_FASHION_MNIST)))
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32),
        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )  # fmt: skip
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup_epochs=0.1, train_fraction=5000 / 60000, device="cpu")
    (result,) = fit(net, cfg, ds)
    print(f"fashion-mnist 5k/1 epoch: val_acc={result.val_acc:.3f} images/s={result.images_per_s:.0f}")
    assert result.val_acc > 0.6  # chance is 0.1
    # the epoch's correctness bitmap is the model's own predictions on the validation images, in their order
    correct = bitmap.unpack(result.val_correct)
    assert correct.size == len(ds.val_y) and correct.mean() == pytest.approx(result.val_acc, abs=1e-12)
    net.eval()
    with torch.no_grad():
        again = torch.cat([net(x).argmax(1) == y for x, y in DeviceData(ds).val_batches(1000)]).numpy()
    assert (again == correct).all()
