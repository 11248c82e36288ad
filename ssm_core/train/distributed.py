"""Single process or `torchrun --nproc_per_node=K`, with the same code: PyTorch's own DDP/FSDP, nothing home-made.

`init_distributed` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); without them it returns a
one-rank context and every collective below is a no-op. Gloo serves CPU runs, NCCL GPU runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ssm_core.utils.device import resolve_device  # noqa: F401  (re-exported: the engine's callers import it here)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool  # True when init_distributed created the group (and shutdown should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str) -> DistContext:
    """Join the torchrun process group if launched by torchrun, else describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        owns = True
    return DistContext(rank, world_size, local_rank, device, owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def layer_stack(model: nn.Module) -> list[nn.Module]:
    """The model's repeated layers: the elements of its nn.ModuleLists (e.g. a backbone's `layers`).

    These are the units of activation checkpointing and of FSDP sharding.
    """
    return [layer for module in model.modules() if isinstance(module, nn.ModuleList) for layer in module]


def wrap_model(model: nn.Module, ctx: DistContext, parallel: str) -> nn.Module:
    """DDP (or FSDP2 sharding per layer) across ranks; the model itself in a single process.

    FSDP2 shards `model` in place, so the returned module is `model`; DDP returns a wrapper whose `.module` is it.
    """
    if not ctx.is_distributed:
        return model
    if parallel == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in layer_stack(model):
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"parallel must be 'ddp' or 'fsdp'; got {parallel!r}")


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum `tensor` over ranks (a copy; the input is left unchanged)."""
    out = tensor.detach().clone()
    if ctx.is_distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def reduce_means(metrics: dict[str, float], count: int, ctx: DistContext) -> dict[str, float]:
    """Combine per-rank means over `count` items into global means (weighted by each rank's count).

    Every rank must pass the same keys in the same order.
    """
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) * count for k in keys] + [float(count)], dtype=torch.float64,
                          device=ctx.device)
    total = all_reduce_sum(values, ctx)
    n = total[-1].item()
    return {k: (total[i].item() / n if n else float("nan")) for i, k in enumerate(keys)}


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, in rank order (for per-rank RNG states in checkpoints)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
