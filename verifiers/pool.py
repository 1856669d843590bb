"""The scoring pool: verifiers in killable worker processes with a per-call timeout.

Each job is one (completion, verifier) pair. Jobs go to the least-loaded
worker first (ties: a started one, then one that already holds the job's
problem), each worker holding at most its fair share of what is pending (up to
``CHUNK``) and no more than about ``QUEUE_S`` of work by the pool's running
estimate of a check's time (``UNTIMED_DEPTH`` jobs until it has one): slow
checks (sandboxed code) go one at a time to whichever worker is free, so a few
half-second checks run side by side on every worker, while fast ones (math)
still travel in chunks. A problem crosses
to a worker once per run, however many of its group's checks that worker
gets. A streamed run (``stream``) looks for newly added checks every
``ScoringRun.POLL_S`` while workers are busy, not only when one finishes.

Every result comes back on its own, so each job has its own deadline:
``timeout_s``, or longer where the verifier declares the problem's check needs
it (its ``deadline_s(problem)`` hook, see :class:`reasonrl.verifiers.base.Verifier`:
the code verifier counts cases x its per-run limit), so a check is never
killed while the program is within its own limits. The deadline counts from
when its worker could start the job (a replacement worker's start-up is not
charged to the job it inherits). A worker that passes the deadline is killed
and replaced: its current job costs one ``timeout`` verdict and its queued
jobs go back to be handed out again. A worker that dies (segfault, ``os._exit``, out of memory) costs one ``error``
verdict for its current job and is replaced the same way; one that died while
idle (killed from outside between steps) is found dead before any work is
sent to it and replaced at no cost. A check that raises inside a worker is an
``error`` verdict. The step always gets one verdict per job and goes on.

Verifiers are pickled into the workers once, at start (a verifier that cannot
be pickled stops the start, named); their caches (parsed gold answers) then
live in the workers. Workers are started with ``spawn``, so they share nothing
with the trainer's threads or engines.

It does not bound the workers' memory or CPU (the sandbox does that for code).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Mapping, Sequence

from reasonrl.verifiers.base import (
    GoldAnswerError,
    Verdict,
    Verifier,
    check_picklable,
    deadline_s,
    declares_deadlines,
    own_timeout_s,
)

log = logging.getLogger(__name__)
CHUNK = 64  # the most jobs one worker holds (running + queued)
QUEUE_S = 0.05  # by the pool's running estimate of a check's time, the work one worker holds at most
UNTIMED_DEPTH = 2  # the most jobs one worker holds before the pool has timed any check
_READY = ("ready", None, 0.0)
STARTUP_TIMEOUT_S = 120.0  # a worker that has not started by then is replaced (and its first job is an error)


def _worker_main(conn: Connection, verifiers: dict[str, Verifier]) -> None:
    from reasonrl.verifiers.base import safe_call

    try:
        conn.send(_READY)  # start-up (a fresh interpreter, imports) does not count against any check's deadline
    except (BrokenPipeError, OSError):  # the pool was closed while this worker started
        return
    known: dict[int, Any] = {}  # this run's problems, each sent once (a group's G completions share one)
    run = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        run_id, new_problems, jobs = msg
        if run_id != run:
            known, run = {}, run_id
        known.update(new_problems)
        for job_id, name, key, completion in jobs:
            problem = known[key]
            t = time.perf_counter()
            try:
                v = safe_call(verifiers[name], problem, completion)
            except GoldAnswerError as e:
                v = Verdict(0.0, "error", {"gold_error": str(e)[:200]})
            conn.send((job_id, v, time.perf_counter() - t))


def resolve_workers(workers: int, reserve: int = 2, local_ranks: int = 1) -> int:
    """``verify.workers``: -1 = auto, this process's part of the machine's cores (shared by ``local_ranks``
    training processes) minus ``reserve`` (generation and the trainer), at least 2 (1 when the machine is
    shared); 0 = no pool; else the number given (per process)."""
    if workers == -1:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 2
        return max(2 if local_ranks == 1 else 1, cores // max(1, local_ranks) - reserve)
    if workers < 0:
        raise ValueError(f"verify.workers={workers}: use -1 (auto), 0 (score in-process) or a number of processes")
    return workers


class _Worker:
    def __init__(self, ctx, verifiers):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, verifiers), daemon=True)
        self.proc.start()
        child.close()
        self.queue: deque[int] = deque()  # job ids sent, in order; the head is running
        self.has: set[int] = set()  # keys of this run's problems it holds
        self.ready = False
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S  # until it says it is ready

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class ScoringPool:
    """Run ``{name: verifier}`` over (problem, completion) pairs in worker processes."""

    def __init__(self, verifiers: Mapping[str, Verifier], workers: int = 2, timeout_s: float = 10.0):
        if workers < 1:
            raise ValueError("ScoringPool needs at least one worker (use in-process scoring for workers=0)")
        self.verifiers = dict(verifiers)
        self.timeout_s = float(timeout_s)
        for name, v in self.verifiers.items():  # a check that may legitimately run longer would be killed every time
            own = own_timeout_s(v)
            if declares_deadlines(v):
                continue  # it declares each problem's deadline (deadline_s), which the pool honours
            if own is not None and own >= self.timeout_s:
                raise ValueError(
                    f"verifier {name!r} lets a program run for {own:g} s (its timeout_s), but the scoring pool "
                    f"kills a check after {self.timeout_s:g} s (verify.timeout_s): raise verify.timeout_s above it"
                )
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_Worker(self._ctx, self.verifiers))
        except Exception:  # spawn pickles the verifiers as a worker starts: say which one cannot be
            for w in self._workers:
                w.kill()
            for name, v in self.verifiers.items():
                check_picklable(name, v)
            raise
        self.replaced = 0  # workers killed or found dead and replaced, over the pool's life
        self._problems: dict[int, Any] = {}
        self.problems_sent = 0  # problems pickled to workers, over the pool's life (once per group and worker)
        self._run_id = 0
        self._deadlines: dict[int, float] = {}
        self._check_s: float | None = None  # running mean of a check's time in a worker (None: none timed yet)

    def run(
        self, problems: Sequence[Mapping[str, Any]], completions: Sequence[str], only: Sequence[str] | None = None
    ) -> list[dict[str, Verdict | None]]:
        """One dict of verdicts per completion (None where a verifier does not apply), from every verifier
        of the pool or the ``only`` ones named."""
        checks = ScoringRun(self, only)
        checks.add(problems, completions)
        return checks.results()

    def stream(self, only: Sequence[str] | None = None) -> "ScoringRun":
        """A run whose checks are added while it goes (``add`` as each group is generated) and scored in the
        background meanwhile; ``results()`` waits for the rest. One run at a time per pool."""
        return ScoringRun(self, only, background=True)

    def _job_deadline(self, name: str, problem: Mapping[str, Any]) -> float:
        """verify.timeout_s, or longer where the verifier declares that this problem's check needs it."""
        own = deadline_s(self.verifiers[name], problem)
        if own is None:
            return self.timeout_s
        return max(self.timeout_s, own + 1.0)  # + the worker's own overhead around the check

    def _depth(self, pending: int) -> int:
        """How many jobs one worker may hold (running + queued) while ``pending`` are sent or waiting: its fair
        share, at most ``CHUNK``, and no more than ``QUEUE_S`` of work by the running estimate (at least 1;
        ``UNTIMED_DEPTH`` until a check has been timed: a first batch of slow checks is not committed to
        workers in chunks before the pool knows they are slow)."""
        depth = min(CHUNK, -(-pending // len(self._workers)))
        if self._check_s is None:
            return max(1, min(depth, UNTIMED_DEPTH))
        return max(1, min(depth, int(QUEUE_S / max(self._check_s, 1e-6))))

    def _timed(self, seconds: float) -> None:
        """Fold one check's time into the running estimate."""
        self._check_s = seconds if self._check_s is None else self._check_s + 0.1 * (seconds - self._check_s)

    def _head_deadline(self, w: _Worker) -> float:
        return self._deadlines.get(w.queue[0], self.timeout_s) if w.queue else self.timeout_s

    def _send(self, w: _Worker, batch, now: float) -> bool:
        """Hand ``batch`` to ``w``; False (and nothing recorded as sent) when its pipe is broken."""
        new = {key: self._problems[key] for _, _, key, _ in batch if key not in w.has}
        try:
            w.conn.send((self._run_id, new, batch))
        except OSError:  # BrokenPipeError, ConnectionResetError: it died since it was last seen alive
            return False
        if not w.queue and w.ready:
            w.deadline = now + self._deadlines.get(batch[0][0], self.timeout_s)
        w.queue.extend(j for j, *_ in batch)
        w.has.update(new)
        self.problems_sent += len(new)
        return True

    def _worker_for(self, i: int, results: dict, todo: deque) -> _Worker | None:
        """Worker ``i``, replaced first if it has died (an OOM kill while idle, say), so that work is never sent
        to a dead worker: one that died running a job costs that job an ``error`` verdict, an idle one nothing.
        None while a dead worker still has verdicts to be read (the caller's loop reads them, then replaces it)."""
        w = self._workers[i]
        if not w.proc.is_alive():
            if w.queue and w.conn.poll():
                return None
            self._lost(w, results, todo)
        return self._workers[i]

    def _lost(self, w: _Worker, results: dict, todo: deque) -> None:
        """``w`` is dead (or its pipe broke) with nothing left to read from it: replace it."""
        if w.queue:
            self._replace(w, results, todo, Verdict(0.0, "error", {"worker_died": 1}))
        else:
            log.warning("scoring worker pid %s died while idle (exit code %s); replaced", w.proc.pid, w.proc.exitcode)
            self._replace(w, results, todo, None)

    def _replace(self, w: _Worker, results: dict, todo: deque, verdict: Verdict | None) -> None:
        """Kill ``w``; its running job gets ``verdict`` (None: it was running none); its queued jobs go back to
        the front of ``todo``."""
        if w.queue and verdict is not None:
            head = w.queue.popleft()
            results[head] = verdict
            log.warning("verifier job %d: %s (worker pid %s replaced)", head, verdict.status, w.proc.pid)
        todo.extendleft(reversed(w.queue))
        w.kill()
        self._workers[self._workers.index(w)] = _Worker(self._ctx, self.verifiers)
        self.replaced += 1

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            w.proc.join(timeout=2)
            w.kill()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ScoringRun:
    """One batch of checks on a pool, which may grow while it runs.

    ``add(problems, completions)`` queues checks (every named verifier on each completion); ``results()``
    returns one verdict dict per completion, in the order added. With ``background`` the pool's loop (top up
    the workers, collect verdicts, enforce deadlines, replace workers) runs in a thread from the start, so
    checks proceed while the caller generates; otherwise it runs inside ``results()``. All pool state is
    touched by that one loop only; ``add`` hands its checks over through a queue.
    """

    POLL_S = 0.05  # how soon a background loop notices newly added checks

    def __init__(self, pool: ScoringPool, only: Sequence[str] | None = None, background: bool = False):
        self.pool = pool
        self.names = list(pool.verifiers) if only is None else list(only)
        unknown = [n for n in self.names if n not in pool.verifiers]
        if unknown:
            raise KeyError(f"verifiers {unknown} are not in this scoring pool ({sorted(pool.verifiers)})")
        pool._run_id += 1
        for w in pool._workers:
            w.has = set()
        pool._problems, pool._deadlines = {}, {}
        self.keys: dict[int, int] = {}  # id(problem) -> key: completions of one group share their problem object
        self.held: list[Any] = []  # the problems themselves, so their ids stay theirs while the run lives
        self.jobs: dict[int, tuple[int, str, int, str]] = {}  # job id -> (completion index, verifier, key, text)
        self.results_: dict[int, Verdict | None] = {}
        self.todo: deque = deque()
        self.n = 0  # completions added so far
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = None
        if background:
            self.thread = threading.Thread(target=self._drive_safely, name="scoring-pool", daemon=True)
            self.thread.start()

    def add(self, problems: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> None:
        if len(problems) != len(completions):
            raise ValueError(f"{len(problems)} problems for {len(completions)} completions")
        self.incoming.put((list(problems), list(completions)))

    def results(self) -> list[dict[str, Verdict | None]]:
        self.incoming.put(None)  # nothing more will be added
        if self.thread is None:
            self._drive()
        else:
            self.thread.join()
            if self.error is not None:
                raise self.error
        out: list[dict[str, Verdict | None]] = [{} for _ in range(self.n)]
        for j, (i, name, _, _) in self.jobs.items():
            out[i][name] = self.results_[j]
        return out

    def _drive_safely(self) -> None:
        try:
            self._drive()
        except BaseException as e:  # re-raised in the caller's thread by results()
            self.error = e

    def _take(self, block: bool) -> bool:
        """Move added checks into the job list; False once the caller said nothing more will come."""
        pool, more = self.pool, True
        while True:
            try:
                item = self.incoming.get(block=block, timeout=self.POLL_S if block else None)
            except queue.Empty:
                return more
            block = False
            if item is None:
                more = False
                continue
            for p, c in zip(*item):
                key = self.keys.setdefault(id(p), len(self.keys))
                if key == len(self.held):
                    self.held.append(p)
                    pool._problems[key] = p
                for name in self.names:
                    pool._deadlines[len(self.jobs)] = pool._job_deadline(name, p)
                    self.todo.append(len(self.jobs))
                    self.jobs[len(self.jobs)] = (self.n, name, key, c)
                self.n += 1

    def _top_up(self) -> None:
        """Hand waiting checks out, in the order added: each time to the least-loaded worker (ties: a started
        one, then one that already holds the next check's problem) while it holds at most half the pool's
        depth, up to that depth. A dead worker is replaced first; one that died with verdicts still to read is
        skipped (the caller's loop reads them, then replaces it)."""
        pool, jobs, results, todo = self.pool, self.jobs, self.results_, self.todo
        skip: set[int] = set()
        while todo:
            workers = pool._workers
            depth = pool._depth(len(todo) + sum(len(w.queue) for w in workers))
            key = jobs[todo[0]][2]
            free = [i for i, w in enumerate(workers) if i not in skip and len(w.queue) <= depth // 2]
            if not free:
                return
            i = min(free, key=lambda i: (len(workers[i].queue), not workers[i].ready, key not in workers[i].has))
            w = pool._worker_for(i, results, todo)
            if w is None:
                skip.add(i)
                continue
            batch = [todo.popleft() for _ in range(min(depth - len(w.queue), len(todo)))]
            if not pool._send(w, [(j, *jobs[j][1:]) for j in batch], time.monotonic()):
                todo.extendleft(reversed(batch))  # never sent: back to the front, for another worker
                skip.add(i)
                if not (w.queue and w.conn.poll()):  # else it died with verdicts to read: read first
                    pool._lost(w, results, todo)

    def _drive(self) -> None:
        pool, jobs, results, todo = self.pool, self.jobs, self.results_, self.todo
        open_ = True
        while open_ or len(results) < len(jobs):
            idle = len(results) == len(jobs)
            if open_:
                open_ = self._take(block=idle)  # nothing to watch: wait for checks (or the end)
                if len(results) == len(jobs):
                    continue
            self._top_up()
            now = time.monotonic()
            live = [w.conn for w in pool._workers if w.queue or not w.ready]
            nearest = min((w.deadline for w in pool._workers if w.queue or not w.ready), default=now + pool.timeout_s)
            wait_s = max(0.0, nearest - time.monotonic())
            if open_:
                wait_s = min(wait_s, self.POLL_S)  # new checks may arrive meanwhile
            for conn in wait(live, timeout=wait_s):
                w = next(x for x in pool._workers if x.conn is conn)
                try:
                    while conn.poll():
                        job_id, verdict, seconds = conn.recv()
                        if (job_id, verdict, seconds) == _READY:
                            w.ready = True
                            w.deadline = time.monotonic() + pool._head_deadline(w)
                            continue
                        results[job_id] = verdict
                        pool._timed(seconds)
                        w.queue.remove(job_id)
                        w.deadline = time.monotonic() + pool._head_deadline(w)
                except (EOFError, OSError):
                    pool._replace(w, results, todo, Verdict(0.0, "error", {"worker_died": 1}))
            now = time.monotonic()
            for w in list(pool._workers):
                if w.queue and not w.ready and now > w.deadline:
                    pool._replace(w, results, todo, Verdict(0.0, "error", {"worker_start_timeout_s": STARTUP_TIMEOUT_S}))
                elif w.queue and now > w.deadline:
                    pool._replace(w, results, todo, Verdict(0.0, "timeout", {"timeout_s": pool._head_deadline(w)}))
                elif w.queue and not w.proc.is_alive() and not w.conn.poll():
                    pool._replace(w, results, todo, Verdict(0.0, "error", {"worker_died": 1}))
