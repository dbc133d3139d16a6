"""Distributed data parallel plumbing for runs launched by torchrun (``env://``).

``torchrun --nproc_per_node=N -m semiseg train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; with
WORLD_SIZE > 1 :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU). A plain
``semiseg train`` is a world of one and never touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process (rank 0) writes files and prints progress."""
    return get_rank() == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1; return this process's device.

    On CUDA each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A generous timeout: evaluation on rank 0 alone (e.g. writing predictions) must not kill the group.
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    return device


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a copy; the input is untouched). Non-finite values stay non-finite."""
    if not is_distributed():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def no_sync(modules: list[torch.nn.Module], skip: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for accumulation micro-steps (``skip=True``) of every DDP module."""
    with contextlib.ExitStack() as stack:
        if skip:
            for m in modules:
                if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(m.no_sync())
        yield


__all__ = [
    "is_distributed", "get_rank", "get_world_size", "is_main", "init_distributed", "destroy", "barrier",
    "all_reduce_mean", "broadcast_object", "all_gather_object", "no_sync",
]
