"""Dataset loaders (real Fashion-MNIST when installed, tiny generated files otherwise) and on-device batches."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers import (
    CorruptDataError,
    DataConfig,
    DataError,
    DatasetNotFoundError,
    DeviceData,
    TrainerConfigError,
    UnknownDatasetError,
    load_dataset,
    stratified_subset,
)
from trainers.data import DEBIAN_FASHION_MNIST, _random_crop, read_idx

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors on a few shared cores: one intra-op thread avoids oversubscription stalls
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no configured data roots leak in, and the relative default ./data points into tmp_path
    monkeypatch.delenv("NAS_DATA_ROOT", raising=False)
    monkeypatch.delenv("FASHION_MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)


def _idx_bytes(arr: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fmnist(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        FILES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
        else:
            (folder / name).write_bytes(_idx_bytes(arr))
    return arrays


def test_real_fashion_mnist_from_the_os_package() -> None:
    assert all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FILES), (
        f"{DEBIAN_FASHION_MNIST} absent: run scripts/setup.sh as root (apt-get install dataset-fashion-mnist)"
    )
    ds = load_dataset("fashion_mnist")  # found through the default search, no root configured
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.val_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.equal(torch.bincount(ds.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.val_y), torch.full((10,), 1000))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    # the published Fashion-MNIST training-set statistics
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3) and ds.std[0] == pytest.approx(0.3530, abs=1e-3)


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "fashion-mnist", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_layouts_round_trip(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = write_fmnist(tmp_path / "root" / layout, gz=gz)
    ds = load_dataset({"name": "fashion_mnist", "root": str(tmp_path / "root")})
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays[FILES[0]]))
    assert torch.equal(ds.train_y, torch.from_numpy(arrays[FILES[1]]).long())
    assert torch.equal(ds.val_x[:, 0], torch.from_numpy(arrays[FILES[2]]))
    x = arrays[FILES[0]].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(x.mean(), abs=1e-9) and ds.std[0] == pytest.approx(x.std(), abs=1e-9)


@pytest.mark.parametrize("env", ["NAS_DATA_ROOT", "FASHION_MNIST_ROOT"])
def test_fashion_mnist_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    arrays = write_fmnist(tmp_path / "elsewhere" / "FashionMNIST" / "raw", seed=3)
    monkeypatch.setenv(env, str(tmp_path / "elsewhere"))
    assert torch.equal(load_dataset("fashion_mnist").val_x[:, 0], torch.from_numpy(arrays[FILES[2]]))


def test_missing_fashion_mnist_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset({"name": "fashion_mnist", "root": str(tmp_path / "nothing")})
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nothing") in msg
    for fix in ("apt-get install dataset-fashion-mnist", "download: true", "data.root", "NAS_DATA_ROOT"):
        assert fix in msg


def test_download_flag_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    calls = []

    class FakeFashionMNIST:  # stands in for the network: writes what torchvision's download leaves behind
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            write_fmnist(Path(root) / "FashionMNIST" / "raw", seed=5)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFashionMNIST)
    ds = load_dataset({"name": "fashion_mnist", "root": str(tmp_path / "dl"), "download": True})
    assert calls and all(c[2] for c in calls) and ds.train_x.shape == (40, 1, 28, 28)

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match=r"download.*failed.*no network"):
        load_dataset({"name": "cifar10", "root": str(tmp_path / "c"), "download": True})


def test_corrupt_idx_files_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write_fmnist(folder, gz=False)
    good = (folder / FILES[0]).read_bytes()
    (folder / FILES[0]).write_bytes(b"\x00\x00\x09\x03" + good[4:])  # wrong magic (dtype byte)
    with pytest.raises(CorruptDataError, match="magic") as err:
        load_dataset({"name": "fashion_mnist", "root": str(folder)})
    assert err.value.path == str(folder / FILES[0]) and "\n" not in str(err.value)
    (folder / FILES[0]).write_bytes(good[:-5])  # truncated payload
    with pytest.raises(CorruptDataError, match="bytes but the header"):
        load_dataset({"name": "fashion_mnist", "root": str(folder)})
    (folder / FILES[0]).write_bytes(good)
    (folder / FILES[1]).write_bytes(_idx_bytes(np.zeros(7, dtype=np.uint8)))  # 7 labels for 40 images
    with pytest.raises(CorruptDataError, match="7 labels"):
        load_dataset({"name": "fashion_mnist", "root": str(folder)})
    (folder / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorruptDataError, match=r"x\.gz"):
        read_idx(folder / "x.gz")


def _write_cifar(root: Path, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        sub, train_files, test_files, key, meta, names_key, k = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
            "batches.meta", b"label_names", 10,
        )  # fmt: skip
    else:
        sub, train_files, test_files, key, meta, names_key, k = (
            "cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names", 100,
        )  # fmt: skip
    folder = root / sub
    folder.mkdir(parents=True)
    out: dict[str, list] = {"train_x": [], "train_y": [], "val_x": [], "val_y": []}
    for files, part in ((train_files, "train"), (test_files, "val")):
        for f in files:
            data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
            labels = rng.integers(0, k, 6).tolist()
            with open(folder / f, "wb") as fh:  # bytes keys, as in the official Python-2 batches
                pickle.dump({b"data": data, key: labels, b"batch_label": b"x"}, fh)
            out[f"{part}_x"].append(data)
            out[f"{part}_y"] += labels
    with open(folder / meta, "wb") as fh:
        pickle.dump({names_key: [f"name{i}".encode() for i in range(k)]}, fh)
    return {k2: np.concatenate(v) if k2.endswith("x") else np.array(v) for k2, v in out.items()}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path: Path, name: str) -> None:
    ref = _write_cifar(tmp_path, name)
    ds = load_dataset({"name": name, "root": str(tmp_path)})
    assert ds.train_x.shape == (len(ref["train_y"]), 3, 32, 32) and ds.num_classes == (10 if name == "cifar10" else 100)
    # the row of 3072 bytes is R plane, G plane, B plane, each 32x32 row-major
    first = ref["train_x"][0]
    assert torch.equal(ds.train_x[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))
    assert torch.equal(ds.val_y, torch.from_numpy(ref["val_y"]).long())
    assert ds.classes[3] == "name3" and ds.hflip and ds.crop_padding == 4


def test_corrupt_cifar_pickle(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptDataError) as err:
        load_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert err.value.path == str(bad)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_dataset({"name": "cifar100", "root": str(tmp_path)})


def _png_folder(root: Path, classes: dict[str, int], colors: dict[str, tuple[int, int, int]]) -> None:
    from PIL import Image

    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (10 + i, 12), colors[c]).save(root / c / f"{i}.png")


def test_imagefolder_split_by_ratio(tmp_path: Path) -> None:
    colors = {"cat": (255, 0, 0), "dog": (0, 128, 255), "eel": (7, 7, 7)}
    _png_folder(tmp_path / "imgs", {"cat": 5, "dog": 10, "eel": 5}, colors)
    cfg = {"name": "imagefolder", "root": str(tmp_path / "imgs"), "image_size": 8}
    ds = load_dataset(cfg)
    assert ds.classes == ("cat", "dog", "eel") and ds.train_x.shape[1:] == (3, 8, 8)
    assert torch.equal(torch.bincount(ds.val_y), torch.tensor([1, 2, 1]))  # 20% of every class
    assert torch.equal(torch.bincount(ds.train_y), torch.tensor([4, 8, 4]))
    for x, y in ((ds.train_x, ds.train_y), (ds.val_x, ds.val_y)):
        for img, label in zip(x, y, strict=True):  # solid colours survive decode + resize exactly
            assert torch.equal(
                img, torch.tensor(colors[ds.classes[label]], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
            )
    again = load_dataset(cfg)
    assert torch.equal(again.val_y, ds.val_y) and torch.equal(again.val_x, ds.val_x)
    other = load_dataset({**cfg, "val_fraction": 0.4, "split_seed": 1})
    assert len(other.val_y) == 8 and len(other.train_y) == 12


def test_imagefolder_train_val_folders_and_errors(tmp_path: Path) -> None:
    colors = {"a": (1, 2, 3), "b": (200, 100, 0)}
    _png_folder(tmp_path / "tv" / "train", {"a": 3, "b": 2}, colors)
    _png_folder(tmp_path / "tv" / "val", {"a": 1, "b": 1}, colors)
    ds = load_dataset({"name": "imagefolder", "root": str(tmp_path / "tv"), "image_size": 8})
    assert len(ds.train_y) == 5 and ds.val_y.tolist() == [0, 1]

    _png_folder(tmp_path / "one", {"only": 3}, {"only": (0, 0, 0)})
    with pytest.raises(DataError, match="at least 2") as err:
        load_dataset({"name": "imagefolder", "root": str(tmp_path / "one")})
    assert "\n" not in str(err.value)

    _png_folder(tmp_path / "broken", {"a": 2, "b": 2}, colors)
    (tmp_path / "broken" / "b" / "zz.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"unreadable image .*zz\.png"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path / "broken")})
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path / "nope")})


def test_unknown_dataset_and_bad_fields() -> None:
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'mnist3d'.*fashion_mnist") as err:
        load_dataset("mnist3d")
    assert "\n" not in str(err.value)
    with pytest.raises(TrainerConfigError, match="unknown field 'rooot'"):
        load_dataset({"name": "synthetic", "rooot": "x"})


def test_val_fraction_holds_out_train(tmp_path: Path) -> None:
    write_fmnist(tmp_path / "fm", n_train=100)
    ds = load_dataset({"name": "fashion_mnist", "root": str(tmp_path / "fm"), "val_fraction": 0.2})
    assert len(ds.val_y) == 20 and len(ds.train_y) == 80
    assert torch.equal(torch.bincount(ds.val_y), torch.full((10,), 2))
    full = load_dataset({"name": "fashion_mnist", "root": str(tmp_path / "fm")})
    rows = {tuple(r.flatten().tolist()) for r in full.train_x}
    held = {tuple(r.flatten().tolist()) for r in ds.val_x}
    kept = {tuple(r.flatten().tolist()) for r in ds.train_x}
    assert held <= rows and not (held & kept)


def test_stratified_subset_is_seeded_and_proportional() -> None:
    y = torch.arange(1000) % 4
    a, b, c = stratified_subset(y, 0.1, 0), stratified_subset(y, 0.1, 0), stratified_subset(y, 0.1, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.bincount(y[a]), torch.full((4,), 25)) and torch.equal(a, a.unique())


# ------------------------------------------------------------------------------------------------ DeviceData
def _synthetic(**kw: object) -> DeviceData:
    return DeviceData(load_dataset(DataConfig(name="synthetic", **kw)))


def test_random_crop_matches_per_image_slicing() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 2, 5, 7), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 5, (6, 2), generator=g)
    out = _random_crop(x, 2, offsets)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 7])


def test_batches_without_augmentation_are_normalised_originals() -> None:
    dd = _synthetic(crop_padding=0, hflip=False)
    m = torch.tensor(dd.splits.mean).view(1, -1, 1, 1)
    s = torch.tensor(dd.splits.std).view(1, -1, 1, 1)
    seen = []
    for x, y in dd.train_batches(32, torch.Generator().manual_seed(1)):
        # each batch row must be some training image, normalised; find it through its label-matched original
        ref = (dd.splits.train_x.float() / 255 - m) / s
        dist = (x[:, None] - ref[None]).flatten(2).abs().amax(-1)
        idx = dist.argmin(1)
        assert torch.all(dist.min(1).values < 1e-4) and torch.equal(dd.splits.train_y[idx], y)
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) == 256  # one epoch = a permutation (256 = 8 full batches)
    all_x = torch.cat([x for x, _ in dd.train_batches(256, torch.Generator().manual_seed(2))])
    assert torch.allclose(all_x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(all_x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)


def test_flip_and_crop_are_applied_and_seeded() -> None:
    dd = _synthetic(crop_padding=0, hflip=True)
    x1, _ = next(dd.train_batches(256, torch.Generator().manual_seed(4)))
    x2, _ = next(dd.train_batches(256, torch.Generator().manual_seed(4)))
    assert torch.equal(x1, x2)
    plain, _ = next(dd.with_augment(hflip=False).train_batches(256, torch.Generator().manual_seed(4)))
    flipped = [not torch.equal(a, b) for a, b in zip(x1, plain, strict=True)]
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(x1, plain, strict=True))
    assert 80 < sum(flipped) < 176  # about half
    cropped, _ = next(dd.with_augment(hflip=False, crop_padding=3).train_batches(256, torch.Generator().manual_seed(4)))
    assert cropped.shape == plain.shape and not torch.equal(cropped, plain)


def test_fidelity_view_subset_and_resize() -> None:
    dd = _synthetic(crop_padding=0, hflip=False)
    view = dd.with_fidelity(train_fraction=0.25, img_size=8, subset_seed=3)
    assert view.train_x.data_ptr() == dd.train_x.data_ptr()  # a view: no copy of the images
    assert view.num_train == len(stratified_subset(dd.splits.train_y, 0.25, 3)) and dd.num_train == 256
    x, _ = next(view.train_batches(view.num_train, torch.Generator().manual_seed(0)))
    assert x.shape == (view.num_train, 3, 8, 8)
    assert set(view.train_idx.tolist()) == set(stratified_subset(dd.splits.train_y, 0.25, 3).tolist())
    vx, vy = next(view.val_batches(1000))
    m = torch.tensor(dd.splits.mean).view(1, -1, 1, 1)
    s = torch.tensor(dd.splits.std).view(1, -1, 1, 1)
    ref = F.interpolate((dd.splits.val_x.float() / 255 - m) / s, size=(8, 8), mode="bilinear", antialias=True)
    assert torch.allclose(vx, ref, atol=1e-4) and torch.equal(vy, dd.splits.val_y)
    assert view.steps_per_epoch(16) == view.num_train // 16 and view.steps_per_epoch(16, max_batches=2) == 2
    assert dd.steps_per_epoch(1000) == 1  # smaller split than a batch: one batch of everything
