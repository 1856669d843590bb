"""Asynchronous rollouts (reasonrl.actor, ``rollout.max_staleness``): the actor/learner pair and the trainer.

The first tests drive :class:`AsyncRollouts` itself, with a learner loop written out here and a ``collect`` that
draws numbered problems from a stream (with delays where a test needs one side slower): staleness accounting,
wait and drop, the resume position, evaluation requests, and every deadline. The last ones run the trainer:
an asynchronous run's metrics, the evaluation of a named version, a hung generator that times out by name,
and a kill -9 in an asynchronous run that resumes without skipping or repeating a problem.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from reasonrl.actor import ActorFailed, AsyncRollouts, SyncTimeout
from reasonrl.rollout import RolloutBatch

from conftest import TINY, compose


class Numbers:
    """A problem stream of 1, 2, 3, ... with a resumable position."""

    def __init__(self):
        self.pos = 0

    def __next__(self) -> dict:
        self.pos += 1
        return {"n": self.pos}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def pair(k: int, stale: str = "wait", gen_s: float = 0.0, timeout_s: float = 20.0, collect=None, version: int = 0, **kw):
    """An actor over a Numbers stream (two problems per batch) with ``version`` published and loaded; the versions
    it loads later."""
    stream, loads = Numbers(), []

    def draw(index: int, version: int) -> RolloutBatch:
        time.sleep(gen_s)
        return RolloutBatch(problems=[next(stream), next(stream)], rollouts=[], group_size=1)

    ar = AsyncRollouts(collect or draw, lambda v, t: loads.append(v), stream, max_staleness=k, stale=stale,
                       timeout_s=timeout_s, loaded_version=version, **kw)  # fmt: skip
    ar.publish(version, {})
    return ar, loads


def learn(ar: AsyncRollouts, steps: int, train_s: float = 0.0, start: int = 0) -> list:
    """The learner: take a batch, 'train' for train_s, publish the next version; what it took."""
    taken, version = [], start
    ar.start()
    try:
        for _ in range(steps):
            got = ar.take(version)
            taken.append(got)
            time.sleep(train_s)
            version += 1
            ar.publish(version, {})
    finally:
        ar.close()
    return taken


def problems_of(taken) -> list[int]:
    return [p["n"] for t in taken for p in t.item.batch.problems]


@pytest.mark.parametrize("k", [1, 2])
def test_wait_keeps_the_bound_and_every_problem_in_order(k):
    """A fast actor and a slow learner: the actor runs k versions ahead and no further, nothing is dropped,
    batch i trains at step i, and the problems come in stream order, none skipped or repeated."""
    ar, loads = pair(k)
    taken = learn(ar, 8, train_s=0.05)
    staleness = [step - t.item.version for step, t in enumerate(taken)]
    assert max(staleness) == k and all(0 <= s <= k for s in staleness), staleness
    assert [t.item.index for t in taken] == list(range(1, 9)) and all(t.dropped == 0 for t in taken)
    assert problems_of(taken) == list(range(1, 17))
    assert loads == sorted(set(loads)) and loads[0] >= 1  # newest versions, each loaded once (0 was there already)


def test_a_slow_actor_makes_the_learner_wait_and_samples_with_the_newest_version():
    ar, _ = pair(1, gen_s=0.15)
    taken = learn(ar, 5)
    assert sum(t.wait_s for t in taken[1:]) > 0.3  # the learner idles: generation is the slower side
    assert all(step - t.item.version <= 1 for step, t in enumerate(taken))


def test_drop_never_waits_for_a_version_and_drops_what_is_too_old():
    """stale=drop with a fast actor and a slow learner: the actor samples with whatever version it has, the
    learner drops batches older than k (counted), and trains only within the bound; dropped problems are gone,
    the rest keep stream order."""
    ar, _ = pair(1, stale="drop")
    taken = learn(ar, 6, train_s=0.1)
    assert sum(t.dropped for t in taken) > 0
    assert all(step - t.item.version <= 1 for step, t in enumerate(taken))
    indexes = [t.item.index for t in taken]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    seen = problems_of(taken)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_the_resume_position_is_the_first_batch_not_taken():
    """After two steps the queue holds batch 3 (or the actor samples it): a checkpoint's position is the stream
    state before batch 3 and index 3, and a new actor started there samples batch 3's problems again."""
    ar, _ = pair(1)
    taken = learn(ar, 2, train_s=0.05)
    at = ar.position()
    assert at["index"] == 3 and at["stream"] == {"pos": 4}
    assert problems_of(taken) == [1, 2, 3, 4]
    again, _ = pair(1, first_index=at["index"], version=2)
    again.stream.load_state_dict(at["stream"])
    more = learn(again, 2, start=2)
    assert [t.item.index for t in more] == [3, 4] and problems_of(more) == [5, 6, 7, 8]


def test_a_call_runs_on_the_actor_between_batches_with_the_named_version():
    ar, loads = pair(1, gen_s=0.05)
    ar.start()
    try:
        ar.take(0)
        ar.publish(1, {})
        where = ar.call(lambda: (threading.current_thread().name, ar.loaded), 1, "the evaluation at step 1")
        assert where == ("reasonrl-actor", 1)
        with pytest.raises(ActorFailed, match="asked for policy version 0, the newest published is 1"):
            ar.call(lambda: None, 0, "an evaluation of an old version")
    finally:
        ar.close()


def test_a_hung_generator_times_out_naming_the_actor_and_what_it_was_doing():
    release = threading.Event()

    def hang(index, version):
        release.wait()
        return RolloutBatch(problems=[], rollouts=[], group_size=1)

    ar, _ = pair(1, collect=hang, timeout_s=0.5)
    ar.start()
    t = time.perf_counter()
    with pytest.raises(SyncTimeout) as e:
        ar.take(0)
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "no batch 1 from the rollout actor within rollout.sync_timeout_s=0.5 s" in msg
    assert "the actor is sampling batch 1 with policy version 0" in msg
    release.set()
    ar.close()


def test_an_error_in_the_actor_is_raised_in_the_learner_with_its_traceback():
    def broken(index, version):
        return 1 / 0

    ar, _ = pair(1, collect=broken)
    ar.start()
    with pytest.raises(ActorFailed, match="ZeroDivisionError") as e:
        ar.take(0)
    assert isinstance(e.value.__cause__, ZeroDivisionError) and "in broken" in str(e.value)
    ar.close()


def test_a_learner_that_stops_publishing_is_named_by_the_actor(caplog):
    """k=1: batch 3 needs version 1, which does not come; past its deadline the actor warns, naming the learner,
    and keeps waiting (a learner that evaluates for long is slow, not gone): version 1 then lets it go on."""
    ar, _ = pair(1, timeout_s=0.5)
    ar.start()
    ar.take(0)
    ar.take(0)  # batch 2 (version 0): allowed, staleness 0
    with caplog.at_level("WARNING", logger="reasonrl.actor"):
        time.sleep(1.2)
    assert "got no policy version 1 from the learner within rollout.sync_timeout_s=0.5 s" in caplog.text
    assert "the learner is slow or has stopped answering" in caplog.text and ar.error is None
    ar.publish(1, {})
    assert ar.take(1).item.index == 3
    ar.close()


def test_close_stops_a_waiting_actor():
    ar, _ = pair(1)
    ar.start()
    time.sleep(0.2)  # batches 1 and 2 sampled; waiting for version 1
    ar.close()
    assert not ar.thread.is_alive()


# ---------------------------------------------------------------- the trainer
ASYNC = [*TINY, "max_steps=4", "eval.every=2", "checkpoint.every=0", "checkpoint.final=false", "verify.workers=0"]


def test_an_asynchronous_run_trains_on_stale_batches_and_says_so(tmp_path):
    """max_staleness=1: every batch after the first was sampled one version back (the actor runs ahead of a
    learner that is faster than it), the update corrects by version (the stale ratio is reported and is not 1
    on every token), the evaluation names the version it evaluated, and the policy changed."""
    from reasonrl.train import GRPOTrainer

    cfg = compose("train", [*ASYNC, "rollout.max_staleness=1", f"run_dir={tmp_path / 'run'}"])
    trainer = GRPOTrainer(cfg).setup()
    try:
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        summary = trainer.fit()
        changed = any(not v.equal(trainer.model.state_dict()[k]) for k, v in before.items())
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = rows[1:]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and changed
    assert [r["async/batch"] for r in steps] == [1, 2, 3, 4]
    assert all(0 <= r["async/staleness"] <= 1 for r in steps) and all(r["async/dropped"] == 0 for r in steps)
    stale = [r for r in steps if r["async/staleness"] == 1]
    assert stale, "the actor never ran ahead"
    assert all(r["sampling/staleness_max"] == 1 and r["sampling/stale_ratio_min"] < 1 < r["sampling/stale_ratio_max"]
               for r in stale)  # fmt: skip
    assert all("time/wait_s" in r and "time/actor_s" in r for r in steps)
    assert "eval/arith/accuracy" in rows[2] and "eval/arith/accuracy" in rows[4] and summary["steps"] == 4


def test_a_hung_generator_in_a_run_times_out_naming_the_actor(tmp_path):
    from reasonrl.train import GRPOTrainer

    cfg = compose("train", [*ASYNC, "rollout.max_staleness=1", "rollout.sync_timeout_s=3", f"run_dir={tmp_path / 'r'}"])
    trainer = GRPOTrainer(cfg).setup()
    release = threading.Event()
    trainer.generator.inner.generate = lambda *a, **k: release.wait() and []  # the engine stops answering
    try:
        with pytest.raises(SyncTimeout, match=r"no batch 1 from the rollout actor within rollout.sync_timeout_s=3 s"):
            trainer.step()
    finally:
        release.set()
        trainer.close()


def test_bad_async_settings_are_refused_by_name():
    from reasonrl.config import check_train_config

    for override, words in [
        ("rollout.max_staleness=-1", "rollout.max_staleness must be >= 0"),
        ("rollout.stale=never", "rollout.stale must be wait or drop, not 'never'"),
        ("rollout.sync_timeout_s=0", "rollout.sync_timeout_s must be above 0"),
        ("rollout.actor=fork", "rollout.actor must be thread or process, not 'fork'"),
        ("rollout.actor_address=nowhere", "rollout.actor_address must be host:port"),
        ("rollout.actor_address=h:1", "set rollout.actor=process too"),
    ]:
        with pytest.raises(ValueError, match=words):
            check_train_config(compose("train", [override]))


# ---------------------------------------------------------------- the actor in its own process (reasonrl.remote)
def test_an_actor_process_samples_what_a_thread_samples(tmp_path):
    """rollout.actor=process: the child loads its own policy, stream and checks, receives every version by
    broadcast over the gloo link, and trains the same batches as the in-process actor (staleness within the
    bound, the first batch's sampler/trainer gap that of a synchronous step: the published weights arrived)."""
    from reasonrl.train import GRPOTrainer

    cfg = compose("train", [*ASYNC, "rollout.max_staleness=1", "rollout.actor=process", f"run_dir={tmp_path / 'run'}"])
    trainer = GRPOTrainer(cfg).setup()
    try:
        child = trainer.rollouts.proc
        assert child.is_alive() and trainer.generator is None  # the trainer holds no sampling engine
        trainer.fit()
    finally:
        trainer.close()
    assert not child.is_alive()  # closed with the run
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = rows[1:]
    assert [r["async/batch"] for r in steps] == [1, 2, 3, 4]
    assert all(0 <= r["async/staleness"] <= 1 for r in steps) and any(r["async/staleness"] == 1 for r in steps)
    assert steps[0]["sampling/logprob_diff_max"] < 1e-5


def test_a_killed_actor_process_is_named_with_its_exit_code(tmp_path):
    """The generator side killed with SIGKILL mid-run: the trainer's next wait fails at once, naming the process,
    its pid and how it ended, instead of hanging."""
    import os
    import signal

    from reasonrl.actor import ActorFailed
    from reasonrl.train import GRPOTrainer

    cfg = compose("train", [*ASYNC, "rollout.max_staleness=1", "rollout.actor=process", f"run_dir={tmp_path / 'r'}"])
    trainer = GRPOTrainer(cfg).setup()
    try:
        trainer.step()
        pid = trainer.rollouts.proc.pid
        os.kill(pid, signal.SIGKILL)
        t = time.perf_counter()
        with pytest.raises(ActorFailed, match=rf"the actor process \(pid {pid}\) is gone \(exit code -9\)"):
            for _ in range(3):
                trainer.step()
        assert time.perf_counter() - t < 60
    finally:
        trainer.close()


def test_an_actor_started_elsewhere_connects_to_the_waiting_trainer(tmp_path):
    """rollout.actor_address=HOST:PORT: the trainer opens the link there and waits; ``reasonrl-actor --connect
    HOST:PORT``, started on its own (here a second command on this machine, as on another node), receives the
    trainer's config and start, samples for it, and exits when the trainer closes the link."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir, env = os.path.dirname(sys.executable), {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    train_cmd = [os.path.join(bin_dir, "reasonrl-train"), *ASYNC, "rollout.max_staleness=1", "rollout.actor=process",
                 f"rollout.actor_address=127.0.0.1:{port}", "rollout.sync_timeout_s=300", f"run_dir={run}"]  # fmt: skip
    trainer = subprocess.Popen(train_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    actor = subprocess.Popen([os.path.join(bin_dir, "reasonrl-actor"), "--connect", f"127.0.0.1:{port}", "--timeout", "300"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:
        out = trainer.communicate(timeout=600)[0]
        actor_out = actor.communicate(timeout=120)[0]
    finally:
        for p in (trainer, actor):
            if p.poll() is None:
                p.kill()
    assert trainer.returncode == 0, out[-3000:]
    assert actor.returncode == 0, actor_out[-3000:]
    assert f"reasonrl-actor --connect 127.0.0.1:{port}" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/batch"] for r in rows[1:]] == [1, 2, 3, 4] and all(r["async/staleness"] <= 1 for r in rows[1:])
