"""The process's place in a run: rank, world size, device, and the few collective helpers.

One :class:`Runtime` is created per process by :func:`init_runtime`. A plain
``python``/``reasonrl-train`` process is rank 0 of a world of size 1, and every
helper is then the identity; under ``torchrun`` the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) says where the process stands and a process
group is started (NCCL on GPUs, gloo on CPU). Code reads ``runtime.device``
and ``runtime.is_main`` and reduces counts with ``runtime.sum``; it never
branches on whether it runs distributed.

Collectives here move small things (counts, rewards, per-rollout records);
every rank must call them in the same order, as with any collective.

:func:`configure_threads` (run by :func:`init_runtime` and by every console
script) sizes torch's CPU thread pool to the cores this process may use
(its CPU affinity and any cgroup CPU quota), shared among the processes of
this machine under torchrun, unless ``OMP_NUM_THREADS`` says otherwise: more
threads than cores makes every CPU step several times slower.

It does not shard models (:mod:`reasonrl.sharding`) or launch processes
(torchrun does the launching).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    group: Any = None  # the process group the collectives run on (None: the default, every rank's)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, value: float) -> float:
        """``value`` summed over every rank (a float; identity in a world of one)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, group=self.group)
        return float(t.item())

    def max(self, value: float) -> float:
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return float(t.item())

    def all(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank."""
        return self.max(0.0 if flag else 1.0) == 0.0

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' equally shaped tensors concatenated along dim 0, rank-major (identity in a world of one)."""
        if not self.distributed:
            return t
        parts = [torch.empty_like(t, device=self._comm_device()) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, t.to(self._comm_device()), group=self.group)
        return torch.cat(parts).to(t.device)

    def gather(self, items: list) -> list:
        """The ranks' lists of picklable objects concatenated, rank-major, on every rank."""
        if not self.distributed:
            return list(items)
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, list(items), group=self.group)
        return [x for part in out for x in part]

    def broadcast(self, obj):
        """The main process's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def share(self, n: int, what: str = "items") -> slice:
        """This rank's contiguous share of ``n`` items, which must divide evenly among the ranks."""
        if n % self.world_size:
            raise ValueError(f"{n} {what} do not divide among {self.world_size} processes; use a multiple of {self.world_size}")
        k = n // self.world_size
        return slice(self.rank * k, (self.rank + 1) * k)

    def split(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items when they need not divide evenly (the first ranks get one more)."""
        k, extra = divmod(n, self.world_size)
        start = self.rank * k + min(self.rank, extra)
        return slice(start, start + k + (self.rank < extra))

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier(group=self.group)

    def own_group(self, timeout_s: float) -> "Runtime":
        """This runtime with its collectives on a new process group of every rank (gloo: they move small
        things), each waiting at most ``timeout_s``: another thread's collectives (an actor's) then never
        interleave with these. Every rank must call it, in the same order. A world of one returns itself."""
        if not self.distributed:
            return self
        group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        return dataclasses.replace(self, group=group)

    def print(self, *args, **kwargs) -> None:
        """``print`` on the main process only."""
        if self.is_main:
            print(*args, **{"flush": True, **kwargs})

    def close(self) -> None:
        """Leave the process group, after every rank got here (a rank tearing gloo down while its peer still
        finishes the last collective aborts the peer)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend(self.group) == "nccl" else torch.device("cpu")


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when there is one, else the CPU; or an explicit device string."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(preference)


CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" microseconds, or "max <period>"


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open(CPU_MAX).read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_threads(local_world_size: int | None = None) -> int:
    """Set torch's intra-op threads to this process's share of the usable cores (``usable_cores() //
    local_world_size``, at least 1), unless ``OMP_NUM_THREADS`` is set (then the user's, or torchrun's, count
    stands). Returns the thread count in effect."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    n = max(1, usable_cores() // max(1, local_world_size))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def init_runtime(device: str = "auto") -> Runtime:
    """The runtime of this process, from the launcher's environment (a world of one without torchrun); torch's
    CPU threads are sized to this process's share of the cores (:func:`configure_threads`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    configure_threads(local_world)
    dev = pick_device(device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=dev)
