"""torch.distributed set-up for training loops that run unchanged in one process or under torchrun.

``torchrun`` (and most launchers) export ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup` reads them, starts the process group when there is more than one process and
none is running yet (``gloo`` on CPU, ``nccl`` when CUDA is available), and says which device
this process should use. Only rank 0 should show progress or write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    started_here: bool  #: this call started the process group (so the caller ends it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that shows progress and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an int (set by torchrun)") from None


def setup(device: Optional[torch.device] = None, backend: Optional[str] = None) -> DistInfo:
    """Join (or start) the process group torchrun describes; single process when there is none.

    ``device``: where this process computes; default ``cuda:LOCAL_RANK`` when CUDA is
    available and the run is distributed, else the CPU. ``backend``: default ``nccl`` for a
    CUDA device, ``gloo`` otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        started = False
    else:
        world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
        started = world_size > 1
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
    if device is None:
        use_cuda = torch.cuda.is_available() and world_size > 1
        device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if use_cuda else torch.device("cpu")
    device = torch.device(device)
    if started:
        if not dist.is_available():
            raise ValueError(f"WORLD_SIZE={world_size} asks for a distributed run but this torch has no torch.distributed")
        chosen = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(chosen)
    return DistInfo(rank, world_size, local_rank, device, started)


def teardown(info: DistInfo) -> None:
    """End the process group if :func:`setup` started it."""
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistInfo", "setup", "teardown"]
