"""Multi-process fitting with torch.distributed: shard the rows, all-reduce the statistics.

Launch any tasklift command under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU; for
several machines add `--nnodes M --node_rank R --rdzv_endpoint HOST:PORT`). Each process
extracts a contiguous shard; `GramStats.all_reduce` sums the statistics, so every process
solves the same W that one process would.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["rank_world", "shard", "init_from_env", "is_main"]


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that should print and write files."""
    return rank_world()[0] == 0


def shard(n: int) -> slice:
    """This process's contiguous share of n rows (all of them when not distributed)."""
    rank, world = rank_world()
    return slice(n * rank // world, n * (rank + 1) // world)


def init_from_env() -> str | None:
    """Join the process group torchrun describes in the environment; return the device to use.

    Returns None (and does nothing) outside torchrun. On GPUs each process takes
    cuda:LOCAL_RANK and nccl; on CPU, gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"
