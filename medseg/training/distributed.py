"""DDP helpers: set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), rank-0 gating.

``torchrun --nproc_per_node N -m medseg train --config CFG`` runs the trainer in N processes;
gloo is used on CPU, NCCL on CUDA. Without those variables everything runs in one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("medseg.training")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes; a no-op (world size 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        started = True
        log.info("DDP: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local, started)


def all_reduce_sum(values, info: DistInfo, device: torch.device):
    """Sum a float64 numpy-like vector over ranks (returned as numpy)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if not info.enabled:
        return arr
    t = torch.as_tensor(arr, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()
