"""Rank logic without torchrun: W threads, each a :class:`Runtime` of rank r in a world of W.

:func:`run_ranks` runs ``fn(runtime)`` on W threads whose collectives (sum, max, all, cat, gather, broadcast,
barrier) exchange values through shared memory: the arithmetic of the real ones, in milliseconds, so a test
can pin which rank gets which share, which seed and which reduced number. The real process groups are tested
end to end in ``test_distributed.py``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from reasonrl.runtime import Runtime


class _World:
    def __init__(self, size: int):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size, timeout=60)

    def exchange(self, rank: int, value: Any) -> list:
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody writes the next round's value before everyone read this one
        return out


@dataclass(frozen=True)
class ThreadRuntime(Runtime):
    world: Any = None

    def sum(self, value: float) -> float:
        return float(sum(self.world.exchange(self.rank, float(value))))

    def max(self, value: float) -> float:
        return float(max(self.world.exchange(self.rank, float(value))))

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.world.exchange(self.rank, t.detach().clone()))

    def gather(self, items: list) -> list:
        return [x for part in self.world.exchange(self.rank, list(items)) for x in part]

    def broadcast(self, obj):
        return self.world.exchange(self.rank, obj)[0]

    def barrier(self) -> None:
        self.world.exchange(self.rank, None)

    def close(self) -> None:
        pass


def run_ranks(world_size: int, fn: Callable[[Runtime], Any]) -> list:
    """``fn(runtime)`` on every rank of a world of ``world_size``; the results by rank (an exception re-raised)."""
    world, results, errors = _World(world_size), [None] * world_size, []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadRuntime(rank=rank, world_size=world_size, local_rank=rank,
                                             local_world_size=world_size, world=world))  # fmt: skip
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller)
            errors.append(e)
            world.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
