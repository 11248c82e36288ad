"""A model directory: everything needed to use a trained model, in the layout the Hugging Face ecosystem expects.

    DIR/model.safetensors   the weights (safetensors)
    DIR/model.json          {"model_class": a registered name, "config": {...}, "parameters": N, "metadata": {...}}
    DIR/README.md           a model card, with the YAML front matter the Hub reads (library_name, tags, metrics)

``metadata`` (:class:`ModelInfo`) is what using the model needs beyond its weights: for a classifier its labels as
``id2label``/``label2id``, the window it was trained on, the tokenizer settings, the preset, what it was trained on
and for how many steps, its metrics and a command line that uses it. Copy the directory anywhere and
:func:`from_pretrained` (or ``SomeModel.from_pretrained``) loads it; nothing is fetched from the network.

The card records the SHA-256 of model.safetensors, so a copy can be checked against it.

Models shipped with the suite live in ``ssm_core/pretrained/<name>/`` (package data); :func:`from_pretrained` takes
their name (``from_pretrained("digits-classifier")``, see :func:`shipped_models`) wherever it takes a directory.

Loading runs no code from the directory: ``model_class`` is looked up in the registry (``registry.py``) and the
weights are safetensors. Directories written before ``metadata`` existed (and their module-path ``model_class``)
still load. ``save_model``/``load_model`` are the same functions as ``save_pretrained``/``from_pretrained``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_safetensors, save_model as _save_safetensors

from .errors import ModelCardExistsError, ModelFileError, ModelFileMissingError, WrongModelError
from .registry import describe, lookup, registered

WEIGHTS, CONFIG, CARD = "model.safetensors", "model.json", "README.md"
LIBRARY = "mamba-seq-suite"  # the model card's library_name, and how a card of ours is recognised
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"  # ssm_core/pretrained: the shipped models


def shipped_models() -> dict[str, Path]:
    """The models shipped inside the package: name -> model directory (``ssm_core/pretrained/<name>``)."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(SHIPPED_DIR.iterdir()) if (d / CONFIG).is_file()}


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """``name_or_path`` as a model directory: an existing path as it is, else a shipped model's name (a directory
    in the working directory of that name wins), else the path as given (loading it then says what is missing)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    return shipped_models().get(str(name_or_path), path)


def card_sha256(directory: str | os.PathLike) -> str | None:
    """The SHA-256 of model.safetensors that the model card of ``directory`` records (None when it records none):
    compare with :func:`file_sha256` of the weights to check a copy."""
    card = Path(directory) / CARD
    found = re.search(rf"^SHA-256 of `{re.escape(WEIGHTS)}`: `([0-9a-f]{{64}})`$", card.read_text(), re.MULTILINE)
    return found.group(1) if found else None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelInfo:
    """What a model directory says about its model besides class, config and weights (model.json's "metadata")."""
    task: str = ""                  # e.g. "dna-species-classification"
    labels: list[str] = field(default_factory=list)  # a classifier's outputs in order (id2label/label2id)
    window: int | None = None       # the input length it was trained on (bases, samples)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # how inputs become token ids
    preset: str | None = None
    trained_on: str = ""            # the data, in words
    steps: int | None = None        # optimiser steps trained
    metrics: dict[str, float] = field(default_factory=dict)  # "test_accuracy", "valid_loss", ...
    usage: str = ""                 # a command line that uses the model
    tags: list[str] = field(default_factory=list)  # model card tags besides "mamba" and "state-space-model"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        labels = out.pop("labels")
        if labels:
            out["id2label"] = {str(i): label for i, label in enumerate(labels)}
            out["label2id"] = {label: i for i, label in enumerate(labels)}
        return out

    @classmethod
    def from_json(cls, data: Any, source: str) -> "ModelInfo":
        """Read model.json's "metadata" (``source`` names the file in errors); unknown keys are ignored."""
        from ssm_core.train.config import from_dict  # imported here: ssm_core.train imports this module

        if not isinstance(data, dict):
            raise ModelFileError(f"{source}: metadata must be a mapping; got {data!r}")
        labels = _labels(data.get("id2label"), data.get("label2id"), source)
        known = {f.name for f in dataclasses.fields(cls)} - {"labels", "tokenizer", "metrics"}
        try:
            info = from_dict(cls, {k: v for k, v in data.items() if k in known}, f"{source}: metadata")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        tokenizer, metrics = data.get("tokenizer", {}), data.get("metrics", {})
        if not isinstance(tokenizer, dict):
            raise ModelFileError(f"{source}: metadata.tokenizer must be a mapping; got {tokenizer!r}")
        if not isinstance(metrics, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
            raise ModelFileError(f"{source}: metadata.metrics must map names to numbers; got {metrics!r}")
        return dataclasses.replace(info, labels=labels, tokenizer=tokenizer, metrics=metrics)


def _labels(id2label: Any, label2id: Any, source: str) -> list[str]:
    """The class names of model.json's id2label (keys "0".."n-1"), checked against label2id when present."""
    if id2label is None:
        return []
    if not isinstance(id2label, dict) or set(id2label) != {str(i) for i in range(len(id2label))} or \
            not all(isinstance(v, str) for v in id2label.values()):
        raise ModelFileError(f"{source}: metadata.id2label must map '0'..'n-1' to class names; got {id2label!r}")
    labels = [id2label[str(i)] for i in range(len(id2label))]
    if label2id is not None and label2id != {label: i for i, label in enumerate(labels)}:
        raise ModelFileError(f"{source}: metadata.label2id does not invert id2label ({label2id!r} vs {id2label!r})")
    return labels


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_card_is_ours(directory: Path) -> None:
    """Refuse to overwrite a README.md this suite did not write (the user's own notes in that directory)."""
    card = directory / CARD
    if card.exists() and f"library_name: {LIBRARY}" not in card.read_text(errors="replace").split("\n---", 1)[0]:
        raise ModelCardExistsError(f"{card}: a README.md that is not a model card of this suite is already there; "
                                   "not overwriting it (save the model into another directory)")


def save_model(model: nn.Module, directory: str | os.PathLike, info: ModelInfo | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write the model directory ``directory``: model.safetensors, model.json and the README.md model card (each
    through a temporary file and a rename). ``info`` defaults to the ``model_info`` the model was loaded with.
    ``dtype`` (e.g. ``torch.bfloat16``) stores the floating-point weights in that type (half the size; loading casts
    them back to the model's type); the model itself is left as it is.

    The model's class must be registered (``register_model``); a README.md of the user's own is never
    overwritten (``ModelCardExistsError``, before anything is written). Returns ``directory``.
    """
    directory = Path(directory)
    model = getattr(model, "module", model)  # unwrap DDP
    entry = registered(model)
    if info is None:
        info = getattr(model, "model_info", None) or ModelInfo()
    _check_card_is_ours(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parameters = sum(p.numel() for p in model.parameters())  # tied weights once
    meta = {"model_class": entry.name, "config": dataclasses.asdict(model.config), "parameters": parameters,
            "metadata": info.to_json()}
    tmp = directory / (WEIGHTS + ".tmp")
    stored = model if dtype is None else copy.deepcopy(model).to(dtype)  # .to casts floating-point tensors only
    _save_safetensors(stored, str(tmp), metadata={"format": "pt"})  # "format": what transformers' loaders expect
    os.replace(tmp, directory / WEIGHTS)
    _write_json_and_card(directory, meta, info)
    return directory


def _write_json_and_card(directory: Path, meta: dict, info: ModelInfo) -> None:
    _atomic_write_text(directory / CONFIG, json.dumps(meta, indent=2) + "\n")
    entry = lookup(meta["model_class"], str(directory / CONFIG))
    weights = directory / WEIGHTS
    _atomic_write_text(directory / CARD, model_card(directory.name, entry.name, entry.description,
                                                    meta.get("parameters"), info,
                                                    file_sha256(weights) if weights.is_file() else None))


def update_model_info(directory: str | os.PathLike, **changes: Any) -> ModelInfo:
    """Record more about a saved model (after its test, say): the ``ModelInfo`` fields given replace the saved ones,
    except ``metrics``, which are added to the saved metrics. Rewrites model.json and README.md; returns the info."""
    directory = Path(directory)
    meta = read_model_json(directory)
    info = ModelInfo.from_json(meta.get("metadata", {}), str(directory / CONFIG))
    if "metrics" in changes:
        changes["metrics"] = {**info.metrics, **changes["metrics"]}
    info = dataclasses.replace(info, **changes)
    _check_card_is_ours(directory)
    meta["metadata"] = info.to_json()
    _write_json_and_card(directory, meta, info)
    return info


def read_model_json(directory: str | os.PathLike) -> dict:
    """model.json of ``directory``, checked for the fields every model directory has."""
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        where = "no such directory" if not directory.is_dir() else f"no {CONFIG} here"
        raise ModelFileMissingError(f"{directory}: {where} (a model directory holds {WEIGHTS} + {CONFIG})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("model_class", "config") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ModelFileError(f"{path}: not a model config written by save_model (no {' or '.join(missing)})")
    if not isinstance(meta["config"], dict):
        raise ModelFileError(f"{path}: config must be a mapping of the model's settings; got {meta['config']!r}")
    return meta


def read_model_info(directory: str | os.PathLike) -> ModelInfo:
    """The ``ModelInfo`` of a model directory without loading its weights (empty for directories written before
    model.json had metadata)."""
    meta = read_model_json(directory)
    return ModelInfo.from_json(meta.get("metadata", {}), str(Path(directory) / CONFIG))


def config_differences(expected: dict, found: dict) -> list[str]:
    """Human-readable list of fields that differ between two config dicts."""
    return [f"{k}: checkpoint has {found.get(k, '<missing>')!r}, model has {expected.get(k, '<missing>')!r}"
            for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]


def load_weights(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load saved weights into ``model``, refusing (with the differing fields named) a config that differs."""
    directory = Path(directory)
    meta = read_model_json(directory)
    # compare as JSON sees it, so a tuple field and its saved list are equal
    diffs = config_differences(json.loads(json.dumps(dataclasses.asdict(model.config))), meta["config"])
    if diffs:
        raise ModelFileError(f"{directory / CONFIG}: config does not match the model: " + "; ".join(diffs))
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ModelFileMissingError(f"{directory}: no {WEIGHTS} beside {CONFIG} (a model directory needs both)")
    try:
        missing, unexpected = _load_safetensors(model, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as err:  # not safetensors, truncated, wrong shapes
        raise ModelFileError(f"{weights}: cannot read the weights ({type(err).__name__}: {err})") from None
    if missing or unexpected:
        raise ModelFileError(f"{weights}: weights do not match the model "
                             f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})")
    return model


def model_class_name(model: nn.Module) -> str:
    """The class's module path that checkpoints record, e.g. 'ssm_core.models.backbone.MambaLMHeadModel' (the
    registry knows registered classes by it too)."""
    model = getattr(model, "module", model)
    return f"{type(model).__module__}.{type(model).__qualname__}"


def build_model(model_class: str, config: dict, source: str = CONFIG) -> nn.Module:
    """A freshly initialised model of a registered class (``model_class``: its registered name or module path) from
    its config dict; ``source`` names the file in errors. Only registered classes are built (``UnknownModelError``)."""
    cls = lookup(model_class, source).cls
    if not isinstance(config, dict):
        raise ModelFileError(f"{source}: config must be a mapping of the model's settings; got {config!r}")
    try:
        return cls(cls.config_class(**config))
    except (TypeError, ValueError) as err:  # unknown or missing fields, values the config refuses
        raise ModelFileError(f"{source}: config does not describe a {cls.__name__} ({err})") from None


def load_model(directory: str | os.PathLike, map_location: str = "cpu", expected: type | None = None) -> nn.Module:
    """The model saved in the model directory ``directory`` (or the shipped model of that name; see the module
    docstring), on ``map_location``, with its ``ModelInfo`` as ``model.model_info``. With ``expected`` (a model
    class), a model of another class is refused (``WrongModelError``) before its weights are read.
    """
    directory = resolve_model_dir(directory)
    meta = read_model_json(directory)
    source = str(directory / CONFIG)
    entry = lookup(meta["model_class"], source)
    if expected is not None and not issubclass(entry.cls, expected):
        raise WrongModelError(f"{directory} holds {describe(entry.cls)}, not {describe(expected)}")
    info = ModelInfo.from_json(meta.get("metadata", {}), source)
    model = build_model(entry.name, meta["config"], source)
    load_weights(model, directory)
    model.model_info = info
    return model.to(map_location)


save_pretrained, from_pretrained = save_model, load_model


class PretrainedModel:
    """``Class.from_pretrained(path)`` and ``model.save_pretrained(path)`` for the suite's registered models."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> nn.Module:
        """The model saved in the model directory ``path``; ``WrongModelError`` when it holds another kind of model."""
        return load_model(path, device, expected=cls)

    def save_pretrained(self, path: str | os.PathLike, info: ModelInfo | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write the model directory ``path`` (weights, model.json, README.md model card); see ``save_model``."""
        return save_model(self, path, info, dtype)


def _number(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def model_card(name: str, model_class: str, description: str, parameters: int | None, info: ModelInfo,
               sha256: str | None = None) -> str:
    """The README.md of a model directory: YAML front matter for the Hugging Face Hub, then what the model is,
    what it was trained on and for how long, its metrics, how to use it and the weights' SHA-256."""
    front: dict[str, Any] = {"library_name": LIBRARY, "tags": ["mamba", "state-space-model", *info.tags]}
    if info.metrics:
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": info.task or "other", "name": info.task or "other"},
            "dataset": {"name": info.trained_on or "unspecified", "type": "custom"},
            "metrics": [{"type": k, "name": k, "value": v} for k, v in info.metrics.items()]}]}]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"{description[0].upper() + description[1:]} of {LIBRARY} (`{model_class}`"
             + (f", {parameters:,} parameters" if parameters is not None else "") + ")"
             + (f" for {info.task}." if info.task else "."), ""]
    facts = [("trained on", info.trained_on), ("training steps", info.steps), ("preset", info.preset),
             ("window", info.window), ("labels", ", ".join(info.labels)),
             ("tokenizer", ", ".join(f"{k} {v}" for k, v in info.tokenizer.items()))]
    facts = [(k, v) for k, v in facts if v not in (None, "")]
    if facts:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in facts] + [""]
    if info.metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in info.metrics.items()] + [""]
    lines += ["## How to use", "", "```python", "from ssm_core import from_pretrained", "",
              f'model = from_pretrained("{name}")  # this directory; model.model_info holds the metadata above', "```",
              ""]
    if info.usage:
        lines += ["```bash", info.usage, "```", ""]
    lines += [f"Files: `{WEIGHTS}` (weights), `{CONFIG}` (class, config and the metadata above). Loading it runs "
              "no code from this directory and needs no network.", ""]
    if sha256:
        lines += [f"SHA-256 of `{WEIGHTS}`: `{sha256}`", ""]
    return "\n".join(lines)
