"""StudyConfig: what a study file (studies/*.yaml) says — space, data, proxy budget, objectives, search machinery.

Everything is validated before anything is written to the storage: a bad file fails in one line naming the file,
the field and the fix (nas.errors.ConfigError), and the storage is not touched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nas import layout
from nas.errors import ConfigError
from nas.evaluation import PRIOR_SEED_SD, SETTLED
from nas.space import SearchSpace, pydantic_line
from nas.study_record import StudyRecord
from nas.yamlfile import read_yaml
from trainers.config import DataConfig, TrainConfig

# the objective names a study file may use: those nas.layout knows the direction of (one list, written there)
ObjectiveName = Literal[tuple(layout.DIRECTIONS)]  # type: ignore[valid-type]


class ObjectiveSpec(BaseModel):
    """An objective as the study file writes it; the direction defaults to the name's (nas.layout.DIRECTIONS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ObjectiveName
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _default_direction(self) -> ObjectiveSpec:
        if self.direction is None:
            object.__setattr__(self, "direction", layout.DIRECTIONS[self.name])
        return self


class SamplerConfig(BaseModel):
    """``sampler:`` of a study file: which Optuna sampler proposes architectures."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["tpe", "nsga2", "random", "gp", "grid"] = Field(
        default="tpe", description="grid: every architecture once (tabulating a space); the others sample"
    )
    n_startup_trials: int = Field(default=6, ge=0, description="random trials before TPE/GP model the space")


class PrunerConfig(BaseModel):
    """``pruner:`` of a study file: which pruner stops trials at the rungs, and how hard."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["pareto", "median", "hyperband", "none"] = "pareto"
    # defaults: what the search lab chose on its table (benchmarks/RESULTS.md "Search-quality lab")
    eta: int = Field(default=2, ge=2, description="keep the top 1/eta at each rung (pareto, hyperband)")
    min_trials: int = Field(default=8, ge=1, description="pareto/median: trials a rung needs before it prunes")


class FidelityConfig(BaseModel):
    """``fidelity:`` of a study file: the epochs (rungs) at which the pruner decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rungs: list[int] = Field(
        default_factory=list,
        description="epochs at which the pruner decides; default: 1/4 and 1/2 of train.epochs",
    )


def default_rungs(epochs: int) -> list[int]:
    """The search lab's choice: decide at 1/4 and at 1/2 of the training epochs, with or without racing (how it was
    chosen, and the racing default it replaced: benchmarks/RESULTS.md, "The lab's truth held out")."""
    return sorted({r for r in (epochs // 4, epochs // 2) if 1 <= r < epochs})


class BudgetConfig(BaseModel):
    """``budget:`` of a study file: trials this run adds, a wall-time limit, trials trained at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_trials: int | None = Field(default=12, ge=1, description="trials this run adds to the study")
    wall_time_s: float | None = Field(default=None, gt=0)
    max_concurrent: int = Field(default=2, ge=1)
    settle_rounds: int = Field(
        default=8,
        ge=0,
        description="at the end of a search on this machine's device, re-measure the front's throughputs "
        "interleaved and paired (nas settle) for at most this many rounds when neighbours' intervals overlap; 0: never",
    )


class ReplicatesConfig(BaseModel):
    """``replicates:`` of a study file: retrain the architectures whose membership of the front is uncertain with
    other training seeds (racing: nas.engine.racing, nas.replicates) until it is settled or the replicate budget is
    spent.

    The k-th replicate of an architecture trains it at the same budget with ``train.seed + k``; the architecture's
    accuracy is then the mean over its seeds, and the front is computed on those means."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_per_arch: int = Field(default=3, ge=1, description="seeds of one architecture at most (its first included)")
    budget_share: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="replicates train at most this share of the study's training epochs (compute, not trials)",
    )
    settled: float = Field(
        default=SETTLED, gt=0.5, lt=1, description="membership is settled when P(front) >= this or <= 1 - this"
    )
    prior_seed_sd: float = Field(
        default=PRIOR_SEED_SD, ge=0, lt=0.5,
        description="the seed-to-seed SD of accuracy assumed until replicates measure it (0.005 = 0.5 points)",
    )  # fmt: skip
    promote_pruned: bool = Field(
        default=True,
        description="race the pruned architectures too: one whose final accuracy, predicted from the rung it was "
        "pruned at, leaves its membership of the front unsettled is trained to full fidelity with another seed",
    )
    predictor: str = Field(
        default="rung_line",
        pattern=r"^(rung_line|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="what predicts a pruned trial's final accuracy for promote_pruned: rung_line, or module:attribute "
        "of a class implementing nas.engine.predictors.Predictor",
    )
    policy: str = Field(
        default="race",
        pattern=r"^(race|every|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description='which architecture gets the next replicate (nas.engine.policies): "race": only the architectures '
        'whose membership of the front is unsettled; "every": every architecture gets max_per_arch seeds (the costly '
        "baseline of benchmarks that train every architecture several times; settled is not used), within "
        "budget_share; or module:attribute of a class implementing nas.engine.policies.Policy",
    )


class ResourcesConfig(BaseModel):
    """``resources:`` of a study file: what one trial asks of a Ray node (checked against the cluster and against
    ``train.device`` before anything is written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0, le=8)


class ThroughputConfig(BaseModel):
    """How throughput is measured (timm benchmark method, repeated); part of the objective's definition."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int = Field(default=64, ge=1)
    repeats: int = Field(default=3, ge=1)
    warmup: int = Field(default=3, ge=0)
    steps: int = Field(default=10, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["default", "max-autotune"] | None = None
    threads: int | None = Field(default=None, ge=1, description="CPU threads while measuring (default: cpus_per_trial)")


class RayConfig(BaseModel):
    """``ray:`` of a study file: a local runtime (default) or a cluster, Tune's storage, restarts of dead workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str | None = Field(default=None, description="join this Ray cluster; null = start a local one")
    num_cpus: int | None = Field(default=None, ge=1, description="local Ray only: CPUs to offer")
    num_gpus: int | None = Field(
        default=None, ge=0, description="local Ray only: GPUs to offer (default: the ones CUDA sees)"
    )
    storage_path: str | None = Field(
        default=None,
        description="where Ray Tune keeps trial checkpoints: a path every node sees (NFS) or a pyarrow URI such as "
        "s3://bucket/prefix; default <study folder>/ray (enough for one machine)",
    )
    max_failures: int = Field(default=1, ge=0, description="retries of a trial whose worker process died")


class StudyConfig(BaseModel):
    """A study file. ``space`` is a path relative to the study file (or absolute)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a folder name: no "..", no "/"
    space: str
    dataset: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    objectives: list[ObjectiveSpec] = Field(
        default_factory=lambda: [ObjectiveSpec(name="accuracy"), ObjectiveSpec(name="throughput")], min_length=1
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    throughput: ThroughputConfig = Field(default_factory=ThroughputConfig)
    replicates: ReplicatesConfig | None = Field(default=None, description="racing with seed replicates; null = off")
    storage: str | None = Field(default=None, description="SQLAlchemy URL; null = sqlite file under studies/<name>/")
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_rungs(cls, data: Any) -> Any:
        """A study that names no rungs decides at 1/4 and 1/2 of its epochs (an explicit ``[]`` never prunes)."""
        if isinstance(data, dict):
            fidelity = data.get("fidelity")
            if fidelity is None or (isinstance(fidelity, dict) and "rungs" not in fidelity):
                train = data.get("train")
                epochs = train.get("epochs") if isinstance(train, dict) else getattr(train, "epochs", None)
                if not isinstance(epochs, int):
                    epochs = TrainConfig.model_fields["epochs"].default
                data = {**data, "fidelity": {**(fidelity or {}), "rungs": default_rungs(epochs)}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: each objective at most once, got {names}")
        rungs = self.fidelity.rungs
        if rungs != sorted(set(rungs)) or any(r < 1 or r >= self.train.epochs for r in rungs):
            raise ValueError(
                f"fidelity.rungs {rungs} must be increasing epochs in [1, train.epochs - 1 = {self.train.epochs - 1}]"
            )
        self._check_device_and_resources()
        return self

    def _check_device_and_resources(self) -> None:
        """``train.device`` and ``resources.gpus_per_trial`` must agree: Ray hides the GPUs from a trial given no
        GPU share (it would fail on ``cuda`` only once started), and a GPU share trained on ``cpu`` sits idle."""
        device, gpus = self.train.device, self.resources.gpus_per_trial
        if device.startswith("cuda") and gpus == 0:
            raise ValueError(
                f"train.device is {device!r} but resources.gpus_per_trial is 0, so Ray gives each trial no GPU; "
                "set resources.gpus_per_trial (1, or a share such as 0.25) or train.device: auto"
            )
        if device == "cpu" and gpus > 0:
            raise ValueError(
                f"train.device is 'cpu' but resources.gpus_per_trial is {gpus:g}: the GPU share would sit idle; "
                "set resources.gpus_per_trial: 0 or train.device: auto"
            )

    # ------------------------------------------------------------------------------------------ derived
    @classmethod
    def of_record(cls, rec: StudyRecord) -> StudyConfig:
        """The study file a study stored (:attr:`nas.study_record.StudyRecord.config`), parsed.

        Raises:
            KeyError: the study has no stored configuration (not written by ``nas search``).
            ValueError: it was stored by an engine whose study files differ (pydantic's ValidationError).
        """
        if rec.config is None:
            raise KeyError(f"study '{rec.name}': no stored configuration (not written by `nas search`)")
        return cls.model_validate(rec.config)

    @property
    def directions(self) -> list[str]:
        """The objectives' directions, in objective order (``maximize``/``minimize``)."""
        return [str(o.direction) for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        """The objectives' names, in the order of a trial's values."""
        return [o.name for o in self.objectives]

    def study_dir(self, base: Path | None = None) -> Path:
        """The study's folder, ``<base>/<name>`` (default base: ``studies`` under the working directory)."""
        return layout.study_dir(self.name, base)

    def storage_url(self, base: Path | None = None) -> str:
        """The ``storage:`` URL, or the default SQLite file in the study's folder."""
        return self.storage or layout.default_storage_url(self.name, base)

    def train_for(self, replicate: int = 0) -> TrainConfig:
        """The training of an architecture's evaluation: the study's, or for its ``replicate``-th seed replicate the
        same with ``train.seed + replicate``."""
        return self.train.model_copy(update={"seed": self.train.seed + replicate}) if replicate else self.train

    def train_key(self, replicate: int = 0) -> str:
        """The fingerprint of :meth:`training_key` (16 hex): a trial's ``train_key``."""
        key = json.dumps(self.training_key(replicate), sort_keys=True).encode()
        return hashlib.sha256(key).hexdigest()[:16]

    def training_key(self, replicate: int = 0) -> dict[str, Any]:
        """What must match for a finished trial's result to be reused for the same architecture (a replicate's
        other seed makes it another training: never a copy of the first evaluation)."""
        return {
            "dataset": self.dataset.model_dump(mode="json"),
            "train": self.train_for(replicate).resume_fingerprint(),
            "rungs": list(self.fidelity.rungs),
            "throughput": self.throughput.model_dump(mode="json"),
        }


def read_study_file(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, SearchSpace]:
    """Load and validate a study file and its search space; raises ConfigError (one line) on any problem."""
    path = Path(path)
    raw = read_yaml(path, "study file not found; pass the path of a studies/*.yaml file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(pydantic_line(str(path), e)) from None
    space_path = Path(cfg.space)
    if not space_path.is_absolute():
        space_path = path.parent / space_path
    if not space_path.is_file():
        raise ConfigError(
            f"{path}: space: search space file {cfg.space!r} not found (looked for {space_path}); "
            "give its path relative to the study file"
        )
    space = SearchSpace.load(space_path)
    check_storage_url(cfg.storage, str(path))
    return cfg, space


def check_storage_url(url: str | None, where: str) -> None:
    """A ``storage:`` URL must be one SQLAlchemy can parse with a driver that is installed.

    Raises:
        ConfigError: it is not (one line naming ``where`` and the fix)."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
        u.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise ConfigError(
            f"{where}: storage: {url!r} is not a usable SQLAlchemy URL ({e}); "
            "use e.g. sqlite:///studies/x/study.db or postgresql://user@host/db"
        ) from None


def retraining_config(
    cfg: StudyConfig,
    name: str,
    storage: str,
    epochs: int,
    fraction: float,
    seed_offset: int = 0,
    test_split: bool = False,
) -> StudyConfig:
    """The configuration of a sub-study that retrains chosen architectures of ``cfg`` at another budget (``nas
    validate``, ``nas calibrate``): same data, space, throughput and resources; every trial trained to the end (no
    rungs, no pruning, no racing), only the planned ones (no budget of its own); ``seed_offset`` shifts the training
    seed (another seed of the same budget). ``test_split``: the images the proxy held out for validation go back
    into training and the dataset's own test split validates (``dataset.val_fraction: null``): the target a user
    trains at, measured on images no proxy trial ever saw."""
    raw = cfg.model_dump(mode="json")
    raw.update(
        name=name,
        dataset={**raw["dataset"], "val_fraction": None} if test_split else raw["dataset"],
        storage=storage,
        train={**raw["train"], "epochs": epochs, "train_fraction": fraction, "seed": cfg.train.seed + seed_offset},
        replicates=None,
        fidelity={"rungs": []},
        pruner={"name": "none"},
        sampler={"name": "random"},
        budget={**raw["budget"], "n_trials": None, "wall_time_s": None, "settle_rounds": 0},
    )
    return StudyConfig.model_validate(raw)
