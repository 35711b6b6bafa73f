"""torchrun / DistributedDataParallel helpers, and the sampler that makes data order exact."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return Dist(rank, world, local_rank)


def all_reduce_sum(values: list[float], d: Dist, device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct seed per (run seed, epoch, sample): a sample's augmentation depends on nothing else."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2 ** 63)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (index, sample seed) keys for one epoch of one rank, from a given batch on.

    The permutation comes from (seed, epoch) alone; global batch t is the same set of samples
    whatever the number of ranks (rank r takes every world-th sample of it), and a resumed run
    starts at the batch it stopped at without loading the ones before.
    """

    def __init__(self, size: int, global_batch: int, seed: int, epoch: int, d: Dist,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        self.size, self.global_batch, self.seed, self.epoch = size, global_batch, seed, epoch
        self.d, self.start_batch, self.shuffle = d, start_batch, shuffle
        self.num_batches = size // global_batch  # drop_last: every step sees a full global batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        for t in range(self.start_batch, self.num_batches):
            batch = order[t * self.global_batch:(t + 1) * self.global_batch]
            for i in batch[self.d.rank::self.d.world]:
                yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * (self.global_batch // self.d.world)
