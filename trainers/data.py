"""Datasets as uint8 tensors, held on the training device, batched and augmented there.

``load_dataset(DataConfig)`` reads a dataset once into :class:`TensorSplits` (uint8 ``[N, C, H, W]`` + int64
labels, on the CPU). :class:`DeviceData` moves them to the training device and yields normalised, augmented,
optionally resized batches with no DataLoader, no worker processes and no per-sample Python: the whole
Fashion-MNIST or CIFAR training set is a few hundred MB at most, so a proxy trainer is bound by the model,
not by image decoding.
"""

from __future__ import annotations

import copy
import functools
import gzip
import math
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.config import DataConfig, parse_config
from trainers.errors import CorruptDataError, DataError, DatasetNotFoundError, UnknownDatasetError

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
ENV_ROOT = "NAS_DATA_ROOT"
ENV_FASHION_MNIST = "FASHION_MNIST_ROOT"
# Where Debian/Ubuntu's `dataset-fashion-mnist` package installs the IDX files (an OS location, not a
# machine-specific one); searched after any configured root.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")  # fmt: skip
_FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")  # fmt: skip
# name -> (folder, train files, test files, label key, meta file, class-names key)
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}  # fmt: skip


@dataclass(frozen=True)
class TensorSplits:
    """A classification dataset decoded into uint8 ``[N, C, H, W]`` images and int64 labels (CPU tensors).

    ``hflip`` / ``crop_padding`` are the augmentation this dataset gets by default; ``mean`` / ``std`` are
    per-channel statistics of the training split in [0, 1] units, used to normalise batches.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_padding: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def val_fingerprint(self) -> str:
        """Names the validation set (:func:`trainers.bitmap.fingerprint`): bitmaps compare only under the same one."""
        from trainers.bitmap import fingerprint

        return fingerprint(self.val_x, self.val_y)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train_x.shape[-1])


def load_dataset(cfg: DataConfig | dict[str, Any] | str) -> TensorSplits:
    """Load the dataset ``cfg`` names (a DataConfig, its dict form, or just a dataset name)."""
    cfg = parse_config(DataConfig, {"name": cfg} if isinstance(cfg, str) else cfg, "data")
    if cfg.name not in DATASETS:
        raise UnknownDatasetError(f"data.name: unknown dataset '{cfg.name}'; choose one of {', '.join(DATASETS)}")
    if cfg.name == "fashion_mnist":
        train_x, train_y, val_x, val_y = _load_fashion_mnist(cfg)
        classes, flip, pad = _FMNIST_CLASSES, True, 2
    elif cfg.name in _CIFAR:
        train_x, train_y, val_x, val_y, classes = _load_cifar(cfg)
        flip, pad = True, 4
    elif cfg.name == "imagefolder":
        train_x, train_y, val_x, val_y, classes = _load_imagefolder(cfg)
        flip, pad = True, max(1, cfg.image_size // 8)
    else:
        train_x, train_y, val_x, val_y, classes = _synthetic(cfg)
        flip, pad = False, 0
    if cfg.val_fraction is not None:  # hold out part of train; the official test split then stays unseen
        train_x, train_y, val_x, val_y = _holdout(train_x, train_y, cfg.val_fraction, cfg.split_seed)
    mean, std = _channel_stats(train_x)
    flip = flip if cfg.hflip is None else cfg.hflip
    pad = pad if cfg.crop_padding is None else cfg.crop_padding
    train_y, val_y = train_y.long(), val_y.long()
    return TensorSplits(cfg.name, train_x.contiguous(), train_y, val_x.contiguous(), val_y, tuple(classes), mean,
                        std, flip, pad)  # fmt: skip


def _holdout(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    val_idx = stratified_subset(y, fraction, seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val_idx] = False
    return x[keep], y[keep], x[val_idx], y[val_idx]


def stratified_subset(y: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded subset holding ``fraction`` of every class (at least one image each)."""
    y = y.cpu()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    ys = y[perm]
    picked = [perm[ys == c][: max(1, round(fraction * int((ys == c).sum())))] for c in torch.unique(y)]
    return torch.cat(picked).sort().values


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # exact moments from a 256-bin histogram per channel: no float copy of the whole split
    levels = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = (h * levels).sum() / h.sum()
        v = (h * (levels - m) ** 2).sum() / h.sum()
        mean.append(float(m) / 255)
        std.append(max(float(v.sqrt()) / 255, 1e-3))
    return tuple(mean), tuple(std)


# --------------------------------------------------------------------------------------------- locations
def _bases(root: str | None, *envs: str) -> list[Path]:
    """Folders to search: an explicit root only; otherwise the env vars, then ./data."""
    if root:
        return [Path(root).expanduser()]
    found = [Path(os.environ[e]).expanduser() for e in envs if os.environ.get(e)]
    return [*found, Path("data")]


def _download_root(cfg: DataConfig) -> Path:
    return Path(cfg.root or os.environ.get(ENV_ROOT) or "data").expanduser()


def _torchvision_download(cfg: DataConfig) -> None:
    from torchvision import datasets

    cls = {"fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    root = _download_root(cfg)
    try:
        for train in (True, False):
            cls[cfg.name](str(root), train=train, download=True)
    except Exception as exc:  # network, disk, checksum: all end the same way for the user
        msg = " ".join(str(exc).split())[:200]
        raise DatasetNotFoundError(
            f"data.download: downloading {cfg.name} into {root} failed ({type(exc).__name__}: {msg}); "
            f"check the network or place the files there yourself"
        ) from None


def _missing(cfg: DataConfig, looked: list[Path], extra_fix: str = "") -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotFoundError(
        f"data: {cfg.name} not found (looked in: {where}); {extra_fix}set data.root (or env {ENV_ROOT}) to "
        f"its folder, or set data.download: true to fetch it with torchvision"
    )


# --------------------------------------------------------------------------------------------- fashion-mnist
def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file of unsigned bytes (LeCun's MNIST format), gzipped or not, as a uint8 tensor."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise CorruptDataError(path, f"cannot read it ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise CorruptDataError(path, f"bad IDX magic number {data[:4].hex() or '(empty)'} (want 0000080N)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(path, "truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + math.prod(dims):
        raise CorruptDataError(path, f"{len(data)} bytes but the header {list(dims)} needs {header + math.prod(dims)}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).view(*dims)


def _find_idx_dir(cfg: DataConfig) -> tuple[Path | None, list[Path]]:
    looked: list[Path] = []
    bases = _bases(cfg.root, ENV_FASHION_MNIST, ENV_ROOT) + ([] if cfg.root else [DEBIAN_FASHION_MNIST])
    for base in bases:
        for d in (base, base / "FashionMNIST" / "raw", base / "fashion-mnist", base / "fashion_mnist"):
            looked.append(d)
            if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _FMNIST_FILES):
                return d, looked
    return None, looked


def _load_fashion_mnist(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    folder, looked = _find_idx_dir(cfg)
    if folder is None and cfg.download:
        _torchvision_download(cfg)
        folder, looked = _find_idx_dir(cfg.model_copy(update={"root": str(_download_root(cfg))}))
    if folder is None:
        raise _missing(cfg, looked, "install it with `apt-get install dataset-fashion-mnist`, or ")
    arrays = []
    for f in _FMNIST_FILES:
        path = folder / f"{f}.gz" if (folder / f"{f}.gz").is_file() else folder / f
        arr = read_idx(path)
        want = 3 if "images" in f else 1
        if arr.dim() != want:
            raise CorruptDataError(path, f"expected a {want}-d IDX array, got shape {list(arr.shape)}")
        arrays.append(arr)
    tx, ty, vx, vy = arrays
    for x, y, f in ((tx, ty, _FMNIST_FILES[1]), (vx, vy, _FMNIST_FILES[3])):
        if len(x) != len(y) or (len(y) and int(y.max()) >= 10):
            raise CorruptDataError(
                folder / f,
                f"{len(y)} labels (max {int(y.max()) if len(y) else '-'}) "
                f"for {len(x)} images; want one label in 0..9 per image",
            )
    return tx.unsqueeze(1), ty.long(), vx.unsqueeze(1), vy.long()


# --------------------------------------------------------------------------------------------- cifar
def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # latin1: the official batches are Python-2 pickles
    except Exception as exc:
        raise CorruptDataError(path, f"not a readable pickle ({type(exc).__name__})") from None
    if not isinstance(d, dict):
        raise CorruptDataError(path, f"expected a dict, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_part(folder: Path, files: tuple[str, ...], label_key: str, n_classes: int) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for name in files:
        d = _unpickle(folder / name)
        try:
            x = torch.as_tensor(d["data"]).to(torch.uint8).reshape(-1, 3, 32, 32)
            y = torch.as_tensor(d[label_key], dtype=torch.long)
        except Exception as exc:
            raise CorruptDataError(folder / name, f"missing or malformed 'data'/'{label_key}' ({exc})") from None
        if len(x) != len(y) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes)):
            raise CorruptDataError(folder / name, f"{len(y)} labels for {len(x)} images or labels out of range")
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _load_cifar(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    sub, train_files, test_files, label_key, meta_file, names_key = _CIFAR[cfg.name]
    n_classes = 10 if cfg.name == "cifar10" else 100

    def find() -> tuple[Path | None, list[Path]]:
        looked = [b / sub for b in _bases(cfg.root, ENV_ROOT)]
        ok = [d for d in looked if all((d / f).is_file() for f in (*train_files, *test_files))]
        return (ok[0] if ok else None), looked

    folder, looked = find()
    if folder is None and cfg.download:
        _torchvision_download(cfg)
        cfg = cfg.model_copy(update={"root": str(_download_root(cfg))})
        folder, looked = find()
    if folder is None:
        raise _missing(cfg, looked)
    tx, ty = _cifar_part(folder, train_files, label_key, n_classes)
    vx, vy = _cifar_part(folder, test_files, label_key, n_classes)
    classes = [str(i) for i in range(n_classes)]
    if (folder / meta_file).is_file():
        names = _unpickle(folder / meta_file).get(names_key)
        if isinstance(names, list) and len(names) == n_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return tx, ty, vx, vy, classes


# --------------------------------------------------------------------------------------------- imagefolder
def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _decode(paths: list[Path], size: int) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                buf = bytearray(im.tobytes())
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"data.root: unreadable image {p} ({type(exc).__name__}); remove or fix it") from None
        out[i] = torch.frombuffer(buf, dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
    return out


def _scan(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = _images_in(folder / c) if (folder / c).is_dir() else []
        paths += found
        labels += [i] * len(found)
    return paths, labels


def _load_imagefolder(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, list[str]]:
    if not cfg.root:
        raise DataError("data.root: imagefolder needs data.root = a folder of class sub-folders (or train/ + val/)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"data.root: imagefolder folder {root} does not exist; point data.root at it")
    val_dir = next((root / v for v in ("val", "test") if (root / v).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and val_dir is not None else root
    classes = [p.name for p in _class_dirs(train_dir)]
    if len(classes) < 2:
        raise DataError(
            f"data.root: imagefolder {train_dir} has {len(classes)} class sub-folder(s); "
            f"classification needs at least 2 (one folder of images per class)"
        )
    paths, labels = _scan(train_dir, classes)
    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        raise DataError(
            f"data.root: class folder(s) {empty} in {train_dir} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
        )
    train_x, train_y = _decode(paths, cfg.image_size), torch.tensor(labels)
    if train_dir is root:
        if cfg.val_fraction is not None:
            return train_x, train_y, None, None, classes  # load_dataset holds the fraction out
        return (*_holdout(train_x, train_y, 0.2, cfg.split_seed), classes)
    unknown = sorted({p.name for p in _class_dirs(val_dir)} - set(classes))
    if unknown:
        raise DataError(f"data.root: {val_dir} has classes {unknown} that {train_dir} lacks; make them match")
    vpaths, vlabels = _scan(val_dir, classes)
    if not vpaths:
        raise DataError(f"data.root: {val_dir} holds no images; fill it or remove it to split train by ratio")
    return train_x, train_y, _decode(vpaths, cfg.image_size), torch.tensor(vlabels), classes


# --------------------------------------------------------------------------------------------- synthetic
def _synthetic(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    s = cfg.synthetic
    g = torch.Generator().manual_seed(cfg.split_seed)
    # one random template per class plus noise: learnable, so tests can see a model improve
    templates = torch.randint(0, 128, (s.num_classes, s.in_chans, s.size, s.size), generator=g)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, s.num_classes, (n,), generator=g)
        noise = torch.randint(0, 128, (n, s.in_chans, s.size, s.size), generator=g)
        return (templates[y] + noise).to(torch.uint8), y

    (tx, ty), (vx, vy) = make(s.num_train), make(s.num_val)
    return tx, ty, vx, vy, [f"class{i}" for i in range(s.num_classes)]


# --------------------------------------------------------------------------------------------- on the device
class DeviceData:
    """A :class:`TensorSplits` on the training device, batched and augmented there.

    Augmentation is the standard small-image recipe (random crop with zero padding + horizontal flip, He et
    al., "Deep Residual Learning", CVPR 2016, sec. 4.2), done on whole batches with ``gather``; inputs are
    then normalised and, for a lower-fidelity resolution, resized with ``F.interpolate`` (antialiased when
    shrinking). All random choices come from a caller-given CPU ``torch.Generator``, so the batches of an
    epoch are the same on CPU and CUDA and after a resume.
    """

    def __init__(self, splits: TensorSplits, device: str | torch.device = "cpu") -> None:
        self.splits = splits
        self.device = torch.device(device)
        self.train_x = splits.train_x.to(self.device)
        self.train_y = splits.train_y.to(self.device)
        self.val_x = splits.val_x.to(self.device)
        self.val_y = splits.val_y.to(self.device)
        c = splits.in_chans
        # normalise straight from uint8: (x - 255 m) / (255 s)
        self._mean = torch.tensor(splits.mean, device=self.device).view(1, c, 1, 1) * 255
        self._inv_std = 1 / (torch.tensor(splits.std, device=self.device).view(1, c, 1, 1) * 255)
        self.train_idx: Tensor | None = None
        self.img_size = splits.img_size
        self.hflip = splits.hflip
        self.crop_padding = splits.crop_padding
        self.channels_last = False

    def to(self, device: str | torch.device) -> DeviceData:
        """The same data (and fidelity) on another device."""
        if torch.device(device) == self.device:
            return self
        moved = DeviceData(self.splits, device)
        moved.train_idx = None if self.train_idx is None else self.train_idx.to(moved.device)
        moved.img_size, moved.hflip, moved.crop_padding = self.img_size, self.hflip, self.crop_padding
        moved.channels_last = self.channels_last
        return moved

    def with_fidelity(
        self,
        train_fraction: float = 1.0,
        img_size: int | None = None,
        subset_seed: int = 0,
        channels_last: bool = False,
    ) -> DeviceData:
        """A view (sharing the tensors) using a seeded, class-stratified ``train_fraction`` of the training
        split, inputs resized to ``img_size`` (None = native) and optionally channels_last batches."""
        view = copy.copy(self)
        frac_idx = stratified_subset(self.splits.train_y, train_fraction, subset_seed) if train_fraction < 1 else None
        view.train_idx = None if frac_idx is None else frac_idx.to(self.device)
        view.img_size = img_size or self.splits.img_size
        view.channels_last = channels_last
        return view

    def with_augment(self, hflip: bool | None = None, crop_padding: int | None = None) -> DeviceData:
        """A view with other augmentation settings (None keeps the current one)."""
        view = copy.copy(self)
        view.hflip = self.hflip if hflip is None else hflip
        view.crop_padding = self.crop_padding if crop_padding is None else crop_padding
        return view

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def in_chans(self) -> int:
        return self.splits.in_chans

    @property
    def num_train(self) -> int:
        return len(self.train_y) if self.train_idx is None else len(self.train_idx)

    @property
    def num_val(self) -> int:
        return len(self.val_y)

    def steps_per_epoch(self, batch_size: int, max_batches: int | None = None) -> int:
        """Batches per epoch: full batches only (fixed shapes), or one batch when the split is smaller."""
        steps = max(1, self.num_train // batch_size)
        return min(steps, max_batches) if max_batches else steps

    def train_batches(
        self, batch_size: int, generator: torch.Generator, max_batches: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled, augmented, normalised ``(x float [B, C, S, S], y int64 [B])`` batches."""
        n = self.num_train
        steps = self.steps_per_epoch(batch_size, max_batches)
        bs = min(batch_size, n)
        # draw every random number of the epoch up front on the CPU generator: one transfer per epoch
        order = torch.randperm(n, generator=generator)[: steps * bs].view(steps, bs).to(self.device)
        p = self.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (steps, bs, 2), generator=generator).to(self.device) if p else None
        flips = (torch.rand(steps, bs, generator=generator) < 0.5).to(self.device) if self.hflip else None
        for i in range(steps):
            idx = order[i] if self.train_idx is None else self.train_idx[order[i]]
            x = self.train_x[idx]
            if offsets is not None:
                x = _random_crop(x, p, offsets[i])
            if flips is not None:
                x = torch.where(flips[i].view(-1, 1, 1, 1), x.flip(3), x)
            yield self._finish(x), self.train_y[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation split in order, normalised and resized, never augmented."""
        for start in range(0, self.num_val, batch_size):
            yield self._finish(self.val_x[start : start + batch_size]), self.val_y[start : start + batch_size]

    def _finish(self, x: Tensor) -> Tensor:
        x = (x.float() - self._mean) * self._inv_std
        if self.img_size != x.shape[-1]:
            size, shrink = (self.img_size, self.img_size), self.img_size < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _random_crop(x: Tensor, pad: int, offsets: Tensor) -> Tensor:
    """Crop each image of ``x`` [B, C, H, W] at its own offset (dy, dx) in [0, 2 pad] of the zero-padded batch."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return x.gather(3, cols)


def to_device_data(data: TensorSplits | DeviceData, device: str | torch.device) -> DeviceData:
    """``data`` as a DeviceData on ``device`` (moved or wrapped as needed)."""
    return data.to(device) if isinstance(data, DeviceData) else DeviceData(data, device)
