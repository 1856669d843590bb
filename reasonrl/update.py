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

import math
from dataclasses import dataclass
from typing import Any

import torch

from reasonrl import grpo
from reasonrl.data import pack
from reasonrl.runtime import Runtime


@dataclass(frozen=True)
class UpdateSettings:
    """How a step updates the policy: the algorithm config node and the few numbers around it."""

    alg: Any  # the algorithm config (reasonrl.config.AlgorithmConfig)
    pad_id: int
    temperature: float = 1.0  # the sampling temperature (logprobs are taken under it)
    micro_batch_size: int = 256
    max_len: int = 64  # the generation limit (Dr. GRPO's normaliser)
    grad_clip: float = 1.0
    use_tis: bool = False  # truncated importance sampling toward the sampler's logprobs

    @classmethod
    def from_config(cls, cfg, pad_id: int, use_tis: bool) -> "UpdateSettings":
        ro = cfg.rollout
        return cls(
            alg=cfg.algorithm,
            pad_id=pad_id,
            temperature=ro.temperature if ro.temperature > 0 else 1.0,
            micro_batch_size=ro.micro_batch_size,
            max_len=ro.max_new_tokens,
            grad_clip=cfg.optim.grad_clip,
            use_tis=use_tis,
        )


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
    which leave the loss, the token and sequence counts, and their group's baseline. The loss is
    normalised by the batch's global token and sequence counts (summed over ranks by ``runtime``),
    so the update does not depend on how the batch is split. Returns the
    step's training statistics (means over completion tokens; loss, entropy, KL and logprob gaps from
    the first update, the sampled batch under the policy that sampled it; clip fraction over all updates).
    """
    alg, pad_id, use_tis, temperature = settings.alg, settings.pad_id, settings.use_tis, settings.temperature
    micro_batch_size, max_len, grad_clip = settings.micro_batch_size, settings.max_len, settings.grad_clip
    runtime = runtime or Runtime()
    device = next(model.parameters()).device
    keep_flags = [not (m or (alg.mask_truncated and r.finish_reason == "length")) for m, r in zip(masked, rollouts)]
    valid = torch.tensor([not m for m in masked])
    adv = grpo.estimate_advantages(alg.advantage, rewards, group_size, valid, alg).to(device)  # (N,)
    surrogate = grpo.get_policy_loss(alg.policy_loss)
    batch = pack(rollouts, pad_id).to(device)
    keep = torch.tensor(keep_flags, dtype=torch.float32, device=device).unsqueeze(1)  # (N, 1)
    loss_mask = batch.completion_mask * keep  # (N, L-1)
    total_tokens = int(runtime.sum(loss_mask.sum().item()))  # global counts: the same update at any world size
    total_seqs = int(runtime.sum(keep.sum().item()))

    model.train()
    sums = dict.fromkeys(("loss", "entropy", "clip", "kl", "ref_kl", "diff", "tis", "tis_capped"), 0.0)
    diff_max = 0.0
    mb = micro_batch_size
    for update in range(alg.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        for s in range(0, len(rollouts), mb):
            sl = slice(s, s + mb)
            m = batch.completion_mask[sl]
            logits = model(input_ids=batch.input_ids[sl], attention_mask=batch.attention_mask[sl]).logits[:, :-1]
            logits = logits / temperature  # (n, L-1, V)
            logp = grpo.token_logprobs(logits, batch.input_ids[sl, 1:])  # (n, L-1)
            # one update: the policy that sampled is this one; several: the stored sampling-time logprobs
            old_logp = logp.detach() if alg.updates_per_batch == 1 else batch.sampler_logprobs[sl]
            per_tok, clipped = surrogate(logp, old_logp, adv[sl], alg)
            if use_tis and alg.updates_per_batch == 1:
                w = grpo.truncated_is_weights(old_logp, batch.sampler_logprobs[sl], alg.tis_cap)  # (n, L-1)
                per_tok = per_tok * w
                sums["tis"] += float((w * m).sum())
                sums["tis_capped"] += float(((w >= alg.tis_cap) * m).sum())
            if ref_model is not None:
                with torch.no_grad():
                    ref_logits = ref_model(input_ids=batch.input_ids[sl], attention_mask=batch.attention_mask[sl]).logits
                    ref_logp = grpo.token_logprobs(ref_logits[:, :-1] / temperature, batch.input_ids[sl, 1:])
                ref_kl = grpo.kl_estimate(logp, ref_logp, alg.kl_estimator)  # (n, L-1)
                per_tok = per_tok + alg.kl_coef * ref_kl
                if update == 0:
                    sums["ref_kl"] += float((ref_kl.detach() * m).sum())
            ent = grpo.entropy_from_logits(logits) if alg.entropy_coef > 0 else None
            if ent is not None:
                per_tok = per_tok - alg.entropy_coef * ent
            loss = grpo.aggregate(
                alg.loss_agg, per_tok, loss_mask[sl], total_tokens=total_tokens, total_seqs=total_seqs, max_len=max_len
            )
            loss.backward()
            sums["clip"] += float((clipped.float() * m).sum())
            if update == 0:  # statistics of the sampled batch under the policy that sampled it
                with torch.no_grad():
                    ent = grpo.entropy_from_logits(logits) if ent is None else ent.detach()
                    diff = (logp.detach() - batch.sampler_logprobs[sl]).abs() * m
                    sums["loss"] += loss.item()
                    sums["entropy"] += float((ent * m).sum())
                    sums["kl"] += float((grpo.kl_estimate(batch.sampler_logprobs[sl], logp.detach(), "k3") * m).sum())
                    sums["diff"] += float(diff.sum())
                    diff_max = max(diff_max, float(diff.max()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        if not math.isfinite(sums["loss"]) or not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite loss {sums['loss']} or grad norm {grad_norm} at step {step}")
        opt.step()
        sched.step()
    n_comp = max(float(batch.completion_mask.sum()), 1.0)
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
        "completion_tokens": float(batch.completion_mask.sum()),
    }
