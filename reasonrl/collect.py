"""Sampling a step's groups: prompts from the stream, G completions each, scores, dynamic sampling.

:func:`collect_groups` is steps 1-4 of one GRPO step (DESIGN.md): take B
problems, generate G completions per prompt, score every completion with every
verifier, and turn verdicts into rewards. With dynamic sampling (DAPO) groups
whose G rewards are all equal carry no signal: they are set aside and more
prompts are drawn, at most ``max_redraws`` times, and the batch is filled up
with set-aside groups if the cap is hit. The soft overlong penalty is added to
rewards here.

Across processes each rank takes whole groups: every rank reads the same B
problems from its copy of the stream and keeps its contiguous share, samples
with its own seed, and scores locally; the ranks agree on when every one of
them is full, so they all call the generator (whose engines may hold
collectives) the same number of times.

It does not update the policy (:mod:`reasonrl.update`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from reasonrl import grpo
from reasonrl.rollout import BatchStats, Generator, Rollout, RolloutBatch, Sampling
from reasonrl.runtime import Runtime
from reasonrl.tasks import with_prompt_info
from reasonrl.verifiers.scoring import score


def _generate(generator, prompt_ids, G, sampling, problems, verifiers, pool, overlap: bool, stats: BatchStats):
    """(rollouts, verdict rows or None). With a pool (and ``overlap``) each group goes to the pool's workers the
    moment the generator has it, so checks run while the rest of the step generates; ``verify_s`` then counts
    only the wait for the checks still running after the last completion."""
    t = time.perf_counter()
    if pool is None or not overlap or not _streams(generator):
        rollouts = generator.generate(prompt_ids, G, sampling)
        stats.generate_s += time.perf_counter() - t
        return rollouts, None
    checks, order = pool.stream(only=list(verifiers)), []

    def on_group(group: list[Rollout]) -> None:
        order.extend(group)
        checks.add([problems[r.prompt_index] for r in group], [r.text for r in group])

    rollouts = generator.generate(prompt_ids, G, sampling, on_group=on_group)
    stats.generate_s += time.perf_counter() - t
    t = time.perf_counter()
    verdicts = {id(r): row for r, row in zip(order, checks.results())}
    stats.verify_s += time.perf_counter() - t
    return rollouts, [verdicts[id(r)] for r in rollouts]


def _streams(generator) -> bool:
    """Whether ``generator.generate`` hands over groups as they finish (an ``on_group`` parameter)."""
    import inspect

    try:
        return "on_group" in inspect.signature(generator.generate).parameters
    except (TypeError, ValueError):
        return False


REDRAW_SEED_STRIDE = 7919  # redraw r of a step samples with seed + r * stride: fresh, reproducible seeds
RANK_SEED_STRIDE = 104_729  # rank k samples with seed + k * stride


@dataclass(frozen=True)
class GroupPlan:
    """What a step samples: B prompts x G completions, how, and what dynamic sampling may redraw."""

    B: int
    G: int
    sampling: Sampling
    mask_statuses: tuple[str, ...] = ("timeout", "error")
    dynamic: bool = False
    max_redraws: int = 0
    overlong_buffer: int = 0
    overlong_coef: float = 1.0
    overlap: bool = True  # score groups in the pool while generation goes on

    @classmethod
    def from_config(cls, cfg) -> "GroupPlan":
        ro, alg = cfg.rollout, cfg.algorithm
        sampling = Sampling(temperature=ro.temperature, top_p=ro.top_p, max_new_tokens=ro.max_new_tokens)
        return cls(
            B=ro.prompts_per_step,
            G=ro.samples_per_prompt,
            sampling=sampling,
            mask_statuses=tuple(alg.mask_statuses),
            dynamic=alg.dynamic_sampling,
            max_redraws=alg.max_redraws,
            overlong_buffer=alg.overlong_buffer,
            overlong_coef=alg.overlong_coef,
            overlap=cfg.verify.overlap,
        )


def collect_groups(
    generator: Generator,
    tokenizer,
    stream,
    render: Callable[[Mapping[str, Any]], str],
    verifiers,
    pool,
    plan: GroupPlan,
    *,
    seed: int,
    policy_version: int = 0,
    runtime: Runtime | None = None,
) -> RolloutBatch:
    """This rank's B / world_size scored groups of G rollouts (prompt-major), each stamped with
    ``policy_version`` (the version of the policy that samples them), with this rank's sampling statistics in
    ``stats``."""
    runtime = runtime or Runtime()
    G, sampling, dynamic, max_redraws = plan.G, plan.sampling, plan.dynamic, plan.max_redraws
    share = runtime.share(plan.B, "prompts per step (rollout.prompts_per_step)")
    B = share.stop - share.start
    seed += RANK_SEED_STRIDE * runtime.rank
    mask_statuses, overlong_buffer, overlong_coef = plan.mask_statuses, plan.overlong_buffer, plan.overlong_coef
    kept: list[tuple[dict, list[Rollout]]] = []
    spare: list[tuple[dict, list[Rollout]]] = []
    stats = BatchStats()
    for attempt in range(max_redraws + 1 if dynamic else 1):
        texts, problems = [], []
        drawn = [next(stream) for _ in range(plan.B)]  # the same draws on every rank: the streams stay in step
        for problem in drawn[share]:  # each problem as verifiers see it: with what its prompt opened
            texts.append(render(problem))
            problems.append(with_prompt_info(problem, texts[-1]))
        prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        this_sampling = dataclasses.replace(sampling, seed=seed + REDRAW_SEED_STRIDE * attempt)
        rollouts, rows = _generate(generator, prompt_ids, G, this_sampling, problems, verifiers, pool, plan.overlap, stats)
        t = time.perf_counter()
        scored = score([problems[r.prompt_index] for r in rollouts], [r.text for r in rollouts], verifiers, mask_statuses,
                       pool, rows=rows)  # fmt: skip
        stats.verify_s += time.perf_counter() - t
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)  # (B*G,)
        if overlong_buffer > 0:
            lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
            penalty = overlong_coef * grpo.overlong_penalty(lengths, sampling.max_new_tokens, overlong_buffer)
            rewards = rewards + penalty
            if attempt == 0:
                stats.overlong_penalty_mean = float(penalty.mean())
        for r, reward, verdicts, masked in zip(rollouts, rewards.tolist(), scored.verdicts, scored.masked):
            r.reward, r.verdicts, r.masked, r.policy_version = reward, verdicts, masked, policy_version
        has_signal = grpo.keep_groups(rewards, G)  # (B,)
        if attempt == 0:
            stats.zero_std_frac = float((~has_signal).float().mean())
        for b in range(B):
            group = (problems[b], rollouts[b * G : (b + 1) * G])
            (kept if has_signal[b] or not dynamic else spare).append(group)
        if runtime.all(len(kept) >= B):  # a full rank keeps sampling (into its spares) until every rank is full
            break
        stats.redraws += 1
    stats.redraws = min(stats.redraws, max_redraws) if dynamic else 0
    stats.dropped = len(spare)
    kept = (kept + spare)[:B]  # cap reached: fill with signal-free groups (they get zero advantage)
    rollouts = [dataclasses.replace(r, prompt_index=i) for i, (_, group) in enumerate(kept) for r in group]
    return RolloutBatch(problems=[p for p, _ in kept], rollouts=rollouts, group_size=G, stats=stats)
