"""Typed training configuration, config files (JSON/YAML) and the engine's shared command-line flags.

Every training command in the suite accepts the same engine flags (``add_engine_args``) and resolves its config
the same way (``resolve_config``): dataclass defaults, then ``--config FILE``, then ``--set key.sub=value``, then
the named flags (``--steps``, ``--lr``, ...), each later source overriding the earlier ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ssm_core.utils.cli import add_device_argument
from ssm_core.utils.ranges import (FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Range,
                                   check_ranges)

BETA = Range(0, 1, high_open=True)

@dataclass
class OptimConfig:
    """AdamW with a linear warmup followed by a cosine decay (or a constant rate)."""
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    # Applied to weight matrices only: biases, norms, embeddings and parameters flagged `_no_weight_decay`
    # (the SSM's A_log and D) are never decayed, as in mamba-ssm's training recipes.
    weight_decay: float = 0.1
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:  # torch's own messages for these come late and name no option
        check_ranges(self, lr=POSITIVE, eps=POSITIVE, weight_decay=NONNEGATIVE, warmup_steps=NONNEGATIVE_INT,
                     min_lr_ratio=FRACTION, grad_clip=NONNEGATIVE)
        if not all(BETA.contains(b) for b in self.betas):
            raise ValueError(f"OptimConfig.betas must be each {BETA}; got {self.betas}")


@dataclass
class EarlyStopConfig:
    """Stop when `metric` (a key of the evaluation metrics) has not improved for `patience` evaluations, or as
    soon as it reaches `target` (e.g. accuracy 1.0 on a synthetic task)."""
    metric: str | None = None  # None disables early stopping
    mode: Literal["min", "max"] = "min"
    patience: int = 5
    min_delta: float = 0.0
    target: float | None = None

    def __post_init__(self) -> None:
        check_ranges(self, patience=POSITIVE_INT, min_delta=NONNEGATIVE)
        if self.target is not None:
            check_ranges(self, target=Range())


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 8  # global batch per optimiser step, summed over ranks and accumulation micro-steps
    grad_accum: int = 1  # micro-steps per optimiser step
    eval_batch_size: int | None = None  # per rank; None = the per-rank micro-batch
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast applies on CUDA only; CPU always runs fp32
    eval_every: int = 0  # 0 = evaluate once at the end
    log_every: int = 10
    checkpoint_every: int = 0  # 0 = checkpoint only at the end
    keep_last: int = 3
    activation_checkpointing: bool = False
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used only when launched with torchrun and more than one rank
    num_workers: int = 0
    time_limit_min: float = 0.0  # stop cleanly (checkpoint + final model) after this many minutes; 0 = no limit
    optim: OptimConfig = field(default_factory=OptimConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)

    def __post_init__(self) -> None:
        check_ranges(self, steps=POSITIVE_INT, batch_size=POSITIVE_INT, grad_accum=POSITIVE_INT,
                     keep_last=POSITIVE_INT, log_every=POSITIVE_INT, eval_every=NONNEGATIVE_INT,
                     checkpoint_every=NONNEGATIVE_INT, num_workers=NONNEGATIVE_INT, seed=SEED,
                     time_limit_min=NONNEGATIVE)
        if self.eval_batch_size is not None:
            check_ranges(self, eval_batch_size=POSITIVE_INT)
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.batch_size ({self.batch_size}) must be divisible by grad_accum "
                             f"({self.grad_accum})")


# Settings a --resume may change: how the run is carried out, not what it is. Any other difference between the
# run's config.json and the resumed command's config (data, window, model, preset, task, optimiser, seed, batch)
# is refused by `resume_changes`. Keys are TrainConfig fields (train.<key> in a domain's config).
RESUMABLE = {
    "steps": "train on to more steps (the schedule stretches from the checkpoint on)",
    "time_limit_min": "stop after another time budget",
    "device": "move to another device",
    "parallel": "DDP or FSDP (checkpoints hold full tensors)",
    "num_workers": "data loader processes",
    "compile": "torch.compile",
    "activation_checkpointing": "recompute activations to save memory",
    "deterministic": "deterministic algorithms",
    "checkpoint_every": "checkpoint cadence",
    "keep_last": "checkpoints kept",
    "log_every": "logging cadence",
    "eval_every": "evaluation cadence",
    "eval_batch_size": "evaluation batch size",
}


class ResumeMismatchError(ValueError):
    """--resume with settings that would change what the run is (a field outside RESUMABLE differs)."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _same_value(a: Any, b: Any) -> bool:
    """Equal, or two spellings of one existing path (runs/x and /home/me/runs/x)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False
    return False


def resume_changes(stored: dict[str, Any], new: dict[str, Any], train_prefix: str = "train."
                   ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(allowed, refused): the (key, stored value, new value) of every setting that differs between a run's
    recorded config and the config it is resumed with, split by RESUMABLE. ``train_prefix`` is where the
    TrainConfig sits in both (``"train."``, or ``""`` for a bare TrainConfig)."""
    old, now = flatten(stored), flatten(new)
    allowed, refused = [], []
    for key in sorted(old.keys() | now.keys()):
        a, b = old.get(key), now.get(key)
        if _same_value(a, b):
            continue
        resumable = key.startswith(train_prefix) and key[len(train_prefix):] in RESUMABLE
        (allowed if resumable else refused).append((key, a, b))
    return allowed, refused


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in changes)


# ---------------------------------------------------------------------------------------------------------------
# dataclass <-> dict with type checking


def to_dict(config) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert `value` (from JSON, YAML or a command-line string) to `annotation`, or raise naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                pass
        raise ValueError(f"{where}: {value!r} fits none of {annotation}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {list(args)}; got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list; got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values; got {list(value)!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping of {annotation.__name__} fields; got {value!r}")
        return update(annotation(), value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false; got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and not value.strip().lstrip("-").isdigit()):
            raise ValueError(f"{where}: expected an integer; got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number; got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number; got {value!r}") from None
        if not math.isfinite(number):  # no setting of the suite means anything at NaN or infinity
            raise ValueError(f"{where}: expected a finite number; got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string; got {value!r}")
        return value
    return value


def update(config, values: dict[str, Any], where: str = "config"):
    """A copy of dataclass `config` with `values` (a possibly nested dict) applied, every value type-checked.

    Unknown keys raise ValueError naming the key and listing the valid ones.
    """
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{where}: unknown key {key!r}; valid keys are {sorted(names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = update(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(config, **changes)


def from_dict(cls, values: dict[str, Any], where: str = "config"):
    """Build dataclass `cls` from a dict (e.g. a run's config.json), defaults filling missing keys."""
    return update(cls(), values, where)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (.json) or YAML (.yaml/.yml) config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level; got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_engine_args(parser: argparse.ArgumentParser, recipe: TrainConfig | None = None,
                    recipe_name: str = "") -> argparse.ArgumentParser:
    """Add the engine flags every training command shares. ``recipe``: the command's default TrainConfig, whose
    values the help lines show as the defaults (else they say the preset's recipe sets them); ``recipe_name`` says
    whose recipe that is when another preset has its own ("the 6.1m preset's")."""
    def default(value) -> str:
        if recipe is None:
            return "(default: the preset's recipe)"
        return f"(default: {value}{', ' + recipe_name if recipe_name else ''})"

    g = parser.add_argument_group("training engine")
    g.add_argument("--config", type=Path, help="JSON or YAML file with config values (overridden by flags)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set train.optim.warmup_steps=100 (repeatable)")
    g.add_argument("--steps", type=POSITIVE_INT, help=f"optimiser steps {default(recipe and recipe.steps)}")
    g.add_argument("--batch-size", type=POSITIVE_INT,
                   help=f"global batch size per optimiser step {default(recipe and recipe.batch_size)}")
    g.add_argument("--lr", type=POSITIVE, help=f"peak learning rate {default(recipe and recipe.optim.lr)}")
    g.add_argument("--seed", type=SEED,
                   help=f"random seed (model init and data order) {default(recipe and recipe.seed)}")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms (bitwise-reproducible runs and resumes on CPU)")
    g.add_argument("--checkpoint-every", type=NONNEGATIVE_INT,
                   help="write a checkpoint every N steps (0: only at the end) "
                        f"{default(recipe and recipe.checkpoint_every)}")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint. Only these settings may differ from "
                        "the run's (--set train.KEY=VALUE; --steps, --device, --checkpoint-every): "
                        + ", ".join(RESUMABLE) + "; any other difference (data, window, model, preset, task, "
                        "optimiser, seed, batch size) is refused, naming each field")
    add_device_argument(g, help="where to train", default=None)
    return parser


def _parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    return key.strip().split("."), value.strip()


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for key in reversed(path):
        out = {key: out}
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _train_section(config) -> tuple[str, ...]:
    """The attribute path of the TrainConfig inside `config`: () for a TrainConfig itself, ("train",) usually."""
    if isinstance(config, TrainConfig):
        return ()
    for f in dataclasses.fields(config):
        if isinstance(getattr(config, f.name), TrainConfig):
            return (f.name,)
    raise TypeError(f"{type(config).__name__} has no TrainConfig field; the engine flags need one")


def resolve_config(args: argparse.Namespace, config):
    """Apply --config, --set and the named engine flags to dataclass `config` (a TrainConfig or a dataclass with
    a TrainConfig field such as `train`) and return the resolved copy."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values = load_config_file(args.config)
    for text in getattr(args, "overrides", []) or []:
        path, value = _parse_override(text)
        values = _merge(values, _nest(path, value))
    section = _train_section(config)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
             "deterministic": args.deterministic, "checkpoint_every": args.checkpoint_every, "device": args.device}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.lr is not None:
        flags["optim"] = {"lr": args.lr}
    values = _merge(values, _nest(list(section), flags) if section else flags)
    where = f"config file {args.config}" if getattr(args, "config", None) else "config"
    return update(config, values, where)


def train_config_of(config) -> TrainConfig:
    """The TrainConfig inside a resolved config (see `resolve_config`)."""
    section = _train_section(config)
    return getattr(config, section[0]) if section else config
