"""Asynchronous rollouts: an actor thread samples the next batches while the learner trains on this one.

With ``rollout.max_staleness=k > 0`` a step no longer generates its own batch.
An actor (a thread of the trainer's process, owning the generator) draws
problems, samples and scores groups exactly as a synchronous step does
(:func:`reasonrl.collect.collect_groups`), stamps each batch with the policy
version that sampled it and puts it in a bounded queue; the learner takes the
oldest batch, updates the policy and publishes its weights as the next
version. ``k = 0`` never gets here: the trainer's synchronous step runs
(identical results).

- **Staleness.** The learner at version ``V`` trains a batch of version ``v``
  with staleness ``V - v``. With ``rollout.stale=wait`` (default) the actor
  starts batch ``i`` (1-based, the ``i``-th batch it samples) only once version
  ``i - 1 - k`` is published, and then samples with the newest version: the
  bound holds by construction and nothing is dropped. With ``stale=drop`` the
  actor never waits for a version (only for room in the queue, ``k + 1``
  batches) and the learner drops batches older than ``k`` when it takes them
  (counted in ``async/dropped``).
- **Off-policy correction.** A stale row's ratio is taken against the sampler's
  logprobs (:mod:`reasonrl.objective`); the update reports its ratio
  distribution (``sampling/stale_ratio_*``).
- **Weights.** :class:`Mailbox` is a versioned publish: the learner puts the
  newest (version, tensors); the actor loads the newest before a batch (the
  generator's ``load_weights``). Only the newest is kept.
- **Deadlines.** Every wait between the two sides has one
  (``rollout.sync_timeout_s``). The learner waiting for a batch or for an
  evaluation on the actor raises :class:`SyncTimeout` past it, naming the
  actor and what it was doing; an error in the actor is raised in the learner
  at its next wait, with the actor's traceback as the cause. The actor waiting
  for a version or for room in the queue warns past it, naming the learner,
  and goes on waiting: a learner that evaluates or checkpoints for longer is
  slow, not gone, and one that is gone has taken the process with it.
- **Evaluation** runs on the actor between two batches (:meth:`AsyncRollouts.call`),
  with the weights of the version it names; the actor loses only the
  evaluation's time.
- **Resume.** :meth:`AsyncRollouts.position` is the stream position before the
  first batch the learner has not taken, and that batch's index: a checkpoint
  stores it, and a resumed run samples those batches again (with the
  checkpoint's weights), so no problem is skipped or repeated. The batches in
  flight are not stored: after a resume they are fresher than they would have
  been, which is why an async run is not claimed bit-exact across a resume.
- **Threads.** On a CPU the actor's torch ops use ``threads`` intra-op threads
  and the learner keeps the rest (torch's thread count is per thread).
  Under torchrun the actor's collectives run on their own process group
  (``Runtime.own_group``), never interleaved with the learner's.

It does not build generators or update the policy (:mod:`reasonrl.train`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from reasonrl.rollout import RolloutBatch

STALE_MODES = ("wait", "drop")
log = logging.getLogger("reasonrl.actor")


class SyncTimeout(RuntimeError):
    """One side of the actor/learner pair did not answer within its deadline."""


class ActorFailed(RuntimeError):
    """The actor raised; the learner raises this at its next wait, with the actor's error as the cause."""


@dataclass
class QueuedBatch:
    """One sampled, scored batch in the queue."""

    index: int  # 1-based: the index-th batch the actor sampled (its seed; the step it trains at without drops)
    version: int  # the policy version that sampled it
    batch: RolloutBatch
    stream_before: dict  # the problem stream's state before this batch drew its problems
    seconds: float  # wall time the actor spent on it


@dataclass
class Taken:
    """What the learner got from :meth:`AsyncRollouts.take`."""

    item: QueuedBatch
    wait_s: float  # the learner's idle time waiting for it
    dropped: int  # batches dropped as too stale before it (stale=drop)
    queued: int  # batches left in the queue after it was taken


class Mailbox:
    """The newest published weights and their version (only the newest is kept)."""

    def __init__(self, cond: threading.Condition):
        self.cond = cond
        self.version = -1
        self.tensors: dict[str, torch.Tensor] | None = None

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        with self.cond:
            if version <= self.version:
                raise ValueError(f"publishing policy version {version} after version {self.version}")
            self.version, self.tensors = version, tensors
            self.cond.notify_all()


class AsyncRollouts:
    """The actor thread and its queue, mailbox and requests (see the module docstring).

    ``collect(index, version)`` samples and scores the index-th batch with the generator's current weights
    (the actor calls it); ``load(version, tensors)`` puts published weights into the generator; ``stream``
    is the problem stream ``collect`` draws from (only the actor touches it once started)."""

    def __init__(
        self,
        collect: Callable[[int, int], RolloutBatch],
        load: Callable[[int, dict[str, torch.Tensor]], None],
        stream,
        *,
        max_staleness: int,
        stale: str = "wait",
        timeout_s: float = 1800.0,
        threads: int = 0,
        first_index: int = 1,
        loaded_version: int = 0,
        name: str = "the rollout actor",
        agree: Callable[[bool], bool] = bool,
    ):
        if max_staleness < 1:
            raise ValueError(f"max_staleness must be at least 1 for asynchronous rollouts, not {max_staleness}")
        if stale not in STALE_MODES:
            raise ValueError(f"stale must be one of {', '.join(STALE_MODES)}, not {stale!r}")
        self.collect, self.load, self.stream = collect, load, stream
        self.k, self.stale, self.timeout_s, self.threads, self.name = max_staleness, stale, timeout_s, threads, name
        self.capacity = max_staleness + 1
        self.cond = threading.Condition()
        self.mailbox = Mailbox(self.cond)
        self.queue: collections.deque[QueuedBatch] = collections.deque()
        self.next_index = first_index  # the next batch the actor samples
        self.loaded = loaded_version  # the version the generator holds
        self.current: tuple[int, dict, float] | None = None  # (index, stream_before, since) while sampling
        self.doing = "not started"
        self.requests: collections.deque[_Request] = collections.deque()
        self.error: BaseException | None = None
        self.error_text = ""
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.agree = agree  # several processes: whether a flag holds on every actor (their own process group)

    # ------------------------------------------------------------ learner side
    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="reasonrl-actor", daemon=True)
        self.thread.start()

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        """Version ``version`` of the policy (whole tensors, which the learner no longer writes to)."""
        self.mailbox.publish(version, tensors)

    def take(self, version: int, agree: Callable[[bool], bool] = bool) -> Taken:
        """The oldest queued batch the learner at ``version`` may train on (waiting for it under the deadline;
        with stale=drop, older ones are dropped on the way). ``agree(flag)``: whether the flag holds on every
        learner (several processes drop the same batches)."""
        t0, dropped = time.perf_counter(), 0
        while True:
            with self.cond:
                self._wait(lambda: bool(self.queue), f"batch {self._oldest_index()} from {self.name}", t0, learner=True)
                item = self.queue.popleft()
                left = len(self.queue)
                self.cond.notify_all()  # room in the queue
            too_old = version - item.version > self.k
            if self.stale == "drop" and not agree(not too_old):  # a collective: outside the lock
                dropped += 1
                continue
            if too_old:  # wait mode holds the bound by construction
                raise RuntimeError(f"batch {item.index} of version {item.version} is {version - item.version} "
                                   f"versions old at version {version}, beyond max_staleness={self.k}")  # fmt: skip
            return Taken(item, time.perf_counter() - t0, dropped, left)

    def call(self, fn: Callable[[], Any], version: int, what: str) -> Any:
        """``fn()`` run on the actor between two batches, with the generator holding ``version`` (published
        already); the learner waits for its result under the deadline. Before the actor starts, it runs here."""
        req = _Request(fn, version, what)
        with self.cond:
            self.requests.append(req)
            if self.thread is None:
                self._serve()
            else:
                self.cond.notify_all()
                self._wait(lambda: req.done, f"{what} (policy version {version}) from {self.name}", time.perf_counter(),
                           learner=True)  # fmt: skip
        if req.error is not None:
            raise ActorFailed(f"{self.name} failed during {what}: {req.error}") from req.error
        return req.result

    def evaluate(self, run: Callable[[], Any], version: int, what: str) -> Any:
        """An evaluation of ``version``: ``run()`` on the actor (see :meth:`call`)."""
        return self.call(run, version, what)

    def position(self) -> dict[str, Any]:
        """Where a resumed run starts sampling: the stream state before the first batch the learner has not
        taken, and that batch's index."""
        with self.cond:
            if self.queue:
                return {"index": self.queue[0].index, "stream": self.queue[0].stream_before}
            if self.current is not None:
                return {"index": self.current[0], "stream": self.current[1]}
            return {"index": self.next_index, "stream": self.stream.state_dict()}

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the actor to stop after what it is doing and wait a little for it (it is a daemon thread: a
        generation that does not return does not keep the process alive)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout_s)

    # ------------------------------------------------------------ actor side
    def _main(self) -> None:
        if self.threads > 0:
            torch.set_num_threads(self.threads)  # this thread's intra-op pool; the learner keeps its own
        try:
            while True:
                with self.cond:
                    self._serve()  # the learner's requests, between two batches
                index = self.next_index
                need = max(0, index - 1 - self.k) if self.stale == "wait" else 0
                with self.cond:
                    self.doing = f"waiting for policy version {need} to sample batch {index}"
                    self._wait(partial(self._has, need), f"policy version {need} from the learner", time.perf_counter())
                    version, tensors, stopping = self.mailbox.version, self.mailbox.tensors, self.stopping
                if not self.agree(not stopping):  # every actor samples this batch, or none does (collectives)
                    return
                self._load(version, tensors)
                with self.cond:
                    self.current = (index, self.stream.state_dict(), time.perf_counter())
                    self.doing = f"sampling batch {index} with policy version {version}"
                t = time.perf_counter()
                batch = self.collect(index, version)
                with self.cond:
                    item = QueuedBatch(index, version, batch, self.current[1], time.perf_counter() - t)
                    self.doing = f"waiting for room in the queue for batch {index}"
                    self._wait(lambda: len(self.queue) < self.capacity or self.stopping, "the learner taking a batch",
                               time.perf_counter())  # fmt: skip
                    self.queue.append(item)
                    self.current, self.next_index = None, index + 1
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the learner, which raises it
            with self.cond:
                self.error, self.error_text = e, traceback.format_exc()
                self.doing = f"stopped by an error: {type(e).__name__}: {e}"
                self.cond.notify_all()

    def _has(self, version: int) -> bool:
        return self.mailbox.version >= version

    def _load(self, version: int, tensors) -> None:
        if version != self.loaded:
            self.load(version, tensors)
            self.loaded = version

    def _serve(self) -> None:
        """Run the learner's requests (called with the lock held, between batches); the lock is released while
        one runs."""
        while self.requests:
            req = self.requests.popleft()
            self.cond.release()
            try:
                if self.mailbox.version != req.version:
                    raise RuntimeError(f"{req.what} asked for policy version {req.version}, the newest published is "
                                       f"{self.mailbox.version}")  # fmt: skip
                self._load(self.mailbox.version, self.mailbox.tensors)
                req.result = req.fn()
            except Exception as e:  # noqa: BLE001 - the learner raises it
                req.error = e
            finally:
                self.cond.acquire()
                req.done = True
                self.cond.notify_all()

    def _wait(self, ready: Callable[[], bool], what: str, t0: float, learner: bool = False) -> None:
        """Wait (lock held) until ``ready()``; the actor serves requests meanwhile and returns early when asked
        to stop; the learner raises the actor's error. Past the deadline: :class:`SyncTimeout` naming who did not
        answer."""
        while not ready():
            if learner and self.error is not None:
                raise ActorFailed(f"{self.name} stopped with an error:\n{self.error_text}") from self.error
            if not learner:
                self._serve()
                if self.stopping or ready():
                    return
            left = self.timeout_s - (time.perf_counter() - t0)
            if left <= 0 and learner:
                raise SyncTimeout(self._late(what, learner))
            if left <= 0:  # the learner is slow or gone: say so, once per deadline, and keep waiting
                log.warning(self._late(what, learner))
                t0, left = time.perf_counter(), self.timeout_s
            self.cond.wait(min(left, 1.0))

    def _late(self, what: str, learner: bool) -> str:
        if learner:
            alive = self.thread is not None and self.thread.is_alive()
            state = self.doing if alive else f"its thread is gone ({self.doing})"
            return (f"no {what} within rollout.sync_timeout_s={self.timeout_s:g} s; the actor is {state}. A slower "
                    "generator needs a longer rollout.sync_timeout_s")  # fmt: skip
        return (f"{self.name} got no {what} within rollout.sync_timeout_s={self.timeout_s:g} s (the newest published "
                f"version is {self.mailbox.version}): the learner is slow or has stopped answering; still waiting")  # fmt: skip

    def _oldest_index(self) -> int:
        return self.queue[0].index if self.queue else (self.current[0] if self.current else self.next_index)


@dataclass
class _Request:
    fn: Callable[[], Any]
    version: int
    what: str
    done: bool = False
    result: Any = None
    error: BaseException | None = None
