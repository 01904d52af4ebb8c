"""Data-parallel training with PyTorch's own DistributedDataParallel.

Started by ``torchrun --nproc_per_node=N -m rnnserve_train.cli ...`` (or the
``rnnserve-train-ddp`` wrapper), every rank builds the same seeded global batch and
trains on its share of the rows: rows ``rank, rank + N, ...``. DDP averages the gradients,
and each rank scales its summed loss by ``N / (predictions in the global batch)``, so the
update equals the single-process update on the whole batch. The backend is gloo on the
CPU and NCCL on CUDA. Rank 0 alone evaluates, writes the run and exports.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import distributed


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def rows(self) -> slice:
        """This rank's rows of a global batch."""
        return slice(self.rank, None, self.world)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the ranks (``value`` itself with one rank)."""
        if self.world == 1:
            return value.detach()
        total = value.detach().clone()
        distributed.all_reduce(total)
        return total


def start(device: str) -> Ranks:
    """Join the process group torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Ranks(rank=distributed.get_rank(), world=distributed.get_world_size())


def stop(ranks: Ranks) -> None:
    """Leave the process group together: the other ranks wait at a barrier while rank 0
    evaluates and exports. A rank that tore its group down alone while rank 0 was still
    working ended in gloo's ``terminate called without an active exception`` (SIGABRT)."""
    if ranks.world > 1 and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()
