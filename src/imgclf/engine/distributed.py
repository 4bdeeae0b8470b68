"""Data-parallel training on PyTorch's own engine: DistributedDataParallel in processes started by
`torchrun`, NCCL between GPUs (one per local rank), gloo between CPU processes.

imgclf adds nothing of its own to the communication. What lives here is what every rank must agree
on, in one place: who it is (rank, local rank, world size, read from torchrun's environment), which
device and how many CPU threads it takes, the process group with a timeout (so that a dead or stuck
rank ends the job within bounded time instead of hanging it), and the few collectives the trainer
needs: sums of counters, a value chosen by rank 0, a barrier.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
DEFAULT_TIMEOUT_S = 300.0  # collectives that wait longer than this end the job: a lost rank is not waited on for ever


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (--max-restarts): above 0, the job resumes."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def run_id() -> str | None:
    """torchrun's id of the job, the same on every rank and across restarts of its workers."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if launched_by_torchrun() else None


@dataclass
class World:
    """This process's place among the processes of one training job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # "nccl" or "gloo" once the process group is up; None for a single process
    owned: bool = False  # the process group was started here (and is ended here), not by the caller

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, makes the run directory and writes every file."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank {self.rank} of {self.world_size}, local {self.local_rank}, {self.backend or 'single process'})"

    # -- collectives: no-ops for a single process ---------------------------------------------------
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value):
        """Rank 0's value on every rank (a run directory's name, a decision, a checkpoint)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's value, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def join(device_setting: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """The World of this process: under torchrun, the process group joined (once) with a timeout, this
    rank's GPU chosen and, on CPUs, the cores shared out between the processes of this machine; else a
    single process."""
    if not launched_by_torchrun():
        return SINGLE
    world = World(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )
    if world.world_size == 1:
        return SINGLE
    cuda = device_setting in ("auto", "cuda") and torch.cuda.is_available()
    if device_setting == "mps":
        raise ImgclfError("--device mps cannot train in several processes; use cuda or cpu under torchrun.")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ImgclfError(
                f"local rank {world.local_rank} has no GPU of its own ({torch.cuda.device_count()} on this machine); "
                "start at most one process per GPU (torchrun --nproc-per-node)."
            )
        torch.cuda.set_device(world.local_rank)
    else:
        from imgclf.data.parallel import usable_cpus

        cores = usable_cpus()
        threads = max(1, cores // world.local_world_size)
        torch.set_num_threads(threads)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": torch.device("cuda", world.local_rank)} if cuda else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's agent keeps one store (same port) across restarts of its workers: without a prefix of
        # its own, a restarted rank reads the dead attempt's addresses and gloo's connect is refused
        # (4 of 8 restarts failed so on torch 2.14; 0 of 10 with the prefix).
        store = dist.PrefixStore(f"imgclf/attempt-{restart_count()}/", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout, **kwargs)
        world.owned = True
    world.backend = backend
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """This rank's device: its own GPU under torchrun, else the device as picked."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def quiet_other_ranks(world: World) -> None:
    """Only rank 0 prints: the others keep their errors."""
    if world.distributed and not world.is_main:
        log.setLevel(logging.ERROR)


def leave(world: World) -> None:
    """End the process group this module started; one the caller started stays theirs."""
    if world.owned and dist.is_initialized():
        dist.destroy_process_group()


# What a collective raises when another rank has died (its sockets closed) or stopped answering (timeout).
LOST_CONTACT = (dist.DistError,)


def lost_contact_text(world: World, err: BaseException, run_dir) -> str:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return (
        f"rank {world.rank} of {world.world_size} lost contact with the other processes of the job ({first}); "
        f"{run_dir}/checkpoints/last.pt holds the last checkpoint, if any: run the same command again to resume it "
        "(--resume-if-exists), or let torchrun restart the workers (--max-restarts)."
    )
