"""The training objective of one micro-batch: the policy loss and every term around it, aggregated.

:func:`policy_objective` is the one place where the per-token policy loss
(:data:`reasonrl.grpo.POLICY_LOSSES`, named by ``algorithm.policy_loss``) meets
truncated importance sampling, the KL penalty to a frozen reference and the
entropy bonus, and where the result is aggregated (``algorithm.loss_agg``) with
the whole batch's token and sequence counts. It also chooses, per sequence,
what the ratio is taken against:

- a row whose ratio is to the behaviour policy (it was sampled by an older
  policy than the one being trained, or the batch is reused for several
  updates) takes the sampler's logprobs as the old policy. It gets no
  truncated-IS weight: pi_theta / pi_sampler already has the sampler in its
  denominator, so a weight min(pi_trainer / pi_sampler, cap) on top would
  correct the sampler/trainer gap twice;
- any other row is on-policy: the ratio is taken against the current logprobs
  themselves (1, with the policy gradient as its gradient), and with truncated
  IS on it is weighted by min(pi_trainer / pi_sampler, cap).

Pure tensor functions: no model, no I/O, no optimizer (:mod:`reasonrl.update` runs them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reasonrl import grpo


@dataclass(frozen=True)
class Counts:
    """The whole batch's normalisers (every rank's), so that micro-batch losses add up to the batch loss."""

    tokens: int  # loss tokens of the batch
    seqs: int  # sequences in the loss
    max_len: int  # the generation limit (Dr. GRPO's normaliser)


@dataclass(frozen=True)
class ObjectiveOutputs:
    loss: Tensor  # () this micro-batch's share of the batch loss, with gradient
    clipped: Tensor  # (n, T) bool: where the policy loss clipped
    tis_weights: Tensor | None  # (n, T) truncated-IS weights (1 on rows that take none); None when off
    tis_rows: Tensor  # (n,) bool: the rows that took a truncated-IS weight
    ref_kl: Tensor | None  # (n, T) per-token KL estimate to the reference, detached; None without one


def policy_objective(
    alg: Any,
    logp: Tensor,
    behaviour_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    to_behaviour: Tensor,
    counts: Counts,
    *,
    use_tis: bool = False,
    entropy: Tensor | None = None,
    ref_logp: Tensor | None = None,
) -> ObjectiveOutputs:
    """The aggregated loss of one micro-batch of n sequences, T positions.

    logp: (n, T) current logprobs (with gradient); behaviour_logp: (n, T) the sampler's; adv: (n,) or (n, T);
    mask: (n, T) loss mask (0 for tokens that do not train, padding and rows out of the loss);
    to_behaviour: (n,) bool, rows whose ratio is taken against the sampler's logprobs (see the module);
    entropy: (n, T) per-token entropy (needed when ``alg.entropy_coef`` > 0); ref_logp: (n, T) the frozen
    reference's logprobs for the KL term (``alg.kl_coef``), or None.

    per token: loss(LossInputs) [weighted by truncated IS] + kl_coef * KL(pi || ref) - entropy_coef * H,
    then ``alg.loss_agg`` over ``mask`` with ``counts``.
    """
    detached = logp.detach()
    if not bool(to_behaviour.any()):
        old_logp = detached  # on-policy: ratio 1
    elif bool(to_behaviour.all()):
        old_logp = behaviour_logp
    else:
        old_logp = torch.where(to_behaviour.unsqueeze(-1), behaviour_logp, detached)
    tis_rows = ~to_behaviour if use_tis else torch.zeros_like(to_behaviour)
    tis = None
    if bool(tis_rows.any()):
        tis = grpo.truncated_is_weights(old_logp, behaviour_logp, alg.tis_cap)  # (n, T)
        if not bool(tis_rows.all()):
            tis = torch.where(tis_rows.unsqueeze(-1), tis, torch.ones_like(tis))
    out = grpo.get_policy_loss(alg.policy_loss)(grpo.LossInputs(logp, behaviour_logp, old_logp, adv, mask, tis, alg))
    per_tok, ref_kl = out.per_token, None
    if ref_logp is not None:
        ref_kl = grpo.kl_estimate(logp, ref_logp, alg.kl_estimator)  # (n, T)
        per_tok = per_tok + alg.kl_coef * ref_kl
    if alg.entropy_coef > 0:
        per_tok = per_tok - alg.entropy_coef * entropy
    loss = grpo.aggregate(alg.loss_agg, per_tok, mask, total_tokens=counts.tokens, total_seqs=counts.seqs, max_len=counts.max_len)
    return ObjectiveOutputs(loss, out.clipped, tis, tis_rows, None if ref_kl is None else ref_kl.detach())
