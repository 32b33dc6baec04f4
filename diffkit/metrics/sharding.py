"""Sharding feature extraction across processes with ``accelerate``, features gathered.

Process r of P handles one contiguous block of global sample indices (``shard_range``);
noise, class labels and file choice are keyed to the global index, so the set of
images does not depend on P, and the gathered features come back in global index order
on every process. Launch with ``accelerate launch [--cpu] --num_processes P -m
diffkit.cli fid ...`` (or torchrun); a plain ``python`` run is one process and never
touches ``torch.distributed``. A process group created here is destroyed when the
interpreter exits (:mod:`diffkit.distributed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from diffkit.distributed import destroying_created_group_at_exit

__all__ = ["ShardInfo", "shard_info", "shard_range", "run_sharded", "reduce_sum"]


@dataclass(frozen=True)
class ShardInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    state: object = None  # accelerate PartialState when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _distributed_requested() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shard_info() -> ShardInfo:
    """This process's place; a single plain process unless launched distributed."""
    if not _distributed_requested():
        return ShardInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    from accelerate import PartialState

    # accelerate picks gloo/MULTI_CPU only when told cpu=True (Accelerator passes it from
    # ACCELERATE_USE_CPU); without it a GPU-less torchrun worker would silently run alone.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    with destroying_created_group_at_exit():  # the group accelerate creates here is torn down at exit
        state = PartialState(cpu=cpu)
    if torch.distributed.is_initialized() and state.num_processes != torch.distributed.get_world_size():
        # a PartialState inherited through fork from a single-process parent: rebuild it
        PartialState._reset_state()
        state = PartialState(cpu=cpu)
    return ShardInfo(state.process_index, state.num_processes, state.device, state)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block [lo, hi) of global indices 0..n-1 that process ``rank`` handles."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def run_sharded(n: int, compute_block: Callable[[int, int], np.ndarray], info: ShardInfo | None = None) -> np.ndarray:
    """Run ``compute_block(lo, hi) -> (hi-lo, d)`` on this process's block; gather all blocks in order."""
    info = info or shard_info()
    if info.world > n:
        raise ValueError(f"n={n} is smaller than the number of processes ({info.world})")
    lo, hi = shard_range(n, info.rank, info.world)
    local = np.asarray(compute_block(lo, hi))
    local = local.astype(np.float64 if local.dtype == np.float64 else np.float32, copy=False)
    if local.ndim != 2 or local.shape[0] != hi - lo:
        raise RuntimeError(f"a shard returned features of shape {local.shape}, expected ({hi - lo}, d)")
    if info.world == 1:
        return local
    from accelerate.utils import gather

    width = shard_range(n, 0, info.world)[1]  # block 0 is the longest
    dims = gather(torch.tensor([local.shape[1]], device=info.device)).cpu()
    if not bool((dims == dims[0]).all()):
        raise RuntimeError(f"processes produced features of different widths: {dims.tolist()}")
    pad = torch.zeros(width, local.shape[1], dtype=torch.from_numpy(local).dtype, device=info.device)
    pad[: local.shape[0]] = torch.from_numpy(local).to(info.device)
    allf = gather(pad).cpu().numpy().reshape(info.world, width, -1)
    return np.concatenate([allf[r, : shard_range(n, r, info.world)[1] - shard_range(n, r, info.world)[0]]
                           for r in range(info.world)])


def reduce_sum(t: torch.Tensor, info: ShardInfo | None = None) -> torch.Tensor:
    """Sum a tensor over processes (identity for one process)."""
    info = info or shard_info()
    if info.world == 1:
        return t
    from accelerate.utils import reduce

    return reduce(t.to(info.device), reduction="sum").cpu()
