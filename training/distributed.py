"""Multi-process data-parallel training under ``torchrun``: process group, rank and collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them (``WORLD_SIZE`` unset or 1) training runs in one process and every collective here
is a no-op, so the single-process path is exactly the one that existed before.

Every rank builds the same global batch (the batch order is seeded) and trains on its rows
``rank::world``. The loss on a rank is its summed cross-entropy divided by the *global* number of
targets, times ``world``: DistributedDataParallel averages gradients over ranks, so the averaged
gradient is the gradient of the single-process token-mean loss on the whole batch.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 validates and writes checkpoints, the artifact and the curve."""
        return self.rank == 0

    def device(self, configured: str) -> str:
        """One GPU per process: ``cuda`` becomes ``cuda:<local rank>``."""
        if self.enabled and configured == "cuda":
            return f"cuda:{self.local_rank}"
        return configured

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (every rank gets at least one, see ``weight``)."""
        mine = batch[self.rank :: self.world]
        return mine if len(mine) else batch[:1]

    def weight(self, batch: np.ndarray) -> float:
        """0 when this rank only got a stand-in row because the batch has fewer rows than ranks."""
        return 1.0 if len(batch[self.rank :: self.world]) else 0.0

    def broadcast_from_main(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (float64, so clocks keep their precision)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.collective_device)
        dist.broadcast(tensor, src=0)
        return [float(v) for v in tensor.cpu().tolist()]

    def sum(self, value: float) -> float:
        """Sum of ``value`` over ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())

    @property
    def collective_device(self) -> str:
        """NCCL moves only CUDA tensors; gloo only CPU ones."""
        return f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"


def from_environment(device: str) -> Distributed:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(rank=rank, world=world, local_rank=local_rank)


def shutdown(job: Distributed) -> None:
    """Leave the process group (a no-op in a single process)."""
    if job.enabled and dist.is_initialized():
        dist.destroy_process_group()
