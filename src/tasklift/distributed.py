"""Multi-process work with torch.distributed: shard the rows, all-reduce the statistics.

Launch any tasklift command under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU; for
several machines add `--nnodes M --node_rank R --rdzv_endpoint HOST:PORT`). Each process
handles a share of the rows; `GramStats.all_reduce` sums the statistics, so every process
solves the same maps that one process would, and rank 0 writes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # stats.py calls collective_device: no import cycle at run time
    from .stats import GramStats

__all__ = [
    "rank_world", "shard", "deal", "gathered", "all_reduce_stats", "all_reduce_tensors",
    "collective_device", "everywhere", "init_from_env", "is_main",
]  # fmt: skip

T = TypeVar("T")
R = TypeVar("R")


def rank_world(group=None) -> tuple[int, int]:
    """(rank, world size) in `group` (default: all processes); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def is_main() -> bool:
    """True on the process that should print and write files."""
    return rank_world()[0] == 0


def shard(n: int) -> slice:
    """This process's contiguous share of n rows (all of them when not distributed)."""
    rank, world = rank_world()
    return slice(n * rank // world, n * (rank + 1) // world)


def deal(items: Iterable[T]) -> Iterator[T]:
    """This process's items of a stream, dealt round-robin (all of them when not distributed):
    whole batches, so each is the batch one process would see (same padding, same numbers)."""
    rank, world = rank_world()
    return (x for i, x in enumerate(items) if i % world == rank)


def gathered(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(x) for x in items] with each item computed by one process (`deal`) and every result
    gathered back, in order, on every process."""
    rank, world = rank_world()
    mine = [fn(x) for x in deal(items)]
    if world == 1:
        return mine
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    return [parts[i % world][i // world] for i in range(len(items))]


def all_reduce_stats(stats: dict, empty: Callable[[], GramStats]) -> dict:
    """Sum a dict of statistics over every process, in place: a key some process lacks (it saw
    no batch, or no row of that signal) joins as `empty()`, so all reduce the same keys in the
    same order."""
    world = rank_world()[1]
    if world == 1:
        return stats
    keys: list = [None] * world
    dist.all_gather_object(keys, sorted(stats))
    for key in sorted(set().union(*keys)):
        stats.setdefault(key, empty()).all_reduce()
    return stats


def everywhere(flags: Sequence[bool]) -> list[bool]:
    """Which of `flags` hold on every process, so all take the same branch (e.g. a cache hit
    on one machine's disk but not another's)."""
    t = {"flags": torch.tensor([float(f) for f in flags])}
    all_reduce_tensors(t)
    return [bool(v == rank_world()[1]) for v in t["flags"]]


def all_reduce_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Sum every process's tensors of the same names, in place (a no-op when not running
    distributed)."""
    if rank_world()[1] == 1:
        return
    device = collective_device()
    for name in sorted(tensors):
        t = tensors[name].to(device)
        dist.all_reduce(t)
        tensors[name].copy_(t)


def collective_device(group=None) -> torch.device:
    """Where tensors must be for the process group's collectives: this process's GPU under
    nccl, else the CPU (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
