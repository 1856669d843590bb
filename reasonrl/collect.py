"""Sampling a step's groups: prompts from the stream, G completions each, scores, dynamic sampling.

:func:`collect_groups` is steps 1-4 of one GRPO step (docs/design.md): take B
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
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from reasonrl import grpo
from reasonrl.pipeline import generate_and_verify, render_prompts
from reasonrl.rollout import BatchStats, Generator, Rollout, RolloutBatch, Sampling
from reasonrl.runtime import Runtime
from reasonrl.verifiers.base import MASK_STATUSES
from reasonrl.verifiers.scoring import score

REDRAW_SEED_STRIDE = 7919  # redraw r of a step samples with seed + r * stride: fresh, reproducible seeds
RANK_SEED_STRIDE = 104_729  # rank k samples with seed + k * stride


@dataclass(frozen=True)
class GroupPlan:
    """What a step samples: B prompts x G completions, how, and what dynamic sampling may redraw."""

    B: int
    G: int
    sampling: Sampling
    mask_statuses: tuple[str, ...] = MASK_STATUSES
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
        drawn = [next(stream) for _ in range(plan.B)]  # the same draws on every rank: the streams stay in step
        prompts = render_prompts(drawn[share], render, tokenizer)  # each problem as verifiers see it
        problems = prompts.problems
        this_sampling = dataclasses.replace(sampling, seed=seed + REDRAW_SEED_STRIDE * attempt)
        plain = {name: v for name, (v, _) in verifiers.items()}
        out = generate_and_verify(
            generator, prompts, G, this_sampling, pool=pool, only=list(verifiers), verifiers=plain, overlap=plan.overlap
        )
        rollouts = out.rollouts
        stats.generate_s += out.times["generate_s"]
        stats.verify_s += out.times["verify_s"]
        scored = score([problems[r.prompt_index] for r in rollouts], [r.text for r in rollouts], verifiers, mask_statuses,
                       rows=out.rows)  # fmt: skip
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)  # (B*G,)
        rewards = rewards + torch.tensor([r.env_reward for r in rollouts], dtype=torch.float32)  # a multi-turn environment's
        if overlong_buffer > 0:
            lengths = torch.tensor([r.model_tokens for r in rollouts])  # the model's tokens, not a tool's
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
