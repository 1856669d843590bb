"""The rollout actor in its own process, linked to the trainer by a two-rank gloo process group.

``rollout.actor=process`` (with ``rollout.max_staleness`` > 0) starts the
actor as a child process that owns the generator: it loads its own copy of
the policy, the problem stream, the verifiers and their scoring pool, and
runs the same :class:`reasonrl.actor.AsyncRollouts` inside (sampling ahead in
a thread while its main thread answers the trainer). On a CPU it has its own
cores' worth of threads and its own interpreter (no shared GIL, and a vLLM
engine there pins its threads without touching the trainer's).

The link is a point-to-point process group on 127.0.0.1 (a ``TCPStore`` the
trainer opens on a free port, then ``ProcessGroupGloo`` of two ranks): the
trainer (rank 0) sends requests and the child answers each in turn. Weights
are published as versions: a header (version, names, shapes, dtypes) and then
one ``broadcast`` per tensor from rank 0, the collective a generator on other
devices receives NCCL weights with. Every message waits at most
``rollout.sync_timeout_s`` (the group's timeout); a child that dies or hangs
is named with its pid and exit code in :class:`reasonrl.actor.ActorFailed` or
:class:`reasonrl.actor.SyncTimeout`.

:class:`RemoteRollouts` is the trainer's side, with the interface of
``AsyncRollouts`` the trainer uses (``start``, ``publish``, ``take``,
``position``, ``evaluate``, ``close``); the child's main (the trainer's
``actor_process_main``) calls :func:`connect`, builds its sampling side and
calls :func:`serve`.

It does not run under torchrun yet (one trainer process, one actor process),
and a generator on another machine needs a reachable address instead of
127.0.0.1.
"""

from __future__ import annotations

import datetime
import os
import pickle
from typing import Any, Callable

import torch

from reasonrl.actor import ActorFailed, SyncTimeout, Taken

TRAINER, ACTOR = 0, 1


def _group(store, rank: int, timeout_s: float):
    import torch.distributed as dist

    return dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=timeout_s))


def send_obj(pg, obj: Any, dst: int) -> None:
    """A picklable object, as its length and then its bytes."""
    data = pickle.dumps(obj)
    pg.send([torch.tensor([len(data)], dtype=torch.int64)], dst, 0).wait()
    pg.send([torch.frombuffer(bytearray(data), dtype=torch.uint8)], dst, 1).wait()


def recv_obj(pg, src: int) -> Any:
    n = torch.zeros(1, dtype=torch.int64)
    pg.recv([n], src, 0).wait()
    buf = torch.empty(int(n), dtype=torch.uint8)
    pg.recv([buf], src, 1).wait()
    return pickle.loads(buf.numpy().tobytes())


def broadcast_weights(pg, tensors: dict[str, torch.Tensor] | None, header: list | None = None) -> dict[str, torch.Tensor]:
    """Rank 0 sends ``tensors`` (whole, on the CPU); the other rank receives them into buffers shaped by
    ``header`` [(name, shape, dtype)]. Returns the tensors on both sides."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = TRAINER
    if tensors is not None:
        out = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    else:
        out = {name: torch.empty(shape, dtype=getattr(torch, dtype)) for name, shape, dtype in header}
    for t in out.values():
        pg.broadcast([t], opts).wait()
    return out


class RemoteRollouts:
    """The trainer's side of an actor process (see the module docstring)."""

    def __init__(self, target: Callable, cfg: dict, start: dict[str, Any], timeout_s: float, address: str | None = None):
        """Open the link, start ``target(host, port, timeout_s)`` (the child's main: :func:`connect`, build the
        sampling side, :func:`serve`) in a child process, or with ``address`` ("host:port") wait for an actor
        started elsewhere (``reasonrl-actor --connect host:port``), then send it the config and where to start."""
        import multiprocessing as mp

        import torch.distributed as dist

        self.timeout_s, self.proc = timeout_s, None
        host, port = ("127.0.0.1", 0) if address is None else _host_port(address)
        self.store = dist.TCPStore(host, port, 2, True, timeout=datetime.timedelta(seconds=timeout_s),
                                   wait_for_workers=False)  # fmt: skip
        self.where = f"{host}:{self.store.port}"
        if address is None:
            self.proc = mp.get_context("spawn").Process(
                target=target, args=(host, self.store.port, timeout_s), name="reasonrl-actor"
            )  # not a daemon: it starts its own scoring workers; it dies with the trainer (PR_SET_PDEATHSIG)
            self.proc.start()
        else:
            print(f"[reasonrl] waiting up to {timeout_s:g} s for the actor: reasonrl-actor --connect {self.where}",
                  flush=True)  # fmt: skip
        self.thread = self.proc or self.store  # started: the trainer reads this as "the actor runs"
        self.pg = self._ask(lambda: _group(self.store, TRAINER, timeout_s), "joining the link")
        self._ask(lambda: send_obj(self.pg, (cfg, start), ACTOR), "receiving the config")

    @property
    def who(self) -> str:
        return f"the actor process (pid {self.proc.pid})" if self.proc is not None else f"the actor at {self.where}"

    def start(self) -> None:
        pass  # the process started with the object; it samples ahead from the first take

    def _ask(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` (a message exchange), with a dead or silent actor named."""
        try:
            return fn()
        except RuntimeError as e:
            said = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            closed = "closed by peer" in said
            if self.proc is not None:
                self.proc.join(10.0 if closed else 1.0)  # a peer that closed the link is exiting
                if not self.proc.is_alive():
                    raise ActorFailed(f"{self.who} is gone (exit code {self.proc.exitcode}) while {what}: {said}") from None
            elif closed:
                raise ActorFailed(f"{self.who} closed the link while {what}: {said}") from None
            raise SyncTimeout(f"{self.who} did not answer while {what} within rollout.sync_timeout_s={self.timeout_s:g} "
                              f"s: {said}") from None  # fmt: skip

    def _request(self, what: str, *msg) -> Any:
        def exchange():
            send_obj(self.pg, msg, ACTOR)
            return recv_obj(self.pg, ACTOR)

        kind, value = self._ask(exchange, what)
        if kind == "error":
            raise ActorFailed(f"{self.who} failed while {what}:\n{value}")
        return value

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        header = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()]
        self._ask(lambda: send_obj(self.pg, ("publish", version, header), ACTOR), f"publishing version {version}")
        self._ask(lambda: broadcast_weights(self.pg, tensors), f"sending the weights of version {version}")

    def take(self, version: int, agree: Callable[[bool], bool] = bool) -> Taken:
        return self._request(f"waiting for a batch at version {version}", "take", version)

    def position(self) -> dict[str, Any]:
        return self._request("asking for the stream position", "position")

    def evaluate(self, run, version: int, what: str) -> dict[str, float]:
        """The actor's own evaluation of ``version`` (``run`` is the trainer's, and not sent)."""
        return self._request(what, "evaluate", version, what)

    def close(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.is_alive():
            try:
                send_obj(self.pg, ("close",), ACTOR)
            except RuntimeError:
                pass
        if self.proc is None:
            return
        self.proc.join(timeout_s)
        if self.proc.is_alive():  # it did not stop: ours to end
            self.proc.kill()
            self.proc.join(5.0)


def connect(host: str, port: int, timeout_s: float, child: bool = True):
    """The actor's end of the link (call first, before building anything): the group, and the trainer's (config,
    start). A child of the trainer dies with it."""
    import torch.distributed as dist

    if child:
        die_with_parent()
    store = dist.TCPStore(host, port, 2, False, timeout=datetime.timedelta(seconds=timeout_s))
    pg = _group(store, ACTOR, timeout_s)
    cfg, start = recv_obj(pg, TRAINER)
    return pg, cfg, start


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"an actor address is host:port, not {address!r}")
    return host, int(port)


def serve(side, pg, start: dict[str, Any], timeout_s: float) -> None:
    """The child's loop: an actor over ``side`` (a trainer's sampling side: ``_collect``, ``generator``,
    ``stream``, ``evaluate_here``, ``close``, ``cfg``) answering the trainer until it says close."""
    import traceback

    from reasonrl.actor import AsyncRollouts

    ro = side.cfg.rollout
    side.stream.load_state_dict(start["stream"])
    rollouts = AsyncRollouts(
        side._collect,
        lambda version, tensors: side.generator.load_weights(tensors.items()),
        side.stream,
        max_staleness=ro.max_staleness,
        stale=ro.stale,
        timeout_s=timeout_s,
        first_index=start["index"],
        loaded_version=-1,  # the base weights: the first publish replaces them
        name=f"the actor process (pid {os.getpid()})",
    )
    try:
        while True:
            msg = recv_obj(pg, TRAINER)
            if msg[0] == "close":
                return
            if msg[0] == "publish":
                rollouts.publish(msg[1], broadcast_weights(pg, None, msg[2]))
                continue
            try:
                if msg[0] == "take":
                    if rollouts.thread is None:
                        rollouts.start()
                    answer = rollouts.take(msg[1])
                elif msg[0] == "position":
                    answer = rollouts.position()
                elif msg[0] == "evaluate":
                    answer = rollouts.call(side.evaluate_here, msg[1], msg[2])
                else:
                    raise ValueError(f"unknown request {msg[0]!r}")
                send_obj(pg, ("ok", answer), TRAINER)
            except Exception:  # noqa: BLE001 - the trainer raises it, with this traceback
                send_obj(pg, ("error", traceback.format_exc()), TRAINER)
    finally:
        rollouts.close()
        side.close()


def parse_connect(argv: list[str]) -> tuple[str, int, float]:
    """``reasonrl-actor --connect HOST:PORT [--timeout S]``: where the trainer waits, and the link's deadline."""
    import argparse

    ap = argparse.ArgumentParser(prog="reasonrl-actor", description="The rollout actor of a trainer started with "
                                 "rollout.actor=process rollout.actor_address=HOST:PORT: it receives the trainer's "
                                 "config and samples for it.")  # fmt: skip
    ap.add_argument("--connect", required=True, metavar="HOST:PORT", help="the address the trainer printed")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds any message may take (default 1800)")
    args = ap.parse_args(argv)
    try:
        return (*_host_port(args.connect), args.timeout)
    except ValueError as e:
        ap.error(str(e))


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the trainer that started it dies (a kill -9 included), so an
    actor never outlives its run; elsewhere a no-op."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
