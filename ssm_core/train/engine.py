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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def _train(task: Task, cfg: TrainConfig, run: RunDir, resume: bool, config_record: dict[str, Any],
           ctx: DistContext) -> TrainResult:
    if ctx.is_main:
        run.create()
    barrier(ctx)
    set_determinism(cfg.deterministic)

    # --- model (identical initial weights on every rank), optimiser, schedule
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
    early_stopping = EarlyStopping(cfg.early_stop)

    train_set = task.train_dataset()
    data_identity = {"seed": cfg.seed, "batch_size": cfg.batch_size, "dataset_len": len(train_set),
                     "shuffle": task.shuffle_train}
    full_options = _state_dict_options()

    # --- resume: model, optimiser, schedule, early stopping, RNG and data position from the latest checkpoint
    start_step = 0
    saved_window = None  # the training metrics summed since the last log line, per rank
    last_checkpoint = run.latest_checkpoint() if resume else None
    if last_checkpoint is not None:
        state = load_checkpoint(last_checkpoint)
        _check_resumable(state, last_checkpoint, model, data_identity)
        from torch.distributed.checkpoint.state_dict import set_state_dict
        try:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                           options=full_options)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint {last_checkpoint} does not fit this model/optimiser: {err}") from None
        scheduler.load_state_dict(state["scheduler"])
        early_stopping.load_state_dict(state["early_stop"])
        start_step = state["step"]
        saved_window = state.get("log_window")
        if len(state["rng"]) == ctx.world_size:
            set_rng_state(state["rng"][ctx.rank])
        else:
            _say(ctx, f"checkpoint was written by {len(state['rng'])} processes, now {ctx.world_size}: RNG states "
                      "re-seeded (the data order is unaffected)")
            seed_everything(cfg.seed + 7919 * (start_step + 1) + ctx.rank)
        _say(ctx, f"resuming {run.root} from {last_checkpoint.name} (step {start_step})")
        del state
    else:
        if resume:
            _say(ctx, f"--resume: no checkpoint in {run.checkpoints}; starting from step 0")
        seed_everything(cfg.seed + 1 + ctx.rank)  # per-rank randomness (dropout) from here on

    if ctx.is_main:
        previous = run.read_config()
        if previous is not None:  # only RESUMABLE settings can differ here (see _locked)
            changed = resume_changes(previous, config_record, _train_prefix(config_record, cfg))[0]
            if changed:
                _say(ctx, f"resuming with changed settings: {describe_changes(changed)}")
        run.write_config(config_record)

    # --- data: this rank's slice of each step's global batch; a fixed generator so loaders never touch the
    # global RNG (which would make a resumed run diverge from an uninterrupted one)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.grad_accum, ctx.rank, ctx.world_size,
                               cfg.seed, start_step, cfg.steps, shuffle=task.shuffle_train)
    train_loader = DataLoader(EpochIndexed(train_set), batch_sampler=sampler, num_workers=cfg.num_workers,
                              pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(0))
    valid_set = task.valid_dataset()
    valid_loader = None
    if valid_set is not None:
        if len(valid_set) < ctx.world_size:
            raise ValueError(f"the validation set has {len(valid_set)} items, fewer than the {ctx.world_size} "
                             "processes sharing it")
        shard = RankShard(valid_set, ctx.rank, ctx.world_size, even=cfg.parallel == "fsdp")
        eval_batch = cfg.eval_batch_size or cfg.batch_size // (cfg.grad_accum * ctx.world_size)
        valid_loader = DataLoader(shard, batch_size=eval_batch, shuffle=False, num_workers=cfg.num_workers,
                                  generator=torch.Generator().manual_seed(0))

    autocast = (functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
                if ctx.device.type == "cuda" and cfg.precision == "bf16" else contextlib.nullcontext)

    def evaluate() -> dict[str, float]:
        if valid_loader is None:
            return {}
        model.eval()
        with torch.no_grad(), autocast():
            metrics = task.evaluate(model, _on_device(valid_loader, ctx.device))
        model.train()
        return reduce_means(metrics, len(valid_loader.dataset), ctx)

    def write_checkpoint(step: int) -> Path:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model_state, optim_state = get_state_dict(model, optimizer, options=full_options)  # collective
        rng = gather_objects(rng_state(), ctx)
        # the metrics summed since the last log line, so a resumed run logs the same averages as an uninterrupted one
        log_window = gather_objects({"sums": dict(window), "task": {k: float(v) for k, v in window_metrics.items()},
                                     "steps": window_steps}, ctx)
        path = run.checkpoints / checkpoint_name(step)
        if ctx.is_main:
            save_checkpoint(path, {
                "format": 1, "step": step, "model_class": model_class_name(model),
                "model_config": to_dict(model.config), "model": model_state, "optimizer": optim_state,
                "scheduler": scheduler.state_dict(), "early_stop": early_stopping.state_dict(), "rng": rng,
                "data": data_identity, "train_config": to_dict(cfg), "log_window": log_window})
            prune_checkpoints(run.checkpoints, cfg.keep_last)
        barrier(ctx)
        return path

    logger = MetricsLogger(run.metrics, run.tensorboard, start_step) if ctx.is_main else None
    progress = progress_bar(total=cfg.steps, initial=start_step, disable=not ctx.is_main, unit="step",
                            dynamic_ncols=True)
    window: dict[str, float] = defaultdict(float)
    window_metrics: dict[str, torch.Tensor] = {}  # the task's metrics, summed on the device until logged
    window_steps, window_units, window_start = 0, 0, time.perf_counter()
    if saved_window is not None and len(saved_window) == ctx.world_size:
        mine = saved_window[ctx.rank]
        window.update(mine["sums"])
        window_metrics.update({k: torch.tensor(v, dtype=torch.float32, device=ctx.device)
                               for k, v in mine["task"].items()})
        window_steps = mine["steps"]
    eval_metrics: dict[str, float] = {}
    eval_step = -1
    stopped_early = False
    step = start_step
    started = time.monotonic()
    batches = iter(train_loader)
    model.train()

    try:
        while step < cfg.steps:
            # one optimiser step = grad_accum micro-batches on every rank
            step_loss = torch.zeros((), device=ctx.device)
            step_metrics: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=ctx.device))
            for micro in range(cfg.grad_accum):
                batch = to_device(next(batches), ctx.device)
                last_micro = micro == cfg.grad_accum - 1
                sync = _gradient_sync(wrapped, cfg.parallel, enabled=last_micro)
                with sync, autocast():
                    loss, metrics = task.loss(forward_model, batch)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.detach().float() / cfg.grad_accum
                for name, value in metrics.items():
                    step_metrics[name] += torch.as_tensor(value, dtype=torch.float32).to(ctx.device) / cfg.grad_accum
                window_units += task.count_units(batch) * ctx.world_size
            step_loss = all_reduce_sum(step_loss, ctx).item() / ctx.world_size
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                what = f"loss {step_loss}" if not math.isfinite(step_loss) else f"gradient norm {grad_norm}"
                kept = run.latest_checkpoint()
                message = (f"non-finite {what} at step {step + 1}: training stopped before applying it. "
                           + (f"The last good checkpoint is {kept} (step {int(kept.stem.split('-')[1])})."
                              if kept else "No checkpoint had been written yet."))
                _say(ctx, message)
                raise NonFiniteLossError(message, step + 1, kept)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # bookkeeping: progress, metrics, evaluation, early stopping, checkpoints
            window["loss"] += step_loss
            window["grad_norm"] += grad_norm
            for name, value in step_metrics.items():
                window_metrics[name] = window_metrics.get(name, 0) + value
            window_steps += 1
            progress.update(1)
            if step == start_step + 1:  # timed from the end of the first step: it compiles and warms caches
                first_step_done = time.monotonic()
            elif step == start_step + 1 + ESTIMATE_STEPS:
                _warn_if_long(ctx, cfg, step, (time.monotonic() - first_step_done) / ESTIMATE_STEPS)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = window_units / (time.perf_counter() - window_start)
                for name in sorted(window_metrics):  # same order on every rank
                    window[name] = float(all_reduce_sum(window_metrics[name], ctx)) / ctx.world_size
                logged = {f"train/{k}": v / window_steps for k, v in window.items()}
                logged["train/lr"] = scheduler.get_last_lr()[0]
                logged[f"train/{task.unit}_per_s"] = rate
                if logger:
                    logger.log(step, logged)
                progress.set_postfix(loss=f"{logged['train/loss']:.4g}", lr=f"{logged['train/lr']:.2e}",
                                     **{f"{task.unit}/s": f"{rate:.4g}"})
                window.clear()
                window_metrics.clear()
                window_steps, window_units, window_start = 0, 0, time.perf_counter()
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                eval_metrics, eval_step = evaluate(), step
                if eval_metrics:
                    if logger:
                        logger.log(step, {f"valid/{k}": v for k, v in eval_metrics.items()})
                    _say(ctx, f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
                    stopped_early = early_stopping.update(eval_metrics)
            out_of_time = cfg.time_limit_min > 0 and bool(all_reduce_sum(torch.tensor(
                float(time.monotonic() - started > 60 * cfg.time_limit_min), device=ctx.device), ctx) > 0)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps or stopped_early \
                    or out_of_time:
                write_checkpoint(step)
            if out_of_time and not stopped_early:
                _say(ctx, f"time limit of {cfg.time_limit_min} min reached at step {step}: stopping (resume with "
                          "--resume to continue)")
                if eval_step != step and valid_loader is not None:
                    eval_metrics, eval_step = evaluate(), step
                    if logger:
                        logger.log(step, {f"valid/{k}": v for k, v in eval_metrics.items()})
                break
            if stopped_early:
                _say(ctx, f"early stop at step {step}: {cfg.early_stop.metric} "
                          + (f"reached the target {cfg.early_stop.target}" if early_stopping.bad_evals <
                             cfg.early_stop.patience else f"has not improved for {cfg.early_stop.patience} "
                             f"evaluations (best {early_stopping.best:.4g})"))
                break
    finally:
        progress.close()
        if logger:
            logger.close()

    # --- final weights on their own (model.safetensors + model.json) and the plots
    if start_step == step and step > 0 and not eval_metrics:
        eval_metrics = evaluate()  # resumed a finished run: nothing trained, still report its metrics
    final_model = _full_model(task, model, cfg.parallel, full_options, ctx)
    if ctx.is_main:
        from ssm_core.models.io import save_model
        save_model(final_model, run.root,
                   ModelInfo(steps=step, metrics={f"valid_{k}": v for k, v in eval_metrics.items()}))
        plot_metrics(run.metrics, run.plots / "metrics.png", title=run.root.name,
                     counts={f"valid/{name}" for name in task.count_metrics})
        _say(ctx, f"done: {step} steps; final model in {run.root}/model.safetensors")
    barrier(ctx)
    return TrainResult(final_model, step, stopped_early, eval_metrics)


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


def _full_model(task: Task, model: nn.Module, parallel: str, options, ctx: DistContext) -> nn.Module:
    """The trained model as a plain module; under FSDP an unsharded CPU copy built on rank 0."""
    if not (ctx.is_distributed and parallel == "fsdp"):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(model, options=options)  # collective
    if not ctx.is_main:
        return model
    full = task.build_model()
    full.load_state_dict(state)
    return full
