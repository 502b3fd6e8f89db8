"""Data-parallel training under ``torchrun``: process group, device, DDP wrapping, rank-0 duties.

``torchrun --nproc-per-node N -m hardalign.cli train --config exp.yaml`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`setup_distributed` joins the process group from them (``gloo`` on CPU,
``nccl`` on CUDA) and picks this process's device (``cuda:LOCAL_RANK``). Without those variables
(or with ``WORLD_SIZE=1``) everything here is a no-op and the run is a plain single process.

Every rank computes gradients on its shard of the global batch; DistributedDataParallel
averages them, so a step equals a single-process step on the whole global batch. The
estimators' running statistics (REINFORCE's EMA baseline, NVIL's running mean and variance)
are all-reduced by the estimator modules themselves whenever a process group with more than
one rank is initialised, so every rank holds the same buffers. Only rank 0 logs, evaluates and
writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "setup_distributed", "resolve_device", "cleanup_distributed"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is present, else ``cpu``; otherwise ``torch.device(name)``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available on this machine (use device=auto or cpu)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


@dataclass
class DistributedContext:
    """Where this process stands: its rank, the number of ranks and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one rank in an initialised process group."""
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` in DistributedDataParallel when several ranks train (else return it)."""
        if not self.active:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a step may leave parts of the model without gradient (the
        # baseline network when the estimator takes no baseline, frozen stages of a Saccader)
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over ranks (in place; returned for chaining)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list when single-process)."""
        if not self.active:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.active:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group if there is one and choose this process's device.

    Args:
        device: the config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``). Under
            torchrun with ``auto`` or ``cuda``, rank r uses ``cuda:LOCAL_RANK``.

    Returns:
        a :class:`DistributedContext`; single-process when ``WORLD_SIZE`` is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        ctx = DistributedContext(rank, world_size, local_rank, resolve_device(device, local_rank), owns_group=False)
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistributedContext(device=resolve_device(device))
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        resolved = resolve_device(device, local_rank)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        ctx = DistributedContext(rank, world_size, local_rank, resolved, owns_group=True)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    return ctx


def cleanup_distributed(ctx: DistributedContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
