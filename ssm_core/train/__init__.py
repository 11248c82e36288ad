"""The suite's training engine: one loop for every task, single process or torchrun (DDP/FSDP).

A domain's training command, in full::

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    add_engine_args(parser)                      # --steps --batch-size --lr --seed --deterministic ...
    args = parser.parse_args()
    config = resolve_config(args, MyConfig())    # a dataclass with a `train: TrainConfig` field
    result = train_from_cli(MyTask(config), config, args.out, resume=args.resume)
"""
from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import (RESUMABLE, EarlyStopConfig, OptimConfig, ResumeMismatchError, TrainConfig, add_engine_args,
                     from_dict, load_config_file, resolve_config, to_dict, train_config_of, update)
from .engine import NonFiniteLossError, Task, TrainResult, train
from .run_dir import RunDir, RunExistsError, load_trained_model
from ..utils.dirlock import DirectoryInUseError

__all__ = [
    "CheckpointError", "DirectoryInUseError", "EarlyStopConfig", "NonFiniteLossError", "OptimConfig", "RESUMABLE",
    "ResumeMismatchError", "RunDir", "RunExistsError", "Task", "TrainConfig", "TrainResult", "add_engine_args",
    "from_dict", "load_checkpoint", "load_config_file", "load_trained_model", "resolve_checkpoint", "resolve_config",
    "to_dict", "train", "train_config_of", "train_from_cli", "update",
]


def train_from_cli(task: Task, config, out: str | Path, resume: bool = False) -> TrainResult:
    """`train` for command-line tools: records the whole `config` in RUN/config.json and turns the engine's
    expected refusals (used or busy RUN, a resume that would change the run, bad checkpoint, diverged loss) into a
    one-line message and exit status 1. The engine's messages go to stderr even when the command set up no logging."""
    from ssm_core.utils.cli import ensure_logging

    ensure_logging()
    try:
        return train(task, train_config_of(config), out, resume=resume, config_record=to_dict(config))
    except (RunExistsError, DirectoryInUseError, ResumeMismatchError, CheckpointError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
