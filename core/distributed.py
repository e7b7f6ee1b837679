"""Small helpers for torchrun / DistributedDataParallel; every one also works in a single process."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from core.config import ConfigError
from core.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (single process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else the CPU; or ``cpu`` / ``cuda``."""
    if preference not in ("auto", "cpu", "cuda"):
        raise UserError(f"the device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("the device is cuda but CUDA is not available here (no GPU or no CUDA build of "
                        "torch): use cpu or auto")
    if preference != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    info = env_info()
    device = pick_device(preference, info.local_rank)
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return info, device


def cleanup() -> None:
    """Leave the process group. Every rank first waits for the others (a barrier): a rank that tore
    its gloo connections down while another still used them aborted with "terminate called without
    an active exception" (seen once in CI, after a sharded evaluation). Where a rank has died,
    torchrun stops the others, so the barrier cannot hang a run."""
    if dist.is_available() and dist.is_initialized():
        if active():
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def any_flag(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop signal)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor on the tensor's device)."""
    if not active():
        return tensor
    t = tensor.detach().to(_comm_device()).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device)


def gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order, on every rank (JSON, never pickle)."""
    if not active():
        return [obj]
    dev = _comm_device()
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=dev)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: data.numel()] = data
    chunks = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(s.item())].cpu().tolist()).decode()) for c, s in zip(chunks, sizes)]


def broadcast_json(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    return gather_json(obj)[0]


class EpochBatchSampler:
    """Batches of dataset indices whose order is a pure function of (seed, epoch).

    Matches ``DistributedSampler(shuffle=True, drop_last=False)``: a permutation from
    ``torch.randperm(n, generator seeded with seed + epoch)``, padded by repetition to a multiple of
    the world size, rank ``r`` taking every ``world``-th index from ``r``; then batches of
    ``batch_size`` with the incomplete last batch dropped. ``set_epoch(epoch, start)`` skips the
    first ``start`` batches without loading them (exact resume inside an epoch).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.per_rank = math.ceil(self.num_samples / world_size)
        self.batches_per_epoch = self.per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"the training set has {num_samples} images, fewer than one batch of {batch_size} per "
                f"process x {world_size} processes: lower train.batch_size")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_indices(self.epoch)
        for b in range(self.start, self.batches_per_epoch):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices`` (every ``world_size``-th from ``rank``), for evaluation."""
    return indices[rank::world_size]
