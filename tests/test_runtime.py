"""Rank logic: which share, seed and reduced number each rank of a world gets (threads as ranks, see ranks.py)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from ranks import run_ranks

from reasonrl.runtime import Runtime


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_split_and_share_partition_the_items_evenly(world_size):
    for n in range(0, 23):
        parts = [Runtime(rank=r, world_size=world_size).split(n) for r in range(world_size)]
        assert [i for s in parts for i in range(n)[s]] == list(range(n))  # contiguous, in rank order, each once
        sizes = [s.stop - s.start for s in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # the first ranks get the extra
        if n % world_size == 0:
            assert set(sizes) == {n // world_size}
            assert [Runtime(rank=r, world_size=world_size).share(n) for r in range(world_size)] == parts
    with pytest.raises(ValueError, match="do not divide among 3 processes"):
        Runtime(rank=0, world_size=3).share(4, "prompts")


def test_the_thread_world_reduces_like_a_process_group():
    out = run_ranks(3, lambda rt: (rt.sum(rt.rank + 1), rt.max(rt.rank), rt.gather([rt.rank]), rt.all(rt.rank < 2),
                                   rt.cat(torch.tensor([rt.rank])).tolist(), rt.broadcast(rt.rank)))  # fmt: skip
    assert out == [(6.0, 2.0, [0, 1, 2], False, [0, 1, 2], 0)] * 3


class SamplingSpy:
    """The real HF generator, with the sampling settings of each call kept (to see each rank's seed)."""

    def __init__(self, inner):
        self.inner, self.seeds = inner, []

    def generate(self, prompt_ids, n, sampling):
        self.seeds.append(sampling.seed)
        return self.inner.generate(prompt_ids, n, sampling)


def _collector(world_size: int, B: int = 4, G: int = 2):
    """``collect(rt, problems)`` for each rank of a world: the real HF generator on its own tiny model per rank
    (built here, before the threads start)."""
    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tasks import arith
    from reasonrl.tiny import build_model, build_tokenizer
    from reasonrl.verifiers.integer import IntegerVerifier

    from conftest import compose

    tok = build_tokenizer(arith.CHARSET, arith.TAGS)
    gens = [SamplingSpy(HFGenerator(build_model(compose("train").model.arch, tok, seed=0), tok)) for _ in range(world_size)]
    plan = GroupPlan(B=B, G=G, sampling=Sampling(temperature=1.0, max_new_tokens=4))

    def collect(rt, problems):
        gen = gens[rt.rank]
        batch = collect_groups(gen, tok, iter(problems), arith.render_prompt, {"integer": (IntegerVerifier(), 1.0)},
                               None, plan, seed=11, runtime=rt)  # fmt: skip
        return batch, gen.seeds

    return collect


def test_each_rank_takes_its_own_share_of_the_drawn_problems_and_its_own_seed():
    from reasonrl.tasks import arith

    problems = arith.heldout(8)
    collect = _collector(2)
    (b0, seeds0), (b1, seeds1) = run_ranks(2, lambda rt: collect(rt, problems))
    assert [p["answer"] for p in b0.problems] == [p["answer"] for p in problems[0:2]]
    assert [p["answer"] for p in b1.problems] == [p["answer"] for p in problems[2:4]]  # not the first share again
    assert seeds0 and seeds1 and set(seeds0).isdisjoint(seeds1)  # each rank samples with its own seed
    collect = _collector(1)
    ((alone, seeds),) = run_ranks(1, lambda rt: collect(rt, problems))
    assert seeds == seeds0 and len(alone.problems) == 4


def test_the_whole_batch_points_every_rollout_at_its_own_problem_and_averages_fractions():
    from reasonrl.rollout import BatchStats, Rollout, RolloutBatch
    from reasonrl.train import GRPOTrainer

    def rank_batch(rt):
        G = 2
        problems = [{"id": f"r{rt.rank}p{b}"} for b in range(2)]
        rollouts = [Rollout(prompt_index=b, prompt_ids=[1], completion_ids=[2], text=f"r{rt.rank}p{b}", finish_reason="stop",
                            logprobs=[-1.0]) for b in range(2) for _ in range(G)]  # fmt: skip
        stats = BatchStats(generate_s=1.0 + rt.rank, verify_s=0.5, dropped=1, redraws=rt.rank,
                           zero_std_frac=[0.5, 0.0][rt.rank], overlong_penalty_mean=[-0.2, 0.0][rt.rank])  # fmt: skip
        batch = RolloutBatch(problems=problems, rollouts=rollouts, group_size=G, stats=stats)
        return GRPOTrainer._whole_batch(types.SimpleNamespace(runtime=rt), batch)

    whole = run_ranks(2, rank_batch)[0]
    assert [whole.problems[r.prompt_index]["id"] for r in whole.rollouts] == [r.text for r in whole.rollouts]
    assert [r.text for r in whole.rollouts] == ["r0p0", "r0p0", "r0p1", "r0p1", "r1p0", "r1p0", "r1p1", "r1p1"]
    assert whole.stats == BatchStats(generate_s=2.0, verify_s=0.5, dropped=2, redraws=1,
                                     zero_std_frac=0.25, overlong_penalty_mean=-0.1)  # fmt: skip
    assert all(r.logprobs == [] for r in whole.rollouts)  # sampler logprobs stay on their rank
    assert dataclasses.is_dataclass(whole)


def test_the_automatic_scoring_pool_shares_the_machine_among_its_training_processes(monkeypatch):
    """verify.workers=-1 gives each of the machine's L training processes its part of the cores (minus what
    generation and the trainer need): 4 processes on 32 cores start 6 workers each, not 30 each."""
    import os

    from reasonrl.verifiers.pool import resolve_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert resolve_workers(-1) == 30
    assert resolve_workers(-1, local_ranks=4) == 6
    assert sum(resolve_workers(-1, local_ranks=4) for _ in range(4)) + 4 * 2 <= 32
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert resolve_workers(-1) == 2 and resolve_workers(-1, local_ranks=2) == 1
    assert resolve_workers(3, local_ranks=4) == 3 and resolve_workers(0) == 0


def test_the_local_world_size_comes_from_the_launcher_not_the_world_size(monkeypatch):
    """Two machines of two processes each: torchrun sets WORLD_SIZE=4 and LOCAL_WORLD_SIZE=2, and this machine's
    share of its cores (threads, scoring workers) is counted over 2 processes, not 4. The process group is taken
    as set up already, as it is under torchrun."""
    from reasonrl.runtime import init_runtime

    launcher = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    want = Runtime(rank=3, world_size=4, local_rank=1, local_world_size=2, device=torch.device("cpu"))
    assert init_runtime("cpu") == want


def test_fsdp_off_in_one_process_returns_the_model_unchanged():
    from helpers import tiny_model

    from reasonrl.sharding import is_sharded, shard_model

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert shard_model(model, Runtime(), torch.float32, mode="off") is model
    assert not is_sharded(model) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="model.fsdp=off with more than one process"):
        shard_model(model, Runtime(rank=0, world_size=2), torch.float32, mode="off")
