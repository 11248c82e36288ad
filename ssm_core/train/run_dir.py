"""The run directory every training command writes, and loading a trained model back from it.

    RUN/config.json          the full resolved config
    RUN/checkpoints/         step-XXXXXXXX.ckpt, the last K
    RUN/model.safetensors    final weights          } a model directory, loadable on its own (copied anywhere)
    RUN/model.json           class, config, labels  } with ssm_core.from_pretrained(RUN)
    RUN/README.md            its model card         }
    RUN/metrics.csv          step,metric,value,time_s (one row per metric)
    RUN/tensorboard/         the same metrics for TensorBoard
    RUN/plots/               PNG plots written at the end
    RUN/.lock                the lock the training process holds (ssm_core/utils/dirlock.py)

A directory is recognised as a run by its config.json (a JSON object) beside checkpoints/. A new run needs an
absent or empty directory; `--resume` needs a run (or an absent or empty directory, where it starts afresh).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.dirlock import LOCK_NAME
from .checkpoint import atomic_write_bytes, list_checkpoints, load_checkpoint, resolve_checkpoint


class RunExistsError(FileExistsError):
    """A training command pointed at a used run directory without --resume, or at a file or a folder of other
    files."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.csv"
        self.tensorboard = self.root / "tensorboard"
        self.plots = self.root / "plots"

    def is_run(self) -> bool:
        """True when RUN holds a run: its config.json (a JSON object) and checkpoints/."""
        if not (self.config.is_file() and self.checkpoints.is_dir()):
            return False
        try:
            return isinstance(json.loads(self.config.read_bytes()), dict)
        except ValueError:
            return False

    def refuse_unusable(self, resume: bool) -> None:
        """Refuse to train into RUN when that would write over what is there: a file; a folder of other files; a
        run, unless resuming it (the lock file a finished or killed run leaves does not count)."""
        if self.root.exists() and not self.root.is_dir():
            raise RunExistsError(f"--out {self.root} is a file, not a run directory; choose another --out")
        if not self.root.exists() or not any(p.name != LOCK_NAME for p in self.root.iterdir()):
            return
        if not self.is_run():
            raise RunExistsError(f"--out {self.root} holds files but no run (no config.json with checkpoints/); "
                                 "training would write over them: choose another --out")
        if not resume:
            raise RunExistsError(f"run directory {self.root} already holds a run; pass --resume to continue it, "
                                 "or choose another --out")

    def create(self) -> None:
        for d in (self.root, self.checkpoints, self.plots):
            d.mkdir(parents=True, exist_ok=True)

    def latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoints)
        return found[-1][1] if found else None

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def read_config(self) -> dict[str, Any] | None:
        if not self.config.is_file():
            return None
        try:
            return json.loads(self.config.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.config} is not valid JSON: {err}") from None


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model a `--checkpoint` argument points at (see `resolve_checkpoint`), in eval mode on `device`.

    A model directory (a finished run) loads its `model.safetensors`; an unfinished run the model in its latest
    checkpoint, with a notice on stderr naming it. Only the suite's registered model classes are built.
    """
    from ssm_core.models.io import build_model, load_model

    target = resolve_checkpoint(path)
    if target.is_dir():
        return load_model(target).to(device).eval()
    if Path(path).is_dir():
        print(f"notice: --checkpoint {path} holds no final model (model.safetensors + model.json; the run has not "
              f"finished): loading its latest checkpoint {target}", file=sys.stderr)
    state = load_checkpoint(target)
    model = build_model(state["model_class"], state["model_config"], f"checkpoint {target}")
    model.load_state_dict(state["model"])
    return model.to(device).eval()
