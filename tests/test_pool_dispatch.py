"""How the scoring pool hands out checks: slow checks spread over every worker, and a stream starts a check
added while others run. Assertions are on which worker ran what and on what a check saw, never on wall time."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from reasonrl.verifiers import Verdict
from reasonrl.verifiers.pool import ScoringPool

GIVE_UP_S = 20.0  # how long a gated check waits for its release before it says it was not released


class Napper:
    """Sleeps ``problem["nap"]`` seconds; the verdict names the worker process that ran it."""

    def __call__(self, problem, completion):
        time.sleep(problem["nap"])
        return Verdict(1.0, "correct", {"pid": os.getpid()})


class Gate:
    """A problem with ``create``: creates that file. One with ``wait_for``: creates ``started``, then waits (up
    to GIVE_UP_S) until ``wait_for`` exists, and says whether it saw it while it was still running."""

    def __call__(self, problem, completion):
        if "create" in problem:
            Path(problem["create"]).touch()
            return Verdict(1.0, "correct", {"pid": os.getpid()})
        Path(problem["started"]).touch()
        end = time.monotonic() + GIVE_UP_S
        while not os.path.exists(problem["wait_for"]) and time.monotonic() < end:
            time.sleep(0.01)
        return Verdict(1.0, "correct", {"pid": os.getpid(), "released": os.path.exists(problem["wait_for"])})


def _ran_on(rows, name):
    return collections.Counter(r[name].info["pid"] for r in rows)


def test_slow_checks_in_a_small_batch_run_on_every_worker():
    """8 half-second checks on 4 workers: each worker runs 2 of them (they all once went to the first worker,
    which held up to 32 before another got any: 4 s instead of 1 s)."""
    with ScoringPool({"nap": Napper()}, workers=4, timeout_s=30.0) as pool:
        pool.run([{"nap": 0.0}] * 4, ["x"] * 4)  # workers started; fast checks timed
        rows = pool.run([{"nap": 0.5}] * 8, ["x"] * 8)
        workers = {w.proc.pid for w in pool._workers}
    assert [r["nap"].status for r in rows] == ["correct"] * 8
    ran = _ran_on(rows, "nap")
    assert set(ran) == workers and sorted(ran.values()) == [2, 2, 2, 2], ran


def test_slow_checks_streamed_one_at_a_time_run_on_every_worker():
    """The same checks added to a stream one by one (as groups come from a generator) land on every worker."""
    with ScoringPool({"nap": Napper()}, workers=4, timeout_s=30.0) as pool:
        pool.run([{"nap": 0.0}] * 4, ["x"] * 4)
        checks = pool.stream()
        for _ in range(8):
            checks.add([{"nap": 0.5}], ["x"])
        rows = checks.results()
        workers = {w.proc.pid for w in pool._workers}
    ran = _ran_on(rows, "nap")
    assert set(ran) == workers, ran  # each check added went to an idle worker while there was one


def test_slow_checks_once_timed_go_one_at_a_time_to_whichever_worker_is_free(tmp_path):
    """Once the pool has timed slow checks, a worker holds one at a time: on 2 workers, 6 checks where the
    first waits on a gate and the rest are short. The other worker runs every short one, the one that opens
    the gate included, while the gated check still runs (it sees the gate open)."""
    started, gate = tmp_path / "started", tmp_path / "open"
    with ScoringPool({"nap": Napper(), "gate": Gate()}, workers=2, timeout_s=60.0) as pool:
        pool.run([{"nap": 0.2}] * 4, ["x"] * 4, only=["nap"])  # timed: about 0.2 s a check
        problems = [{"wait_for": str(gate), "started": str(started)}] + [{"create": str(tmp_path / "x")}] * 4
        rows = pool.run([*problems, {"create": str(gate)}], ["x"] * 6, only=["gate"])
    assert rows[0]["gate"].info["released"] is True, rows[0]["gate"]
    ran = _ran_on(rows, "gate")
    assert ran[rows[0]["gate"].info["pid"]] == 1 and sorted(ran.values()) == [1, 5], ran


def _beside_a_long_check(tmp_path, later: list[dict]) -> list[dict]:
    """In a 2-worker stream (both workers started, quick checks timed): a long check that waits for the file
    ``tmp_path / "open"``; once it runs, the ``later`` checks are added together. The rows: the long one's first
    (``released``: whether it saw the file appear), then the later ones'."""
    started, gate = tmp_path / "started", tmp_path / "open"
    with ScoringPool({"gate": Gate()}, workers=2, timeout_s=60.0) as pool:
        pool.run([{"create": str(tmp_path / "warm")}] * 2, ["x"] * 2)
        checks = pool.stream()
        checks.add([{"wait_for": str(gate), "started": str(started)}], ["x"])
        end = time.monotonic() + 60
        while not started.exists() and time.monotonic() < end:
            time.sleep(0.01)
        assert started.exists(), "the long check never started"
        checks.add(later, ["x"] * len(later))
        return checks.results()


def test_a_stream_starts_a_check_added_while_another_runs(tmp_path):
    """A stream must look for new checks while its workers are busy, not sleep until the nearest deadline:
    a check added while a long one runs on one worker starts on the other before the long one ends (the long
    one waits for the file the new one creates, and reports whether it appeared)."""
    rows = _beside_a_long_check(tmp_path, [{"create": str(tmp_path / "open")}])
    assert rows[0]["gate"].info["released"] is True, "the check added later started only after the long one ended"
    assert rows[0]["gate"].info["pid"] != rows[1]["gate"].info["pid"]


def test_checks_added_while_one_worker_is_busy_go_to_the_idle_worker(tmp_path):
    """The least-loaded worker gets the next checks, not the first one with room: with a long check running on
    the first of 2 workers, 2 checks added together start on the idle second one. Queued behind the long check,
    the first of them (it opens the long check's gate) would wait for it (the long check reports whether it saw
    the gate open)."""
    rows = _beside_a_long_check(tmp_path, [{"create": str(tmp_path / "open")}, {"create": str(tmp_path / "other")}])
    assert rows[0]["gate"].info["released"] is True, "a check added later was queued behind the long one"
    assert rows[1]["gate"].info["pid"] != rows[0]["gate"].info["pid"]
