"""DistributedDataParallel plumbing for ``dermfuse.training.loop``, switched on by the environment
``torchrun`` sets (``WORLD_SIZE`` > 1, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). In a single process every helper is a no-op."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["dist_info", "is_main_process", "init_distributed", "all_reduce_sum", "all_gather_objects",
           "broadcast_buffers"]


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank): from the process group when it is initialised,
    else from the environment torchrun sets, else (0, 1, 0)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local_rank


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the one process that writes files."""
    return dist_info()[0] == 0


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when ``WORLD_SIZE`` > 1 and it is not joined yet (nccl on
    CUDA, gloo on CPU); returns (rank, world_size). The group stays up for later calls."""
    rank, world, local_rank = dist_info()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world)
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (in place; ``t`` itself in a single process)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, …] on every rank ([obj] in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that all
    ranks evaluate, and end with, the same model."""
    if _active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
