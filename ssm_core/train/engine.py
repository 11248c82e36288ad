"""The training engine: one loop, readable top to bottom, for every task in the suite.

A domain describes its problem as a `Task` (model, datasets, loss, optional evaluation) and calls
``train(task, config.train, run_dir, resume=...)``. The engine does the rest: seeding and determinism, DDP/FSDP
under torchrun, AdamW with decay groups, warmup + cosine schedule, gradient accumulation and clipping, bf16
autocast on GPU, evaluation every N steps, early stopping, a NaN/inf stop, atomic checkpoints with exact resume,
a progress bar, metrics (CSV + TensorBoard), plots, and the final `model.safetensors` + `model.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch.utils.data import DataLoader, Dataset

from ssm_core.utils.device import describe_device
from ssm_core.utils.progress import progress_bar

from .checkpoint import CheckpointError, checkpoint_name, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import (RESUMABLE, EarlyStopConfig, OptimConfig, ResumeMismatchError, TrainConfig, describe_changes,
                     flatten, resume_changes, to_dict)
from .data import EpochIndexed, RankShard, StepBatchSampler
from .distributed import (DistContext, barrier, broadcast_object, gather_objects, init_distributed, layer_stack,
                          reduce_means, all_reduce_sum, shutdown, wrap_model)
from .metrics import MetricsLogger, plot_metrics
from ..models.io import ModelInfo, model_class_name
from ..models.registry import registered
from ..utils.dirlock import DirectoryLock
from .run_dir import RunDir


class Task(ABC):
    """What a domain supplies to the engine.

    `loss` and `evaluate` receive batches already on the training device; `model` may be a DDP wrapper, so call
    it (`model(x)`) rather than reaching into its attributes.
    """

    unit: str = "samples"  # what `count_units` counts; shown as `<unit>/s` in the progress bar
    shuffle_train: bool = True  # False for datasets whose items are already random (generated data)
    count_metrics: tuple[str, ...] = ()  # keys of `evaluate` that count items (logged, never plotted as metrics)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model with a dataclass `config` attribute (rebuilt as `type(model)(config)` on load)."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """A map-style dataset; the engine decides the order (a function of seed and step)."""

    def valid_dataset(self) -> Dataset | None:
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """The scalar loss of one batch (a mean over its items) and extra metrics to log."""

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Metrics over this rank's share of the validation set; default: batch-size-weighted mean of `loss`."""
        totals: dict[str, float] = defaultdict(float)
        count = 0
        for batch in loader:
            n = batch_size_of(batch)
            loss, metrics = self.loss(model, batch)
            totals["loss"] += float(loss) * n
            for name, value in metrics.items():
                totals[name] += float(value) * n
            count += n
        return {name: total / max(count, 1) for name, total in totals.items()}

    def count_units(self, batch: Any) -> int:
        """How many units (see `unit`) a batch holds; default: its number of samples."""
        return batch_size_of(batch)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or gradient norm became NaN/inf."""

    def __init__(self, message: str, step: int, last_checkpoint: Path | None):
        super().__init__(message)
        self.step, self.last_checkpoint = step, last_checkpoint


@dataclass
class TrainResult:
    model: nn.Module  # the trained model (on rank 0 under FSDP a full, unsharded copy on CPU)
    step: int  # completed optimiser steps
    stopped_early: bool
    eval_metrics: dict[str, float]  # the last evaluation (empty without a validation set)


# ---------------------------------------------------------------------------------------------------------------
# helpers the loop uses


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return batch_size_of(batch[0])
    raise TypeError(f"cannot find a batch dimension in a batch of type {type(batch).__name__}")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _on_device(loader: Iterable, device: torch.device) -> Iterator:
    for batch in loader:
        yield to_device(batch, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss,
                                                   gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only: not biases and norm scales (ndim < 2), embeddings, or parameters the model
    flags with `_no_weight_decay = True` (the SSM's A_log and D)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():  # model.parameters() yields tied weights once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        skip = param.ndim < 2 or id(param) in embeddings or getattr(param, "_no_weight_decay", False)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_steps(total_steps: int, optim: OptimConfig) -> int:
    """The warm-up the schedule runs: `warmup_steps`, or a tenth of the run when that is as long as the run (a recipe's
    100 warm-up steps under --steps 30 would never reach the peak rate)."""
    return optim.warmup_steps if optim.warmup_steps < total_steps else total_steps // 10


def lr_multiplier(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Linear warmup over :func:`warmup_steps`, then cosine decay to `min_lr_ratio` (or constant)."""
    warmup = warmup_steps(total_steps, optim)
    if step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each layer's activations in the backward pass instead of storing them (long sequences).

    Uses the model's own switch where it has one (a submodule attribute `gradient_checkpointing`, as the Mamba
    backbone has), else wraps each layer of its layer stack. Returns how many switches/layers were set.
    """
    switches = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    for module in switches:
        module.gradient_checkpointing = True
    if switches:
        return len(switches)
    layers = layer_stack(model)
    for layer in layers:
        layer.forward = functools.partial(activation_checkpoint, layer.forward, use_reentrant=False)
    return len(layers)


class EarlyStopping:
    def __init__(self, config: EarlyStopConfig):
        self.config, self.best, self.bad_evals = config, None, 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Record an evaluation; True when training should stop."""
        name = self.config.metric
        if name is None:
            return False
        if name not in metrics:
            raise KeyError(f"early stopping watches metric {name!r}, but the evaluation returned {sorted(metrics)}")
        value = metrics[name]
        sign = 1.0 if self.config.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.config.min_delta:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        reached = self.config.target is not None and sign * (value - self.config.target) <= 0
        return reached or self.bad_evals >= self.config.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


log = logging.getLogger(__name__)


def _say(ctx: DistContext, message: str, level: int = logging.INFO) -> None:
    if ctx.is_main:
        log.log(level, message)


ESTIMATE_STEPS = 5  # steps timed for the estimate of the run's length
LONG_RUN_S = 3600.0  # a run estimated to last longer is announced with how to shorten it


def _warn_if_long(ctx: DistContext, cfg: TrainConfig, step: int, seconds_per_step: float) -> None:
    """A warning, early in the run, when the steps left would take more than an hour at the measured rate."""
    left = seconds_per_step * (cfg.steps - step)
    if left > LONG_RUN_S:
        _say(ctx, f"this run looks long: {cfg.steps - step:,} steps left at {seconds_per_step:.3g} s per step on "
                  f"{describe_device(ctx.device)} is about {left / 3600:.1f} h (an estimate from the last "
                  f"{ESTIMATE_STEPS} steps, evaluations not counted). --steps, a smaller --batch-size or "
                  "--set train.time_limit_min=MINUTES stops it sooner (--resume continues it)", logging.WARNING)


def _check_resumable(state: dict[str, Any], path: Path, model: nn.Module, data: dict[str, Any]) -> None:
    """Refuse a checkpoint made for another model or another data order, naming what differs."""
    if state.get("format") != 1:
        raise CheckpointError(f"checkpoint {path}: unknown format {state.get('format')!r}")
    if state["model_class"] != model_class_name(model):
        raise CheckpointError(f"checkpoint {path} holds a {state['model_class']}, but this run builds a "
                              f"{model_class_name(model)}")
    saved, now = flatten(state["model_config"]), flatten(to_dict(model.config))
    diff = {k: (saved.get(k), now.get(k)) for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)}
    if diff:
        listing = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint {path} was made for a different model config ({listing})")
    diff = {k: (state["data"].get(k), v) for k, v in data.items() if state["data"].get(k) != v}
    if diff:
        listing = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint {path}: resuming would change the data order ({listing}); "
                              "start a new run instead")


# ---------------------------------------------------------------------------------------------------------------
# the loop


def train(task: Task, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          config_record: dict[str, Any] | None = None) -> TrainResult:
    """Train `task` under `cfg`, writing the run directory `run_dir` (see run_dir.py for its layout).

    `config_record` is the full resolved config written to RUN/config.json (default: just `cfg`). The process
    (rank 0 under torchrun) holds RUN's lock throughout. Raises RunExistsError for a used `run_dir` without
    `resume` (or a file, or a folder of other files), DirectoryInUseError while another process trains in it,
    ResumeMismatchError when `resume` would change a setting outside RESUMABLE, CheckpointError for an unusable
    checkpoint, and NonFiniteLossError when the loss diverges (the last good checkpoint is kept).
    """
    ctx = init_distributed(cfg.device)
    run = RunDir(run_dir)
    config_record = config_record or {"train": to_dict(cfg)}
    try:
        with _locked(run, resume, config_record, _train_prefix(config_record, cfg), ctx):
            return _train(task, cfg, run, resume, config_record, ctx)
    finally:
        shutdown(ctx)


def _train_prefix(config_record: dict[str, Any], cfg: TrainConfig) -> str:
    """Where `cfg` sits in the recorded config: "train." for a domain's experiment, "" for a bare TrainConfig."""
    mine = to_dict(cfg)
    return next((f"{key}." for key, value in config_record.items() if value == mine), "")


@contextlib.contextmanager
def _locked(run: RunDir, resume: bool, config_record: dict[str, Any], train_prefix: str, ctx: DistContext):
    """Rank 0 checks RUN, creates it and holds its lock for the block; a refusal is raised on every rank."""
    lock = DirectoryLock(run.root)
    refusal = None
    if ctx.is_main:
        try:
            run.refuse_unusable(resume=True)  # a file or a folder of other files: refused before writing a lock
            run.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # before the used-run check, so a second process is told who is training there
            run.refuse_unusable(resume)
            previous = run.read_config() if resume else None
            refused = resume_changes(previous, config_record, train_prefix)[1] if previous is not None else []
            if refused:
                raise ResumeMismatchError(
                    f"--resume would change what the run in {run.root} is: {describe_changes(refused)}. On resume "
                    f"only these may change: {', '.join(train_prefix + k for k in RESUMABLE)}; start a new run "
                    "(another --out) for other settings")
        except (OSError, ValueError) as err:  # RunExistsError, DirectoryInUseError, ResumeMismatchError, ...
            lock.release()
            refusal = err
    refusal = broadcast_object(refusal, ctx)
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        lock.release()


@dataclass
class _Learner:
    """The model in its three roles and what updates it: built by `_build_learner`, restored by `_resume`."""
    model: nn.Module  # the plain module: parameters, state dicts, evaluation
    wrapped: nn.Module  # the DDP wrapper or the FSDP-sharded model: gradient synchronisation
    forward_model: nn.Module  # what the task's loss calls: `wrapped`, compiled under train.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    early_stopping: EarlyStopping
    autocast: Callable[[], contextlib.AbstractContextManager]  # bf16 on a GPU under train.precision=bf16


@dataclass
class _LogWindow:
    """The training metrics summed since the last log line, per rank. Checkpoints save it, so that a resumed run
    logs the same averages as an uninterrupted one."""
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # loss and gradient norm
    task_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # the task's metrics, on the device until logged
    steps: int = 0
    units: int = 0  # units trained on by all ranks (not saved: the rate is of this process's time)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed(cls, saved: list[dict[str, Any]] | None, ctx: DistContext) -> _LogWindow:
        """The window a checkpoint saved (one entry per rank), or an empty one."""
        window = cls()
        if saved is not None and len(saved) == ctx.world_size:
            mine = saved[ctx.rank]
            window.sums.update(mine["sums"])
            window.task_sums.update({k: torch.tensor(v, dtype=torch.float32, device=ctx.device)
                                     for k, v in mine["task"].items()})
            window.steps = mine["steps"]
        return window

    def add(self, loss: float, grad_norm: float, task_metrics: dict[str, torch.Tensor], units: int) -> None:
        self.sums["loss"] += loss
        self.sums["grad_norm"] += grad_norm
        for name, value in task_metrics.items():  # detached: a sum over the window must not keep each step's graph
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.task_sums[name] = self.task_sums.get(name, 0) + value
        self.steps += 1
        self.units += units

    def close(self, ctx: DistContext) -> tuple[dict[str, float], float]:
        """The means over the window (the task's metrics averaged over ranks: a collective) and its rate in units
        per second; the next window starts empty."""
        rate = self.units / (time.perf_counter() - self.started)
        for name in sorted(self.task_sums):  # same order on every rank
            self.sums[name] = float(all_reduce_sum(self.task_sums[name], ctx)) / ctx.world_size
        means = {name: total / self.steps for name, total in self.sums.items()}
        self.sums.clear()
        self.task_sums.clear()
        self.steps, self.units, self.started = 0, 0, time.perf_counter()
        return means, rate

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "task": {k: float(v) for k, v in self.task_sums.items()},
                "steps": self.steps}


@dataclass
class _LoopState:
    """Where the loop stands."""
    start_step: int  # the step this process started (or resumed) from
    step: int  # completed optimiser steps
    window: _LogWindow
    started: float = field(default_factory=time.monotonic)  # for train.time_limit_min
    first_step_done: float = 0.0  # for the run-length estimate: the first step compiles and warms caches
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    eval_step: int = -1
    stopped_early: bool = False


def _train(task: Task, cfg: TrainConfig, run: RunDir, resume: bool, config_record: dict[str, Any],
           ctx: DistContext) -> TrainResult:
    """The outline: set up and resume, then optimiser steps with their bookkeeping until the last step, an early
    stop or the time limit, then the final model."""
    if ctx.is_main:
        run.create()
    barrier(ctx)
    set_determinism(cfg.deterministic)
    learner = _build_learner(task, cfg, ctx)
    train_set = task.train_dataset()
    data_identity = {"seed": cfg.seed, "batch_size": cfg.batch_size, "dataset_len": len(train_set),
                     "shuffle": task.shuffle_train}
    start_step, saved_window = _resume(learner, run, resume, data_identity, cfg, ctx)
    if ctx.is_main:
        _record_config(run, config_record, cfg, ctx)
    train_loader = _train_loader(train_set, task.shuffle_train, cfg, start_step, ctx)
    valid_loader = _valid_loader(task.valid_dataset(), cfg, ctx)

    logger = MetricsLogger(run.metrics, run.tensorboard, start_step) if ctx.is_main else None
    progress = progress_bar(total=cfg.steps, initial=start_step, disable=not ctx.is_main, unit="step",
                            dynamic_ncols=True)
    loop = _LoopState(start_step=start_step, step=start_step, window=_LogWindow.resumed(saved_window, ctx))
    batches = iter(train_loader)
    learner.model.train()
    try:
        while loop.step < cfg.steps:
            _optimizer_step(task, learner, batches, loop, run, cfg, ctx)  # advances loop.step, fills its log window
            progress.update(1)
            _estimate_run_length(loop, cfg, ctx)
            if loop.step % cfg.log_every == 0 or loop.step == cfg.steps:
                _log_training(loop, learner, task.unit, logger, progress, ctx)
            if (cfg.eval_every and loop.step % cfg.eval_every == 0) or loop.step == cfg.steps:
                _evaluate_and_check(loop, task, learner, valid_loader, logger, ctx)
            out_of_time = _out_of_time(loop, cfg, ctx)  # a collective, so every rank stops at the same step
            if (cfg.checkpoint_every and loop.step % cfg.checkpoint_every == 0) or loop.step == cfg.steps \
                    or loop.stopped_early or out_of_time:
                _write_checkpoint(loop, learner, data_identity, run, cfg, ctx)
            if out_of_time and not loop.stopped_early:
                _stop_at_time_limit(loop, task, learner, valid_loader, logger, cfg, ctx)
                break
            if loop.stopped_early:
                _say(ctx, _early_stop_message(loop.step, learner.early_stopping, cfg.early_stop))
                break
    finally:
        progress.close()
        if logger:
            logger.close()
    return _finish(loop, task, learner, valid_loader, run, cfg, ctx)


def _build_learner(task: Task, cfg: TrainConfig, ctx: DistContext) -> _Learner:
    """The model (identical initial weights on every rank) on its device, wrapped for DDP/FSDP, its AdamW and
    warm-up + cosine schedule."""
    seed_everything(cfg.seed)
    model = task.build_model()
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise TypeError(f"{model_class_name(model)} needs a dataclass `config` attribute to be saved and resumed")
    registered(model)  # refuses, before training, a model class whose saved copy could not be loaded back
    model.to(ctx.device)
    if cfg.activation_checkpointing:
        _say(ctx, f"activation checkpointing: {enable_activation_checkpointing(model)} modules set")
    wrapped = wrap_model(model, ctx, cfg.parallel)
    forward_model = torch.compile(wrapped) if cfg.compile else wrapped
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas, eps=cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_multiplier, total_steps=cfg.steps, optim=cfg.optim))
    if warmup_steps(cfg.steps, cfg.optim) != cfg.optim.warmup_steps:
        _say(ctx, f"train.optim.warmup_steps {cfg.optim.warmup_steps} is not shorter than the run ({cfg.steps} "
                  f"steps): warming up over {warmup_steps(cfg.steps, cfg.optim)} steps (a tenth) instead",
             logging.WARNING)
    autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
                if ctx.device.type == "cuda" and cfg.precision == "bf16" else contextlib.nullcontext)
    return _Learner(model, wrapped, forward_model, optimizer, scheduler, EarlyStopping(cfg.early_stop), autocast)


def _resume(learner: _Learner, run: RunDir, resume: bool, data_identity: dict[str, Any], cfg: TrainConfig,
            ctx: DistContext) -> tuple[int, list[dict[str, Any]] | None]:
    """Restore model, optimiser, schedule, early stopping, RNG and data position from the latest checkpoint under
    `resume`; else seed this rank's randomness (dropout) afresh. Returns the step to start from and the log window
    the checkpoint saved (one per rank), if any."""
    last_checkpoint = run.latest_checkpoint() if resume else None
    if last_checkpoint is None:
        if resume:
            _say(ctx, f"--resume: no checkpoint in {run.checkpoints}; starting from step 0")
        seed_everything(cfg.seed + 1 + ctx.rank)
        return 0, None
    state = load_checkpoint(last_checkpoint)
    _check_resumable(state, last_checkpoint, learner.model, data_identity)
    from torch.distributed.checkpoint.state_dict import set_state_dict
    try:
        set_state_dict(learner.model, learner.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=_state_dict_options())
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {last_checkpoint} does not fit this model/optimiser: {err}") from None
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.early_stopping.load_state_dict(state["early_stop"])
    start_step = state["step"]
    if len(state["rng"]) == ctx.world_size:
        set_rng_state(state["rng"][ctx.rank])
    else:
        _say(ctx, f"checkpoint was written by {len(state['rng'])} processes, now {ctx.world_size}: RNG states "
                  "re-seeded (the data order is unaffected)")
        seed_everything(cfg.seed + 7919 * (start_step + 1) + ctx.rank)
    _say(ctx, f"resuming {run.root} from {last_checkpoint.name} (step {start_step})")
    return start_step, state.get("log_window")


def _record_config(run: RunDir, config_record: dict[str, Any], cfg: TrainConfig, ctx: DistContext) -> None:
    """Write RUN/config.json, first saying which settings a resume changed (only RESUMABLE ones get here: see
    `_locked`)."""
    previous = run.read_config()
    if previous is not None:
        changed = resume_changes(previous, config_record, _train_prefix(config_record, cfg))[0]
        if changed:
            _say(ctx, f"resuming with changed settings: {describe_changes(changed)}")
    run.write_config(config_record)


def _train_loader(train_set: Dataset, shuffle: bool, cfg: TrainConfig, start_step: int,
                  ctx: DistContext) -> DataLoader:
    """This rank's slice of each step's global batch, from `start_step` on; a fixed generator, so that the loader
    never touches the global RNG (which would make a resumed run diverge from an uninterrupted one)."""
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.grad_accum, ctx.rank, ctx.world_size,
                               cfg.seed, start_step, cfg.steps, shuffle=shuffle)
    return DataLoader(EpochIndexed(train_set), batch_sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(0))


def _valid_loader(valid_set: Dataset | None, cfg: TrainConfig, ctx: DistContext) -> DataLoader | None:
    """This rank's share of the validation set (equal shares under FSDP, whose evaluation is a collective)."""
    if valid_set is None:
        return None
    if len(valid_set) < ctx.world_size:
        raise ValueError(f"the validation set has {len(valid_set)} items, fewer than the {ctx.world_size} "
                         "processes sharing it")
    shard = RankShard(valid_set, ctx.rank, ctx.world_size, even=cfg.parallel == "fsdp")
    eval_batch = cfg.eval_batch_size or cfg.batch_size // (cfg.grad_accum * ctx.world_size)
    return DataLoader(shard, batch_size=eval_batch, shuffle=False, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(0))


def _optimizer_step(task: Task, learner: _Learner, batches: Iterator, loop: _LoopState, run: RunDir,
                    cfg: TrainConfig, ctx: DistContext) -> None:
    """One optimiser step = grad_accum micro-batches on every rank, refused (NonFiniteLossError) when the loss or
    the gradient norm is not finite; its metrics go into the log window."""
    step_loss = torch.zeros((), device=ctx.device)
    step_metrics: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=ctx.device))
    units = 0
    for micro in range(cfg.grad_accum):
        batch = to_device(next(batches), ctx.device)
        sync = _gradient_sync(learner.wrapped, cfg.parallel, enabled=micro == cfg.grad_accum - 1)
        with sync, learner.autocast():
            loss, metrics = task.loss(learner.forward_model, batch)
            (loss / cfg.grad_accum).backward()
        step_loss += loss.detach().float() / cfg.grad_accum
        for name, value in metrics.items():
            step_metrics[name] += torch.as_tensor(value, dtype=torch.float32).to(ctx.device) / cfg.grad_accum
        units += task.count_units(batch) * ctx.world_size
    step_loss = all_reduce_sum(step_loss, ctx).item() / ctx.world_size
    grad_norm = nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.optim.grad_clip or float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP
    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
        _stop_non_finite(step_loss, grad_norm, loop.step + 1, run, ctx)
    learner.optimizer.step()
    learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    loop.step += 1
    loop.window.add(step_loss, grad_norm, step_metrics, units)


def _stop_non_finite(step_loss: float, grad_norm: float, step: int, run: RunDir, ctx: DistContext) -> None:
    what = f"loss {step_loss}" if not math.isfinite(step_loss) else f"gradient norm {grad_norm}"
    kept = run.latest_checkpoint()
    message = (f"non-finite {what} at step {step}: training stopped before applying it. "
               + (f"The last good checkpoint is {kept} (step {int(kept.stem.split('-')[1])})."
                  if kept else "No checkpoint had been written yet."))
    _say(ctx, message)
    raise NonFiniteLossError(message, step, kept)


def _estimate_run_length(loop: _LoopState, cfg: TrainConfig, ctx: DistContext) -> None:
    """Time ESTIMATE_STEPS steps after the first (which compiles and warms caches), then warn of a long run."""
    if loop.step == loop.start_step + 1:
        loop.first_step_done = time.monotonic()
    elif loop.step == loop.start_step + 1 + ESTIMATE_STEPS:
        _warn_if_long(ctx, cfg, loop.step, (time.monotonic() - loop.first_step_done) / ESTIMATE_STEPS)


def _log_training(loop: _LoopState, learner: _Learner, unit: str, logger: MetricsLogger | None, progress,
                  ctx: DistContext) -> None:
    """The log window's means, learning rate and rate to metrics.csv/TensorBoard and the progress line."""
    means, rate = loop.window.close(ctx)
    logged = {f"train/{name}": value for name, value in means.items()}
    logged["train/lr"] = learner.scheduler.get_last_lr()[0]
    logged[f"train/{unit}_per_s"] = rate
    if logger:
        logger.log(loop.step, logged)
    progress.set_postfix(loss=f"{logged['train/loss']:.4g}", lr=f"{logged['train/lr']:.2e}",
                         **{f"{unit}/s": f"{rate:.4g}"})


def _evaluate(task: Task, learner: _Learner, valid_loader: DataLoader | None, ctx: DistContext) -> dict[str, float]:
    """The task's metrics over the whole validation set (a collective); {} without one."""
    if valid_loader is None:
        return {}
    learner.model.eval()
    with torch.no_grad(), learner.autocast():
        metrics = task.evaluate(learner.model, _on_device(valid_loader, ctx.device))
    learner.model.train()
    return reduce_means(metrics, len(valid_loader.dataset), ctx)


def _evaluate_and_check(loop: _LoopState, task: Task, learner: _Learner, valid_loader: DataLoader | None,
                        logger: MetricsLogger | None, ctx: DistContext) -> None:
    """A scheduled evaluation: logged, said, and given to early stopping."""
    loop.eval_metrics, loop.eval_step = _evaluate(task, learner, valid_loader, ctx), loop.step
    if loop.eval_metrics:
        if logger:
            logger.log(loop.step, {f"valid/{k}": v for k, v in loop.eval_metrics.items()})
        _say(ctx, f"step {loop.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in loop.eval_metrics.items()))
        loop.stopped_early = learner.early_stopping.update(loop.eval_metrics)


def _out_of_time(loop: _LoopState, cfg: TrainConfig, ctx: DistContext) -> bool:
    """Whether any rank has passed train.time_limit_min."""
    if cfg.time_limit_min <= 0:
        return False
    late = float(time.monotonic() - loop.started > 60 * cfg.time_limit_min)
    return bool(all_reduce_sum(torch.tensor(late, device=ctx.device), ctx) > 0)


def _write_checkpoint(loop: _LoopState, learner: _Learner, data_identity: dict[str, Any], run: RunDir,
                      cfg: TrainConfig, ctx: DistContext) -> Path:
    """RUN/checkpoints/step-N (atomic, rank 0), all that an exact resume needs; older ones pruned to keep_last."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(learner.model, learner.optimizer,
                                              options=_state_dict_options())  # collective
    rng = gather_objects(rng_state(), ctx)
    log_window = gather_objects(loop.window.state_dict(), ctx)
    path = run.checkpoints / checkpoint_name(loop.step)
    if ctx.is_main:
        save_checkpoint(path, {
            "format": 1, "step": loop.step, "model_class": model_class_name(learner.model),
            "model_config": to_dict(learner.model.config), "model": model_state, "optimizer": optim_state,
            "scheduler": learner.scheduler.state_dict(), "early_stop": learner.early_stopping.state_dict(),
            "rng": rng, "data": data_identity, "train_config": to_dict(cfg), "log_window": log_window})
        prune_checkpoints(run.checkpoints, cfg.keep_last)
    barrier(ctx)
    return path


def _stop_at_time_limit(loop: _LoopState, task: Task, learner: _Learner, valid_loader: DataLoader | None,
                        logger: MetricsLogger | None, cfg: TrainConfig, ctx: DistContext) -> None:
    """Say so, and evaluate the model reached unless this step already did."""
    _say(ctx, f"time limit of {cfg.time_limit_min} min reached at step {loop.step}: stopping (resume with "
              "--resume to continue)")
    if loop.eval_step != loop.step and valid_loader is not None:
        loop.eval_metrics, loop.eval_step = _evaluate(task, learner, valid_loader, ctx), loop.step
        if logger:
            logger.log(loop.step, {f"valid/{k}": v for k, v in loop.eval_metrics.items()})


def _early_stop_message(step: int, early_stopping: EarlyStopping, config: EarlyStopConfig) -> str:
    why = (f"reached the target {config.target}" if early_stopping.bad_evals < config.patience
           else f"has not improved for {config.patience} evaluations (best {early_stopping.best:.4g})")
    return f"early stop at step {step}: {config.metric} {why}"


def _finish(loop: _LoopState, task: Task, learner: _Learner, valid_loader: DataLoader | None, run: RunDir,
            cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    """The final weights on their own (RUN/model.safetensors + model.json) and the plots."""
    if loop.step == loop.start_step and loop.step > 0 and not loop.eval_metrics:
        loop.eval_metrics = _evaluate(task, learner, valid_loader, ctx)  # a finished run resumed: still report
    final_model = _full_model(task, learner.model, cfg.parallel, ctx)
    if ctx.is_main:
        from ssm_core.models.io import save_model
        save_model(final_model, run.root,
                   ModelInfo(steps=loop.step, metrics={f"valid_{k}": v for k, v in loop.eval_metrics.items()}))
        plot_metrics(run.metrics, run.plots / "metrics.png", title=run.root.name,
                     counts={f"valid/{name}" for name in task.count_metrics})
        _say(ctx, f"done: {loop.step} steps; final model in {run.root}/model.safetensors")
    barrier(ctx)
    return TrainResult(final_model, loop.step, loop.stopped_early, loop.eval_metrics)


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    # full (unsharded) tensors on CPU: checkpoints are independent of the number of processes and DDP/FSDP
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _gradient_sync(wrapped: nn.Module, parallel: str, enabled: bool):
    """Skip the gradient all-reduce on all but the last accumulation micro-step."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel) and not enabled:
        return wrapped.no_sync()
    if parallel == "fsdp" and hasattr(wrapped, "set_requires_gradient_sync"):
        wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def _full_model(task: Task, model: nn.Module, parallel: str, ctx: DistContext) -> nn.Module:
    """The trained model as a plain module; under FSDP an unsharded CPU copy built on rank 0."""
    if not (ctx.is_distributed and parallel == "fsdp"):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(model, options=_state_dict_options())  # collective
    if not ctx.is_main:
        return model
    full = task.build_model()
    full.load_state_dict(state)
    return full
