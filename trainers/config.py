"""User-written configuration of the proxy trainer and of its dataset (pydantic v2, YAML-friendly).

``TrainConfig`` holds the proxy-training budget and optimiser settings; ``DataConfig`` says which dataset to
load and how to augment it. Both forbid unknown fields. ``parse_config`` turns pydantic's multi-line
validation report into one :class:`~trainers.errors.TrainerConfigError` line that names the field and the fix.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainers.errors import TrainerConfigError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class TrainConfig(BaseModel):
    """Proxy-training budget and optimiser settings for one trial.

    AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) with a per-step linear
    warm-up then cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017) and label smoothing (Szegedy et al.,
    "Rethinking the Inception Architecture", CVPR 2016). The multi-fidelity knobs are ``epochs``,
    ``train_fraction`` (a seeded, class-stratified subset) and ``img_size`` (inputs resized on the device).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, description="epochs of the full budget (the cosine schedule spans them)")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0, description="peak learning rate after warm-up")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decay; never applied to norms/biases/1-d params")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length in epochs (may be fractional)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null disables clipping")
    train_fraction: float = Field(1.0, gt=0, le=1, description="fraction of the training split used")
    subset_seed: int = Field(
        0,
        description="seed of the train_fraction subset (kept apart from `seed` so "
        "every trial of a study sees the same images)",
    )
    img_size: int | None = Field(None, ge=8, description="input resolution; null = dataset native")
    seed: int = Field(0, description="seeds torch and the batch/augmentation generator")
    device: str = Field("auto", description='"auto" | "cpu" | "cuda" | "cuda:N"')
    compile: bool = Field(False, description="wrap the model in torch.compile")
    amp: Literal["auto", "bf16", "off"] = Field("auto", description='"auto" = bf16 autocast on CUDA only')
    channels_last: bool = Field(True, description="channels_last memory format (applied on CUDA only)")
    eval_batch_size: int = Field(512, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (tests, smoke runs)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError('must be "auto", "cpu", "cuda" or "cuda:N"')
        return value

    def resume_fingerprint(self) -> dict[str, Any]:
        """Fields that change the training curve; a checkpoint resumes only under the same values.

        Device, compile, eval batch size and memory format change speed, not the optimisation itself, so a
        stopped trial may continue on another machine.
        """
        runtime = {"device", "compile", "eval_batch_size", "channels_last", "amp"}
        return {k: v for k, v in self.model_dump().items() if k not in runtime}


class SyntheticSpec(BaseModel):
    """Shape of the random-tensor dataset used by unit tests (no real data involved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_train: int = Field(256, ge=1)
    num_val: int = Field(64, ge=1)
    num_classes: int = Field(4, ge=2)
    in_chans: int = Field(3, ge=1)
    size: int = Field(16, ge=4)


class DataConfig(BaseModel):
    """Which dataset to load, where from, and how to augment it.

    Datasets: ``fashion_mnist`` (Xiao et al., 2017; IDX files), ``cifar10`` / ``cifar100`` (Krizhevsky, 2009;
    torchvision's pickle layout), ``imagefolder`` (a folder of class sub-folders) and ``synthetic`` (tests).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("fashion_mnist", description="fashion_mnist | cifar10 | cifar100 | imagefolder | synthetic")
    root: str | None = Field(None, description="data folder; null = env NAS_DATA_ROOT / defaults")
    download: bool = Field(False, description="download with torchvision when missing (needs network)")
    val_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="hold out this fraction of train as val; null = official test set "
        "(imagefolder: its val/ folder, else 0.2)",
    )
    split_seed: int = Field(0, description="seed of the train/val hold-out split")
    image_size: int = Field(64, ge=8, description="imagefolder: every image is decoded once at this size")
    hflip: bool | None = Field(None, description="random horizontal flip; null = dataset default")
    crop_padding: int | None = Field(None, ge=0, description="random-crop padding in pixels; null = default")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)


_M = TypeVar("_M", bound=BaseModel)


def parse_config(model: type[_M], data: Any, where: str = "") -> _M:
    """Validate ``data`` (a dict from YAML, or an instance) into ``model``; errors become one line.

    ``where`` names the place the data came from (e.g. ``"studies/x.yaml: train"``) and prefixes the message.
    """
    if isinstance(data, model):
        return data
    if data is None:
        data = {}
    prefix = where or model.__name__
    if not isinstance(data, dict):
        raise TrainerConfigError(f"{prefix}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown field '{loc}' (allowed: {', '.join(model.model_fields)})")
            else:
                problems.append(f"field '{loc}' = {err.get('input')!r}: {err['msg']}")
        raise TrainerConfigError(f"{prefix}: {'; '.join(problems)}; fix it in the config") from None
