"""Save and load models as ``model.safetensors`` (weights) plus ``model.json`` (class and config).

Works for any module with a dataclass ``config`` and a ``config_class`` attribute (the Mamba models, the audio
models), so a run directory is loadable for inference on its own.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_model as _load_safetensors, save_model as _save_safetensors

WEIGHTS, CONFIG = "model.safetensors", "model.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/model.json`` (each via a temporary file and rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    meta = {"model_class": model_class_name(model), "config": dataclasses.asdict(model.config)}
    tmp = directory / (WEIGHTS + ".tmp")
    _save_safetensors(model, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    _atomic_write_text(directory / CONFIG, json.dumps(meta, indent=2))
    return directory


def read_model_json(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model config here (expected {CONFIG} beside {WEIGHTS})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in ("model_class", "config") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{path}: not a model config written by save_model (no {' or '.join(missing)})")
    return meta


def config_differences(expected: dict, found: dict) -> list[str]:
    """Human-readable list of fields that differ between two config dicts."""
    return [f"{k}: checkpoint has {found.get(k, '<missing>')!r}, model has {expected.get(k, '<missing>')!r}"
            for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]


def load_weights(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load saved weights into ``model``, refusing (with the differing fields named) a config that differs."""
    meta = read_model_json(directory)
    # compare as JSON sees it, so a tuple field and its saved list are equal
    diffs = config_differences(json.loads(json.dumps(dataclasses.asdict(model.config))), meta["config"])
    if diffs:
        raise ValueError(f"{Path(directory) / CONFIG}: config does not match the model: " + "; ".join(diffs))
    missing, unexpected = _load_safetensors(model, str(Path(directory) / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{Path(directory) / WEIGHTS}: weights do not match the model "
                         f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})")
    return model


def model_class_name(model: nn.Module) -> str:
    """The importable name recorded in model.json and in checkpoints, e.g. 'ssm_core.models.backbone.MambaLMHeadModel'."""
    model = getattr(model, "module", model)
    return f"{type(model).__module__}.{type(model).__qualname__}"


def build_model(model_class: str, config: dict) -> nn.Module:
    """A freshly initialised model from its recorded class name and config dict."""
    module_name, _, cls_name = model_class.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(cls.config_class(**config))


def load_model(directory: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild the model saved in ``directory`` from its ``model.json`` and load its weights."""
    meta = read_model_json(directory)
    model = build_model(meta["model_class"], meta["config"])
    load_weights(model, directory)
    return model.to(map_location)
