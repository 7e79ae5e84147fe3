"""Multi-process training with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --nproc-per-node N -m cifarkit train --recipe ...            # one machine, N processes
    torchrun --nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
             --nproc-per-node N -m cifarkit train --recipe ...            # M machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process, unchanged. NCCL
is used on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def setup(device_preference: str) -> DistInfo:
    """Join the process group torchrun describes (once per process); a single process gets DistInfo()."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each process on a machine takes its own GPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


MIN = dist.ReduceOp.MIN


def all_reduce_(tensor: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (a stop request, a non-finite loss)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value):
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
