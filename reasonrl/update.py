"""The policy update of a GRPO step: advantages, packing, micro-batched forward/backward, optimizer step.

:func:`update_policy` is steps 5-8 of one step (DESIGN.md), on one sampled
batch, in place on the model and its optimizer: advantages from the estimator
named by ``algorithm.advantage``, the per-token loss named by
``algorithm.policy_loss`` (plus truncated importance sampling, a KL term to a
frozen reference, an entropy bonus), aggregated by ``algorithm.loss_agg`` with
the batch's global counts, over micro-batches, then clipping and one optimizer
step per update (``algorithm.updates_per_batch``).

It does not sample, score or log.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from reasonrl import grpo
from reasonrl.checkpoint import pause_point
from reasonrl.data import pack, pack_shared
from reasonrl.logprobs import batch_logprobs, prompt_sharing_supported
from reasonrl.runtime import Runtime


@dataclass(frozen=True)
class UpdateSettings:
    """How a step updates the policy: the algorithm config node and the few numbers around it."""

    alg: Any  # the algorithm config (reasonrl.config.AlgorithmConfig)
    pad_id: int
    temperature: float = 1.0  # the sampling temperature (logprobs are taken under it)
    micro_batch_size: int = 256  # sequences per micro-batch at most
    max_tokens_per_micro_batch: int = 0  # and (when > 0) padded tokens per micro-batch at most
    pass_cost_tokens: float | None = None  # a pass's cost beyond its tokens (see plan_micro_batches); None: fewest passes
    max_len: int = 64  # the generation limit (Dr. GRPO's normaliser)
    grad_clip: float = 1.0
    use_tis: bool = False  # truncated importance sampling toward the sampler's logprobs
    compute_dtype: torch.dtype = torch.float32  # autocast dtype for the forward (bfloat16 where the hardware has it)
    share_prompt: bool = False  # run each group's prompt once per micro-batch (where the model supports it)

    @classmethod
    def from_config(cls, cfg, pad_id: int, use_tis: bool, compute_dtype: torch.dtype = torch.float32) -> "UpdateSettings":
        ro = cfg.rollout
        return cls(
            alg=cfg.algorithm,
            pad_id=pad_id,
            temperature=ro.temperature if ro.temperature > 0 else 1.0,
            micro_batch_size=ro.micro_batch_size,
            max_tokens_per_micro_batch=ro.max_tokens_per_micro_batch,
            pass_cost_tokens=ro.pass_cost_tokens,
            share_prompt=ro.share_prompt,
            max_len=ro.max_new_tokens,
            grad_clip=cfg.optim.grad_clip,
            use_tis=use_tis,
            compute_dtype=compute_dtype,
        )


def plan_micro_batches(
    lengths: Sequence[int],
    max_seqs: int,
    max_tokens: int = 0,
    pass_cost: float | None = None,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Indices of each micro-batch: sequences sorted by length (longest first) and cut into runs, each padded to
    its own longest sequence, holding at most ``max_seqs`` sequences and, when ``max_tokens`` > 0, at most that
    many padded tokens (a sequence longer than the budget goes alone).

    Where to cut is chosen to minimise ``padded tokens + pass_cost x passes`` (dynamic programming over the
    sorted order): ``pass_cost`` is what one forward/backward pass costs beyond its tokens, in tokens. A batch
    whose lengths spread widely then runs as several short passes instead of one mostly padded one; None means
    the fewest passes the caps allow (with the least padding among those).

    With ``prompts`` (each sequence's prompt token ids), ``lengths`` are completion lengths and a micro-batch runs
    each distinct prompt once (:func:`reasonrl.data.pack_shared`): its tokens are distinct prompts x the longest
    prompt + sequences x the longest completion. Two orders are planned, longest first and group by group, and
    the cheaper plan is kept."""
    n = len(lengths)
    if prompts is None:
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        return _cut(order, lengths, [0] * n, list(range(n)), max_seqs, max_tokens, pass_cost)[1]
    keys = [tuple(p) for p in prompts]
    plens = [len(p) for p in prompts]
    by_length = sorted(range(n), key=lambda i: (-(plens[i] + lengths[i]), i))
    group_top: dict[tuple[int, ...], int] = {}
    for i in range(n):
        group_top[keys[i]] = max(group_top.get(keys[i], 0), plens[i] + lengths[i])
    by_group = sorted(range(n), key=lambda i: (-group_top[keys[i]], keys[i], -lengths[i], i))
    plans = [_cut(o, lengths, plens, keys, max_seqs, max_tokens, pass_cost) for o in (by_length, by_group)]
    return min(plans, key=lambda p: p[0])[1]


def _cut(order, lengths, plens, keys, max_seqs: int, max_tokens: int, pass_cost: float | None):
    """The least-cost split of ``order`` into contiguous runs (see :func:`plan_micro_batches`): (cost, runs)."""
    n = len(order)
    best: list[tuple[float, ...]] = [(0.0, 0.0)] + [(math.inf, math.inf)] * n  # cost of the first i sequences
    cut = [0] * (n + 1)  # where the last run of the best plan for the first i sequences starts
    for i in range(1, n + 1):
        seen, longest_prompt, longest = set(), 0, 0
        for j in range(i - 1, -1, -1):  # the last run is order[j:i]; later starts win ties
            o = order[j]
            seen.add(keys[o])
            longest_prompt, longest = max(longest_prompt, plens[o]), max(longest, lengths[o])
            k = i - j
            padded = len(seen) * longest_prompt + k * longest
            if k > max_seqs or (k > 1 and max_tokens > 0 and padded > max_tokens):
                break  # a longer run only grows
            prev = best[j]
            cost = (prev[0] + 1, prev[1] + padded) if pass_cost is None else (prev[0] + padded + pass_cost, 0.0)
            if cost < best[i]:
                best[i], cut[i] = cost, j
    out: list[list[int]] = []
    i = n
    while i > 0:
        out.append(order[cut[i] : i])
        i = cut[i]
    return best[n], out[::-1]


def autocast(device: torch.device, dtype: torch.dtype):
    """bfloat16/float16 autocast for the forward pass (master weights stay float32); a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def update_policy(
    model,
    opt,
    sched,
    rollouts,
    rewards,
    masked,
    group_size: int,
    settings: UpdateSettings,
    *,
    ref_model=None,
    step: int = 0,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Steps 5-8 of a GRPO step on one sampled batch, in place on ``model`` and ``opt``.

    rollouts: N = B*G rollouts, prompt-major; rewards: (N,); masked: N flags (timeout/error verdicts),
    which leave the loss, the token and sequence counts, and their group's baseline. Micro-batches
    follow :func:`plan_micro_batches`, each packed to its own longest sequence (with ``share_prompt`` and a
    model that supports it, each distinct prompt runs once per micro-batch); logprobs come from the
    final hidden states in blocks (:mod:`reasonrl.logprobs`), the reference model's once per batch. The
    loss is normalised by the batch's global token and sequence counts (summed over ranks by
    ``runtime``), so the update does not depend on how the batch is split. Returns the step's training
    statistics (means over completion tokens; loss, entropy, KL and logprob gaps from the first update,
    the sampled batch under the policy that sampled it; clip fraction over all updates).
    """
    alg, use_tis, temperature = settings.alg, settings.use_tis, settings.temperature
    runtime = runtime or Runtime()
    device = next(model.parameters()).device
    keep_flags = [not (m or (alg.mask_truncated and r.finish_reason == "length")) for m, r in zip(masked, rollouts)]
    valid = torch.tensor([not m for m in masked])
    # advantages from the whole batch (every rank's groups, rank-major): batch-level statistics such as
    # adv_scale=batch are then those of the global batch, and each rank keeps its own rows
    everyone = grpo.estimate_advantages(alg.advantage, runtime.cat(rewards.float()), group_size, runtime.cat(valid), alg)
    adv = everyone[runtime.rank * len(rollouts) : (runtime.rank + 1) * len(rollouts)].to(device)  # (N,)
    surrogate = grpo.get_policy_loss(alg.policy_loss)
    caps = (settings.micro_batch_size, settings.max_tokens_per_micro_batch, settings.pass_cost_tokens)
    share = settings.share_prompt and all(prompt_sharing_supported(m) for m in (model, ref_model) if m is not None)
    if share:  # a group's prompt runs once per micro-batch, its completions on top of it
        micro = plan_micro_batches([len(r.completion_ids) for r in rollouts], *caps, prompts=[r.prompt_ids for r in rollouts])
        batches = [pack_shared([rollouts[i] for i in idx], settings.pad_id).to(device) for idx in micro]
    else:
        micro = plan_micro_batches([len(r.prompt_ids) + len(r.completion_ids) for r in rollouts], *caps)
        batches = [pack([rollouts[i] for i in idx], settings.pad_id).to(device) for idx in micro]
    keeps = [torch.tensor([keep_flags[i] for i in idx], dtype=torch.float32, device=device)[:, None] for idx in micro]
    loss_masks = [b.completion_mask * k for b, k in zip(batches, keeps)]  # (n, T_k) each: per completion-token target
    total_tokens = int(runtime.sum(sum(float(m.sum()) for m in loss_masks)))  # global counts: the same update at any world size
    total_seqs = int(runtime.sum(sum(keep_flags)))
    # every rank runs the same number of forward/backward passes (each one gathers and reduces shards): a rank
    # with fewer micro-batches repeats its last one with zero weight
    n_micro = int(runtime.max(len(micro)))
    plan = list(range(len(micro))) + [len(micro) - 1] * (n_micro - len(micro))
    ref_logps = None
    if ref_model is not None:  # once per batch, not per update or micro-batch
        with torch.no_grad(), autocast(device, settings.compute_dtype):
            ref_logps = [  # per pass of the plan: a sharded reference gathers its shards as often on every rank
                batch_logprobs(ref_model, b, temperature)[0] for b in (batches[k] for k in plan)
            ]

    model.train()
    sums = dict.fromkeys(("loss", "entropy", "clip", "kl", "ref_kl", "diff", "tis", "tis_capped"), 0.0)
    diff_max = 0.0
    for update in range(alg.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        for j, k in enumerate(plan):
            idx, b, weight = micro[k], batches[k], float(j < len(micro))
            m, a = b.completion_mask * weight, adv[idx]
            with autocast(device, settings.compute_dtype):
                logp, ent = batch_logprobs(model, b, temperature, want_entropy=alg.entropy_coef > 0 or update == 0)
            # one update: the policy that sampled is this one; several: the stored sampling-time logprobs
            old_logp = logp.detach() if alg.updates_per_batch == 1 else b.sampler_logprobs
            per_tok, clipped = surrogate(logp, old_logp, a, alg)
            if use_tis and alg.updates_per_batch == 1:
                w = grpo.truncated_is_weights(old_logp, b.sampler_logprobs, alg.tis_cap)  # (n, T)
                per_tok = per_tok * w
                sums["tis"] += float((w * m).sum())
                sums["tis_capped"] += float(((w >= alg.tis_cap) * m).sum())
            if ref_logps is not None:
                ref_kl = grpo.kl_estimate(logp, ref_logps[j], alg.kl_estimator)  # (n, T)
                per_tok = per_tok + alg.kl_coef * ref_kl
                if update == 0:
                    sums["ref_kl"] += float((ref_kl.detach() * m).sum())
            if alg.entropy_coef > 0:
                per_tok = per_tok - alg.entropy_coef * ent
            loss = grpo.aggregate(
                alg.loss_agg,
                per_tok,
                loss_masks[k] * weight,
                total_tokens=total_tokens,
                total_seqs=total_seqs,
                max_len=settings.max_len,
            )
            loss.backward()
            sums["clip"] += float((clipped.float() * m).sum())
            if update == 0:  # statistics of the sampled batch under the policy that sampled it
                with torch.no_grad():
                    diff = (logp.detach() - b.sampler_logprobs).abs() * m
                    sums["loss"] += loss.item()
                    sums["entropy"] += float((ent.detach() * m).sum())
                    sums["kl"] += float((grpo.kl_estimate(b.sampler_logprobs, logp.detach(), "k3") * m).sum())
                    sums["diff"] += float(diff.sum())
                    diff_max = max(diff_max, float(diff.max()))
        grad_norm = _clip_grad_norm(model, settings.grad_clip)  # of the whole model, the same on every rank
        if update == 0:
            sums = {k: v if k == "clip" else runtime.sum(v) for k, v in sums.items()}  # every rank's share
            diff_max = runtime.max(diff_max)
        if not math.isfinite(sums["loss"]) or not math.isfinite(grad_norm):  # global numbers: every rank stops
            raise FloatingPointError(
                f"non-finite loss {sums['loss']} or grad norm {grad_norm} at step {step}"
                + (f" (seen by all {runtime.world_size} processes)" if runtime.distributed else "")
            )
        pause_point(step, "optimizer")  # fault injection for the resume tests (a no-op otherwise)
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)  # gradients are freed before the generator wakes up
    sums["clip"] = runtime.sum(sums["clip"])
    n_comp = max(runtime.sum(sum(float(b.completion_mask.sum()) for b in batches)), 1.0)
    return {
        "loss": sums["loss"],
        "kl": (sums["ref_kl"] if ref_model is not None else sums["kl"]) / n_comp,
        "entropy": sums["entropy"] / n_comp,
        "clip_frac": sums["clip"] / (n_comp * alg.updates_per_batch),
        "grad_norm": grad_norm,
        "logprob_diff_mean": sums["diff"] / n_comp,
        "logprob_diff_max": diff_max,
        "tis_weight_mean": sums["tis"] / n_comp,
        "tis_capped_frac": sums["tis_capped"] / n_comp,
        "masked_frac": 1.0 - total_seqs / runtime.sum(len(rollouts)),
        "completion_tokens": n_comp,
        "micro_batches": n_micro,
    }


def _clip_grad_norm(model, max_norm: float) -> float:
    """Clip the gradients to ``max_norm`` in total; the norm before clipping (over all shards when sharded)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
