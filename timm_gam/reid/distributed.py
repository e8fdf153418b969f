"""Multi-process training under ``torchrun``: who this process is, and the few collectives the recipe needs.

Single-process runs go through the same calls, which then do nothing, so the trainer has one code path.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ['ProcessGroup', 'init_process_group', 'all_gather_rows', 'all_gather_keeping_grad',
           'broadcast_tensor']


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self):
        if self.is_distributed:
            dist.barrier()


def init_process_group(device: torch.device) -> ProcessGroup:
    """Join the group torchrun describes in the environment (nccl on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size == 1:
        return ProcessGroup(device=device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), device)


def all_gather_rows(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Concatenate every rank's rows, rank 0 first; ranks may hold different row counts."""
    if not group.is_distributed:
        return tensor
    counts = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(group.world_size)]
    dist.all_gather(counts, torch.tensor([len(tensor)], device=tensor.device))
    counts = [int(c) for c in counts]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(group.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)])


def broadcast_tensor(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Rank 0's copy of ``tensor`` on every rank (same shape and dtype everywhere), on the tensor's device."""
    if not group.is_distributed:
        return tensor
    sent = tensor.to(group.device)  # nccl sends CUDA tensors only; cluster labels live on the CPU
    dist.broadcast(sent, src=0)
    return sent.to(tensor.device)


def all_gather_keeping_grad(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """The whole global batch on every rank, with gradients flowing into this rank's own rows.

    Ranks hold equal batch shares (the sampler drops the last incomplete batch). A loss computed on
    the result and multiplied by ``world_size`` gives, after DDP averages the gradients, exactly the
    gradient of the single-process loss over the same global batch.
    """
    if not group.is_distributed:
        return tensor
    everything = all_gather_rows(tensor.detach(), group)
    start = group.rank * len(tensor)
    return torch.cat([everything[:start], tensor, everything[start + len(tensor):]])
