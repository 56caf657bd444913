"""Lets a stage run under torchrun: this process's place in the world, its process group, the collectives used.

Reads the environment torchrun sets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE` and the
rendezvous variables); writes nothing. A plain `python train.py` is a world of one
process and needs no process group: every helper here then does the obvious thing
locally, so the stages run the same code either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0  # which GPU of its node this process uses
    size: int = 1
    local_size: int = 1  # processes on this node
    owns_group: bool = False  # whether `start` created the process group (and `stop` should end it)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes shared outputs and logs."""
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), known before any process group."""
    return int(os.environ.get("RANK", 0))


@contextlib.contextmanager
def rank0_prints():
    """Within it only rank 0's prints reach stdout, so a run reports once; errors on stderr still show."""
    with contextlib.redirect_stdout(sys.stdout if launched_rank() == 0 else io.StringIO()):
        yield


def start(backend: str) -> World:
    """This process's place in the torchrun world, joining the process group (`nccl` or `gloo`)."""
    env = {name: int(os.environ.get(name, 1)) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    world = World(launched_rank(), int(os.environ.get("LOCAL_RANK", 0)), env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"])
    if world.distributed and not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
        world = World(world.rank, world.local_rank, world.size, world.local_size, owns_group=True)
    return world


def stop(world: World) -> None:
    """End the process group, if `start` began it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device, world: World) -> torch.device:
    """On CUDA each process takes the GPU of its local rank; a CPU is shared."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather(obj, world: World) -> list:
    """`obj` from every rank, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def total(values: list[float], world: World, device: torch.device) -> list[float]:
    """The element-wise sum of `values` over all ranks."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def fingerprint(model: torch.nn.Module) -> str:
    """A SHA-256 of every parameter's bytes: equal on two ranks exactly when their weights are."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(model: torch.nn.Module, world: World, epoch: int) -> dict:
    """Every rank's weight fingerprint after `epoch`; ranks that hold different weights stop the run."""
    prints = gather(fingerprint(model), world)
    if len(set(prints)) > 1:
        raise RuntimeError(f"after epoch {epoch} the ranks hold different weights: {prints}")
    return {"epoch": epoch, "fingerprints": prints}
