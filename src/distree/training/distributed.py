"""Data-parallel training across processes with ``torch.distributed`` (DDP).

``torchrun --nproc-per-node N -m distree train ...`` starts N processes (ranks) with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; ``from_environment``
joins them into one process group (gloo on the CPU, NCCL on CUDA, one GPU per local
rank). Every rank draws the same shuffled batches and trains on its shard of each (every
``world``-th sample), and DDP averages the gradients, so that a step is the step one
process would take on the whole batch: the schedule, batch size and resume state do not
depend on the number of ranks, and a run started with N ranks continues with M. Rank 0
alone validates and writes the run directory, metrics and resume state.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distree.hardware import pick_device

#: How long a rank waits for the others at a collective: rank 0 alone validates and
#: writes, and on a CPU the teacher's outputs take many minutes to compute.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class RanksDisagreeError(ValueError):
    """The ranks of one training run were given different configurations or data."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this rank validates, logs and writes."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch of sample indices: every ``world``-th one."""
        return batch[self.rank :: self.world]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DDP (which averages gradients across ranks), or as it is alone."""
        if self.world == 1:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def sum(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value summed over the ranks."""
        if self.world == 1 or not values:
            return values
        keys = list(values)  # the same order on every rank: the same code made them
        stacked = torch.stack([values[k].float() for k in keys])
        dist.all_reduce(stacked)
        return dict(zip(keys, stacked, strict=True))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a decision every rank then takes together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            dist.barrier()

    def from_main(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (tensors included, copied to the CPU first, so that
        no rank unpickles them onto rank 0's GPU)."""
        if self.world == 1:
            return obj
        box = [_on_cpu(obj) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def load_from_main(self, module: nn.Module) -> None:
        """Give every rank rank 0's weights and buffers of ``module``."""
        if self.world > 1:
            state = self.from_main({k: v.cpu() for k, v in module.state_dict().items()})
            module.load_state_dict(state)

    def check_same(self, **described: object) -> None:
        """Raise RanksDisagreeError naming what differs between the ranks (compared by digest)."""
        if self.world == 1:
            return
        mine = {k: _digest(v) for k, v in described.items()}
        every: list[dict[str, str] | None] = [None] * self.world
        dist.all_gather_object(every, mine)
        for name in described:
            if len({d[name] for d in every if d is not None}) > 1:
                raise RanksDisagreeError(
                    f"the {self.world} training processes were given different {name}: start every rank "
                    "with the same command and the same files"
                )


SINGLE = Ranks()


def _on_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _digest(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of several (``WORLD_SIZE`` above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device_name: str | None) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (or stay alone) and pick this rank's device:
    ``device_name`` if given, else the GPU of this local rank, else the CPU."""
    if not launched_by_torchrun():
        return SINGLE, pick_device(device_name)
    device = pick_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
