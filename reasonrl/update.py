"""The policy update of a GRPO step: advantages, packing, micro-batched forward/backward, optimizer step.

:func:`update_policy` is steps 5-8 of one step (docs/design.md), on one sampled
batch, in place on the model and its optimizer: plan (advantages from the
estimator named by ``algorithm.advantage``, per sequence or per token;
micro-batches; packing; global counts; which rows are stale), the frozen
reference's logprobs once, then per update and micro-batch forward ->
objective (:func:`reasonrl.objective.policy_objective`: the loss named by
``algorithm.policy_loss`` with truncated IS, KL and entropy, aggregated by
``algorithm.loss_agg``) -> backward, then clipping and one optimizer step per
update (``algorithm.updates_per_batch``). It returns :class:`UpdateStats`.
Micro-batches follow :func:`plan_micro_batches`, each packed to its own longest
sequence (with ``share_prompt`` and a model that supports it, each distinct
prompt runs once per micro-batch); logprobs come from the final hidden states
in blocks (:mod:`reasonrl.logprobs`). Statistics are means over completion
tokens: loss, entropy, KL and logprob gaps from the first update (the sampled
batch under the policy that sampled it), the clip fraction over all updates.

It does not sample, score or log.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from reasonrl import grpo, lora
from reasonrl.checkpoint import pause_point
from reasonrl.data import SharedPacked, pack, pack_shared
from reasonrl.logprobs import batch_logprobs, prompt_sharing_supported
from reasonrl.objective import Counts, ObjectiveOutputs, policy_objective
from reasonrl.rollout import TRUNCATED
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
        from reasonrl.config import micro_batching

        ro = cfg.rollout
        return cls(
            alg=cfg.algorithm,
            pad_id=pad_id,
            temperature=ro.temperature if ro.temperature > 0 else 1.0,
            **micro_batching(ro),  # the knobs SFT reads too (reasonrl.config.MicroBatchConfig)
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


@dataclass(frozen=True)
class UpdateStats:
    """What one update of the policy measured (global: every rank's tokens and sequences)."""

    loss: float  # the first update's loss: the aggregated objective, as minimised (unitless)
    kl: float  # mean per-token KL (nats): to the reference with one, else k3 from the sampler to the policy
    entropy: float  # mean per-token entropy of the policy on the sampled batch, nats
    clip_frac: float  # fraction of completion tokens the loss clipped, over all updates
    grad_norm: float  # the last update's gradient norm before clipping
    logprob_diff_mean: float  # mean |trainer - sampler| logprob per completion token, nats
    logprob_diff_max: float  # the largest of those gaps, nats
    tis_weight_mean: float | None  # mean truncated-IS weight over the tokens that took one; None: none did
    tis_capped_frac: float | None  # fraction of those tokens whose weight hit the cap; None: none took one
    masked_frac: float  # fraction of sequences left out of the loss (masked verdicts, truncation)
    completion_tokens: float  # completion tokens in the batch (the means' denominator), tokens
    micro_batches: int  # forward/backward passes per update on every rank
    staleness_mean: float  # mean over rollouts of (trained version - sampling version), in versions
    staleness_max: int  # the oldest rollout's staleness, in versions
    # pi_theta / pi_sampler over the tokens of stale rollouts at the first update (the off-policy ratio the
    # loss clips); None when no rollout is stale
    stale_ratio_mean: float | None = None
    stale_ratio_min: float | None = None
    stale_ratio_max: float | None = None


@dataclass
class _Plan:
    """The batch cut into micro-batches and packed, with everything each pass needs."""

    micro: list[list[int]]  # rollout indices of each micro-batch
    batches: list  # Packed or SharedPacked per micro-batch, on the device
    loss_masks: list[torch.Tensor]  # (n, T_k) each: completion tokens of the rows in the loss
    advs: list[torch.Tensor]  # (n,) or (n, T_k) each
    to_behaviour: list[torch.Tensor]  # (n,) bool each: rows whose ratio is to the sampler's logprobs
    stale: list[torch.Tensor]  # (n,) bool each: rows sampled by an older policy version than the trained one
    passes: list[int]  # micro-batch of each pass (a rank with fewer repeats its last one, with zero weight)
    counts: Counts  # the global normalisers
    masked_frac: float
    staleness: tuple[float, int]  # (mean, max) over every rank's rollouts


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
    policy_version: int = 0,
    runtime: Runtime | None = None,
) -> UpdateStats:
    """Steps 5-8 on one sampled batch, in place on ``model`` and ``opt`` (plan, then per update and micro-batch
    forward -> objective -> backward, then the optimizer step). rollouts: N = B*G, prompt-major; rewards: (N,);
    masked: N flags (out of the loss, the counts and their group's baseline); ``policy_version``: the version being
    trained (older rollouts take their ratio against the sampler's logprobs). The loss uses the batch's global
    counts, so the update does not depend on its split. Returns the step's statistics (see :class:`UpdateStats`).
    """
    alg, runtime = settings.alg, runtime or Runtime()
    device = next(model.parameters()).device
    plan = _plan(model, ref_model, rollouts, rewards, masked, group_size, settings, policy_version, runtime, device)
    ref_logps = _reference_logprobs(ref_model, plan, settings, device, base_of=model)
    model.train()
    tally = _Tally(alg.tis_cap)
    for update in range(alg.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        for j, k in enumerate(plan.passes):
            b, weight = plan.batches[k], float(j < len(plan.micro))
            with autocast(device, settings.compute_dtype):
                logp, ent = batch_logprobs(model, b, settings.temperature, want_entropy=alg.entropy_coef > 0 or update == 0)
            out = policy_objective(
                alg,
                logp,
                b.sampler_logprobs,
                plan.advs[k],
                plan.loss_masks[k] * weight,
                plan.to_behaviour[k],
                plan.counts,
                use_tis=settings.use_tis,
                entropy=ent,
                ref_logp=None if ref_logps is None else ref_logps[j],
            )
            out.loss.backward()
            tally.add(out, b, logp, ent, weight, first=update == 0, stale=plan.stale[k])
        grad_norm = _clip_grad_norm(model, settings.grad_clip)  # of the whole model, the same on every rank
        if update == 0:
            tally.reduce(runtime)  # every rank's share
        if not math.isfinite(tally.sums["loss"]) or not math.isfinite(grad_norm):  # global numbers: every rank stops
            raise FloatingPointError(
                f"non-finite loss {tally.sums['loss']} or grad norm {grad_norm} at step {step}"
                + (f" (seen by all {runtime.world_size} processes)" if runtime.distributed else "")
            )
        pause_point(step, "optimizer")  # fault injection for the resume tests (a no-op otherwise)
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)  # gradients are freed before the generator wakes up
    return tally.stats(plan, grad_norm, ref_model is not None, alg.updates_per_batch, runtime)


def _advantages(alg, rollouts, rewards, masked, group_size: int, runtime: Runtime) -> torch.Tensor:
    """This rank's (N,) or (N, T) advantages, estimated on the whole batch (every rank's groups, rank-major):
    batch-level statistics such as adv_scale=batch are then those of the global batch."""
    valid = torch.tensor([not m for m in masked])
    everyone = grpo.estimate_advantages(alg.advantage, runtime.cat(rewards.float()), group_size, runtime.cat(valid), alg)
    adv = everyone[runtime.rank * len(rollouts) : (runtime.rank + 1) * len(rollouts)]
    if adv.dim() == 2:
        longest = max((len(r.completion_ids) for r in rollouts), default=0)
        if adv.shape[1] < longest:
            raise ValueError(f"per-token advantages of width {adv.shape[1]} for completions of up to {longest} tokens")
    elif adv.dim() != 1:
        raise ValueError(f"advantages must be (N,) or (N, T), not of shape {tuple(adv.shape)}")
    return adv


def _micro_advantages(adv: torch.Tensor, idx: list[int], rollouts, batch) -> torch.Tensor:
    """(n,) for per-sequence advantages; (n, T_k) per-token ones laid out like ``batch.completion_mask``
    (completion token j of a row sits at j in a shared-prompt batch, at prompt length - 1 + j otherwise)."""
    if adv.dim() == 1:
        return adv[idx]
    out = torch.zeros_like(batch.completion_mask)
    shared = isinstance(batch, SharedPacked)
    for row, i in enumerate(idx):
        c, start = len(rollouts[i].completion_ids), 0 if shared else len(rollouts[i].prompt_ids) - 1
        out[row, start : start + c] = adv[i, :c].to(out.dtype)
    return out


def _plan(model, ref_model, rollouts, rewards, masked, group_size, settings, policy_version, runtime, device) -> _Plan:
    """Advantages, micro-batches, packing, loss masks, global counts and which rows are stale."""
    alg = settings.alg
    adv = _advantages(alg, rollouts, rewards, masked, group_size, runtime).to(device)
    keep_flags = [not (m or (alg.mask_truncated and r.finish_reason in TRUNCATED)) for m, r in zip(masked, rollouts)]
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
    n_micro = int(runtime.max(len(micro)))  # every rank runs as many passes (each one gathers and reduces shards)
    staleness = [policy_version - r.policy_version for r in rollouts]
    if any(s < 0 for s in staleness):
        raise ValueError(
            f"a rollout of policy version {policy_version - min(staleness)} is newer than the trained {policy_version}"
        )
    # several updates on one batch: the stored sampling-time logprobs are the old policy of every row
    to_behaviour = [torch.tensor([alg.updates_per_batch > 1 or staleness[i] > 0 for i in idx], device=device) for idx in micro]
    return _Plan(
        micro=micro,
        batches=batches,
        loss_masks=loss_masks,
        advs=[_micro_advantages(adv, idx, rollouts, b) for idx, b in zip(micro, batches)],
        to_behaviour=to_behaviour,
        stale=[torch.tensor([staleness[i] > 0 for i in idx], device=device) for idx in micro],
        passes=list(range(len(micro))) + [len(micro) - 1] * (n_micro - len(micro)),
        counts=Counts(tokens=total_tokens, seqs=total_seqs, max_len=settings.max_len),
        masked_frac=1.0 - total_seqs / runtime.sum(len(rollouts)),
        staleness=(runtime.sum(sum(staleness)) / max(runtime.sum(len(rollouts)), 1), int(runtime.max(max(staleness, default=0)))),
    )


def _reference_logprobs(ref_model, plan: _Plan, settings: UpdateSettings, device, base_of=None) -> list[torch.Tensor] | None:
    """The frozen reference's (n, T_k) logprobs for every pass of the plan, once per batch (not per update or
    micro-batch); per pass, so that a sharded reference gathers its shards as often on every rank. A reference
    that is the policy itself (``base_of``) is a LoRA policy's base: its adapters are switched off meanwhile."""
    if ref_model is None:
        return None
    base = lora.adapters_disabled(ref_model) if ref_model is base_of else contextlib.nullcontext()
    with torch.no_grad(), autocast(device, settings.compute_dtype), base:
        return [batch_logprobs(ref_model, plan.batches[k], settings.temperature)[0] for k in plan.passes]


class _Tally:
    """Sums of the update's statistics over passes: the first update's describe the sampled batch under the
    policy that sampled it; the clip count runs over every update."""

    def __init__(self, tis_cap: float):
        self.tis_cap = tis_cap
        keys = ("loss", "entropy", "kl", "ref_kl", "diff", "tis", "tis_tokens", "tis_capped", "ratio", "ratio_tokens")
        self.sums, self.diff_max, self.clip = dict.fromkeys(keys, 0.0), 0.0, 0.0
        self.ratio_min, self.ratio_max = math.inf, -math.inf

    def add(self, out: ObjectiveOutputs, b, logp, ent, weight: float, first: bool, stale: torch.Tensor | None = None) -> None:
        m = b.completion_mask * weight  # (n, T): every completion token, the masked rollouts' included
        self.clip += float((out.clipped.float() * m).sum())
        if not first:
            return
        s = self.sums
        with torch.no_grad():
            if out.tis_weights is not None:
                tm = m * out.tis_rows.unsqueeze(-1)
                s["tis"] += float((out.tis_weights * tm).sum())
                s["tis_tokens"] += float(tm.sum())
                s["tis_capped"] += float(((out.tis_weights >= self.tis_cap) * tm).sum())
            if out.ref_kl is not None:
                s["ref_kl"] += float((out.ref_kl * m).sum())
            if stale is not None and bool(stale.any()):  # the off-policy ratio of stale rows, token by token
                sm = (m * stale.unsqueeze(-1)) > 0
                ratio = torch.exp(logp.detach() - b.sampler_logprobs)[sm]
                if ratio.numel():
                    s["ratio"] += float(ratio.sum())
                    s["ratio_tokens"] += ratio.numel()
                    self.ratio_min = min(self.ratio_min, float(ratio.min()))
                    self.ratio_max = max(self.ratio_max, float(ratio.max()))
            diff = (logp.detach() - b.sampler_logprobs).abs() * m
            s["loss"] += out.loss.item()
            s["entropy"] += float((ent.detach() * m).sum())
            s["kl"] += float((grpo.kl_estimate(b.sampler_logprobs, logp.detach(), "k3") * m).sum())
            s["diff"] += float(diff.sum())
            self.diff_max = max(self.diff_max, float(diff.max()))

    def reduce(self, runtime: Runtime) -> None:
        self.sums = {k: runtime.sum(v) for k, v in self.sums.items()}
        self.diff_max = runtime.max(self.diff_max)
        self.ratio_min, self.ratio_max = -runtime.max(-self.ratio_min), runtime.max(self.ratio_max)

    def stats(self, plan: _Plan, grad_norm: float, has_ref: bool, updates: int, runtime: Runtime) -> UpdateStats:
        s, clip = self.sums, runtime.sum(self.clip)
        n_comp = max(runtime.sum(sum(float(b.completion_mask.sum()) for b in plan.batches)), 1.0)
        tis, stale = s["tis_tokens"] > 0, s["ratio_tokens"] > 0
        return UpdateStats(
            loss=s["loss"],
            kl=(s["ref_kl"] if has_ref else s["kl"]) / n_comp,
            entropy=s["entropy"] / n_comp,
            clip_frac=clip / (n_comp * updates),
            grad_norm=grad_norm,
            logprob_diff_mean=s["diff"] / n_comp,
            logprob_diff_max=self.diff_max,
            tis_weight_mean=s["tis"] / s["tis_tokens"] if tis else None,
            tis_capped_frac=s["tis_capped"] / s["tis_tokens"] if tis else None,
            masked_frac=plan.masked_frac,
            completion_tokens=n_comp,
            micro_batches=len(plan.passes),
            staleness_mean=plan.staleness[0],
            staleness_max=plan.staleness[1],
            stale_ratio_mean=s["ratio"] / s["ratio_tokens"] if stale else None,
            stale_ratio_min=self.ratio_min if stale else None,
            stale_ratio_max=self.ratio_max if stale else None,
        )


def _clip_grad_norm(model, max_norm: float) -> float:
    """Clip the gradients to ``max_norm`` in total; the norm before clipping (over all shards when sharded)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
