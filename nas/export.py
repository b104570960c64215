"""Export one trial as a timm ``local-dir`` folder: ``config.json`` (+ ``model.safetensors``).

After ``import nas`` (which registers the ``mixerformer`` entrypoint), stock timm rebuilds it:
``timm.create_model("local-dir:DIR", pretrained=True)`` (the proxy-trained weights) or
``timm.create_model("local-dir:DIR", num_classes=K)`` (the architecture with a fresh K-way head).

``config.json`` follows timm's hub layout (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
``model_args``, ``pretrained_cfg``) with ``model_args`` always written in full, because timm rebuilds the
*default* architecture when it is missing. ``pretrained_cfg`` holds only timm ``PretrainedCfg`` field names
(anything else makes the loader raise TypeError). Provenance goes into a top-level ``nas`` block, which timm's
loader ignores. The files are written by hand rather than with ``timm.models.save_for_hf``: that helper
derives extra ``model_args`` (``global_pool``, ``img_size``) from model traits, which would make the stored
arguments differ from the trial's, and it needs the weights even for an architecture-only export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas import layout, results
from nas.errors import NasError, StudyError
from nas.study_record import StudyRecord
from nas.trial_record import TrialRecord

WEIGHTS_NAME = "model.safetensors"
# Keys of a model's pretrained_cfg that describe where *its* weights came from, not the exported ones.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "architecture")


def _pretrained_cfg_fields() -> set[str]:
    from timm.models import PretrainedCfg

    return {f.name for f in dataclasses.fields(PretrainedCfg)}


def _norm_stats(study, in_chans: int) -> tuple[list[float], list[float]] | None:
    """Per-channel mean/std the study's data was normalised with, when the study recorded them."""
    rec = StudyRecord.of(study)
    for src in (rec.data_stats, rec.section("data")):
        if isinstance(src, dict) and src.get("mean") and src.get("std"):
            mean, std = [float(v) for v in src["mean"]], [float(v) for v in src["std"]]
            if len(mean) == 1:
                mean, std = mean * in_chans, std * in_chans
            if len(mean) == len(std) == in_chans:
                return mean, std
    return None


def _pretrained_cfg(model, model_args: dict[str, Any], study) -> dict[str, Any]:
    fields = _pretrained_cfg_fields()
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k in fields and k not in _SOURCE_KEYS}
    in_chans = int(model_args.get("in_chans", 3))
    img = model_args.get("img_size", 224)
    h, w = (img, img) if isinstance(img, int) else tuple(img)
    cfg["input_size"] = [in_chans, h, w]
    cfg.pop("pool_size", None)  # the preset's 224-px pool size is wrong at any other resolution
    cfg.pop("test_input_size", None)
    cfg["num_classes"] = int(model_args.get("num_classes", model.num_classes))
    stats = _norm_stats(study, in_chans)
    if stats is not None:
        cfg["mean"], cfg["std"] = stats
    elif len(cfg.get("mean", ())) != in_chans:
        # ImageNet statistics do not fit a non-RGB input; average them rather than break timm's transforms
        cfg["mean"] = [sum(cfg["mean"]) / len(cfg["mean"])] * in_chans
        cfg["std"] = [sum(cfg["std"]) / len(cfg["std"])] * in_chans
    cfg["custom_load"] = False
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v is not None}


def _resolve(study, trial: int | TrialRecord) -> TrialRecord:
    rec = trial if isinstance(trial, TrialRecord) else results.get_record(study, int(trial))
    if rec.state != "COMPLETE":
        why = {"PRUNED": f"pruned at epoch {rec.pruned_at}", "FAIL": f"failed: {rec.failure or '?'}"}.get(
            rec.state, rec.state.lower()
        )
        raise StudyError(
            f"study '{study.study_name}': trial {rec.number} is {why}; only COMPLETE trials can be exported "
            "(see `nas pareto` for candidates)"
        )
    if not rec.arch:
        raise StudyError(f"study '{study.study_name}': trial {rec.number} has no 'arch' user attribute")
    return rec


def _checkpoint_state(study, rec: TrialRecord) -> dict[str, Any]:
    """The trial's weights: from Ray Tune's storage (a ``file://``, ``s3://``... URI of the checkpoint folder), or
    from a path relative to the study folder (studies written before checkpoints went through Tune)."""
    import safetensors.torch

    if not rec.checkpoint:
        raise StudyError(f"study '{study.study_name}': trial {rec.number} kept no checkpoint; export without --weights")
    if "://" in rec.checkpoint:
        from pyarrow import fs

        where = f"{rec.checkpoint.rstrip('/')}/{WEIGHTS_NAME}"
        try:
            filesystem, path = fs.FileSystem.from_uri(where)
            with filesystem.open_input_file(path) as f:
                return safetensors.torch.load(f.read())
        except (OSError, ValueError) as e:
            raise StudyError(
                f"study '{study.study_name}': checkpoint of trial {rec.number} cannot be read at {where} "
                f"({' '.join(str(e).split())[:160]}); check that this machine sees the study's ray.storage_path, "
                "or export without --weights"
            ) from None
    study_dir = Path(StudyRecord.of(study).study_dir or layout.study_dir(study.study_name))
    path = study_dir / rec.checkpoint
    if not path.is_file():
        raise StudyError(
            f"study '{study.study_name}': checkpoint of trial {rec.number} not found at {path}; run from the "
            "folder the study was run in (study_dir is relative to it) or export without --weights"
        )
    return safetensors.torch.load_file(str(path), device="cpu")


def build_model(rec: TrialRecord, state: dict[str, Any] | None = None):
    """The trial's network rebuilt from its stored ``arch`` (and weights, if a state dict is given)."""
    import timm

    import nas  # noqa: F401  (registers mixerformer)

    try:
        model = timm.create_model("mixerformer", **rec.arch)
    except NasError as e:
        raise StudyError(f"trial {rec.number}: stored arch does not build ({e})") from None
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise StudyError(
                f"trial {rec.number}: checkpoint {rec.checkpoint} does not match the stored arch ({first[:160]})"
            ) from None
    return model.eval()


def _provenance(study, rec: TrialRecord, storage_url: str, ckpt_sha: str | None) -> dict[str, Any]:
    srec = StudyRecord.of(study)
    objs = srec.objective_list
    return {
        "study": study.study_name,
        "trial": rec.number,
        "objectives": [{"name": o.name, "direction": o.direction, "value": rec.values.get(o.name)} for o in objs],
        # 95 % Wilson interval over the validation images (None: evaluated before they were kept)
        "accuracy_interval": list(rec.accuracy_interval) if rec.accuracy_interval else None,
        "validation_set": rec.val_set,
        "throughput": rec.throughput,
        "params": rec.params,
        "flops": rec.flops,
        "arch_id": rec.arch_id,
        "placement": rec.placement,
        "fidelity": rec.fidelity,
        "full_fidelity": rec.full_fidelity,
        "reused_from": rec.reused_from,
        "search_space_hash": srec.space_hash,
        "study_versions": srec.versions,
        "export_versions": layout.package_versions(),
        "storage": layout.safe_url(storage_url) if storage_url else None,
        "weights_sha256": ckpt_sha,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"export: --out {out} is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise StudyError(f"export: --out {out} exists and is not empty; give a new or empty folder")


def export_trial(
    study,
    trial: int | TrialRecord,
    out_dir: str | Path,
    weights: bool = False,
    storage_url: str | None = None,
) -> Path:
    """Write the trial as a timm local-dir folder at ``out_dir`` (atomically: all files or none).

    Raises StudyError for a trial that is not COMPLETE, a missing checkpoint (with ``weights``), or an
    ``out_dir`` that exists and is not empty.
    """
    import safetensors.torch

    out = Path(out_dir)
    _check_out(out)
    rec = _resolve(study, trial)
    model = build_model(rec, _checkpoint_state(study, rec) if weights else None)
    model_args = dict(rec.arch)
    config = {
        "architecture": "mixerformer",
        "num_classes": int(model.num_classes),
        "num_features": int(model.num_features),
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": _pretrained_cfg(model, model_args, study),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sha = None
        if weights:
            path = tmp / WEIGHTS_NAME
            sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        config["nas"] = _provenance(study, rec, storage_url or layout.url_of(study), sha)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _check_out(out)  # re-check: someone may have written into it meanwhile
        if out.is_dir():
            out.rmdir()  # empty: rename() cannot replace a directory
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
