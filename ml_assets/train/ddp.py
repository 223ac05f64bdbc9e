"""DDP primitives every training loop uses: this process's rank, a barrier, sums over the ranks.

Outside ``torch.distributed`` (one process) each is the identity: rank 0 of 1, nothing to wait
for, the values themselves. ``ml_assets.train.distributed`` is the torchrun entry point that
starts the ranks.
"""

from __future__ import annotations


def world() -> tuple[int, int]:
    """(rank, number of ranks) of this process: (0, 1) outside ``torch.distributed``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def sum_over_ranks(*values: float, device) -> tuple[float, ...]:
    """Each value summed over the ranks (the values themselves in a single process)."""
    import torch
    import torch.distributed as dist

    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tuple(tensor.tolist())


def processes(config) -> int:
    """How many training processes a kind's config asks for."""
    return config.nproc_per_node * config.nnodes
