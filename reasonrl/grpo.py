"""GRPO math: advantages, policy losses (PPO clip, GSPO, CISPO), loss aggregation, KL, truncated IS.

Pure tensor functions, no I/O. Letters: N sequences (B prompts x G samples,
prompt-major), T completion positions, V vocabulary. A variant is a small
function registered by name, never another branch in one long function:
advantage estimators (``ADVANTAGE_ESTIMATORS``: ``grpo``, ``rloo``) and policy
losses (``POLICY_LOSSES``: ``ppo_clip``, ``gspo``, ``cispo``) with one signature each, chosen by
``algorithm.advantage`` and ``algorithm.policy_loss``; and the smaller knobs
``ADVANTAGE_SCALES``, ``AGGREGATIONS``, ``KL_ESTIMATORS``. A new estimator or
loss is one decorated function (``@advantage_estimator("name")``,
``@policy_loss("name")``) and a test; the trainer does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

# ---------------------------------------------------------------- advantages


def _scale_group(centered: Tensor, r: Tensor, eps: float) -> Tensor:
    return centered / (r.std(dim=1, keepdim=True) + eps)  # (B, G); unbiased std, as DeepSeekMath/TRL


def _scale_batch(centered: Tensor, r: Tensor, eps: float) -> Tensor:
    return centered / (r.std() + eps)


def _scale_none(centered: Tensor, r: Tensor, eps: float) -> Tensor:
    return centered


ADVANTAGE_SCALES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "group": _scale_group,
    "batch": _scale_batch,
    "none": _scale_none,
}


def group_advantages(
    rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6, valid: Tensor | None = None
) -> Tensor:
    """(N,) rewards -> (N,) advantages: reward minus its group's mean, then scaled by name.

    ``valid`` (N,) bool, optional: samples that carry a reward (False for a ``timeout`` or
    ``error`` verdict). Invalid samples get advantage 0 and take no part in the group mean or in
    any std, as if they had not been drawn.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; known: {sorted(ADVANTAGE_SCALES)}")
    r = rewards.view(-1, group_size).float()  # (B, G)
    if valid is not None and not bool(valid.all()):
        return _masked_group_advantages(r, valid.view(-1, group_size).to(r.device), scale, eps).reshape(-1)
    centered = r - r.mean(dim=1, keepdim=True)  # (B, G)
    return ADVANTAGE_SCALES[scale](centered, r, eps).reshape(-1)  # (N,)


def _masked_group_advantages(r: Tensor, valid: Tensor, scale: str, eps: float) -> Tensor:
    """(B, G) rewards and validity -> (B, G) advantages over the valid samples only (unbiased stds)."""
    v = valid.float()
    n = v.sum(dim=1, keepdim=True)  # (B, 1)
    centered = (r - (r * v).sum(dim=1, keepdim=True) / n.clamp(min=1)) * v  # (B, G), 0 where invalid
    if scale == "group":
        std = ((centered**2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()  # (B, 1)
        return centered / (std + eps)
    if scale == "batch":
        vals = r[valid]
        std = vals.std() if vals.numel() > 1 else torch.zeros(())
        return centered / (std + eps)
    return centered


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) True where every reward in the group is the same (no learning signal)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int) -> Tensor:
    """(N,) DAPO's soft overlong penalty: 0 up to max_len - buffer, then linear down to -1 at max_len.

    A completion of length L gets ((max_len - buffer) - L) / buffer inside the buffer and -1 beyond max_len.
    """
    if buffer <= 0 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len], not {buffer}")
    start = max_len - buffer
    pen = (start - lengths.float()) / buffer  # negative inside the buffer
    return torch.where(lengths.float() <= start, torch.zeros_like(pen), pen.clamp(min=-1.0))


def keep_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) True for groups whose rewards differ (the ones dynamic sampling keeps)."""
    return ~zero_std_groups(rewards, group_size)


# ---------------------------------------------------------------- advantage estimators
# Signature: (rewards (N,), group_size, valid (N,) bool, alg) -> (N,) advantages, or (N, T) per-token
# advantages whose column t is the advantage of completion token t (T at least the longest completion;
# columns past a completion's end are ignored), where ``alg`` is the algorithm config (an estimator reads
# the knobs it needs from it) and invalid samples (timeout/error verdicts) get 0 and take no part in any
# baseline.

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {}


def advantage_estimator(name: str):
    def register(fn):
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


def estimate_advantages(name: str, rewards: Tensor, group_size: int, valid: Tensor, alg) -> Tensor:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r} (algorithm.advantage); known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](rewards, group_size, valid, alg)


@advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, valid: Tensor, alg) -> Tensor:
    """GRPO: reward minus its group's mean, scaled by ``alg.adv_scale`` (group | batch | none)."""
    return group_advantages(rewards, group_size, alg.adv_scale, valid=valid)


@advantage_estimator("rloo")
def rloo_advantages(rewards: Tensor, group_size: int, valid: Tensor, alg) -> Tensor:
    """RLOO (Ahmadian et al., 2024): reward minus the mean of the *other* valid samples of its group.

    Equals G/(G-1) times the group-centred reward; no std scaling. A group with fewer than two
    valid samples has no baseline and gets 0.
    """
    r = rewards.view(-1, group_size).float()  # (B, G)
    v = valid.view(-1, group_size).to(r.device).float()  # (B, G)
    n = v.sum(dim=1, keepdim=True)  # (B, 1)
    others = ((r * v).sum(dim=1, keepdim=True) - r * v) / (n - 1).clamp(min=1)  # (B, G)
    return ((r - others) * v * (n > 1)).reshape(-1)  # (N,)


# ---------------------------------------------------------------- policy losses
# A policy loss is one function of one :class:`LossInputs` that returns a :class:`LossOutputs`. It owns the
# ratio and its clipping and applies the importance weights it is given; the terms around it (truncated IS,
# KL, entropy) and the aggregation are composed in :func:`reasonrl.objective.policy_objective`.


@dataclass(frozen=True)
class LossInputs:
    """Everything a policy loss may read, for n sequences packed to T positions (0 outside the completions)."""

    logp: Tensor  # (n, T) log pi_theta(token): the current policy, with gradient
    behaviour_logp: Tensor  # (n, T) the sampler's logprobs (the behaviour policy), no gradient
    old_logp: Tensor  # (n, T) what the ratio is taken against, no gradient (logp.detach() on a fresh batch)
    adv: Tensor  # (n,) per sequence or (n, T) per token
    mask: Tensor  # (n, T) 1.0 where a token is in the loss
    is_weights: Tensor | None  # (n, T) detached weights to multiply the per-token objective by; None: all 1
    alg: Any  # the algorithm config node: the loss reads its own knobs (clip_eps_low, ...)

    @property
    def token_adv(self) -> Tensor:
        """(n, 1) or (n, T): the advantages broadcastable against the per-token tensors."""
        return self.adv.unsqueeze(-1) if self.adv.dim() == 1 else self.adv

    def weighted(self, per_token: Tensor) -> Tensor:
        """(n, T) ``per_token`` times the importance weights (unchanged when there are none)."""
        return per_token if self.is_weights is None else per_token * self.is_weights


@dataclass(frozen=True)
class LossOutputs:
    per_token: Tensor  # (n, T) the loss per token (the negated objective), weighted, not yet masked
    clipped: Tensor  # (n, T) bool: where the loss clipped its ratio or weight (counted as train/clip_frac)


POLICY_LOSSES: dict[str, Callable[[LossInputs], LossOutputs]] = {}


def policy_loss(name: str):
    def register(fn):
        POLICY_LOSSES[name] = fn
        return fn

    return register


def get_policy_loss(name: str) -> Callable[[LossInputs], LossOutputs]:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r} (algorithm.policy_loss); known: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


@policy_loss("ppo_clip")
def ppo_clip_loss(inp: LossInputs) -> LossOutputs:
    """The PPO clipped surrogate with clip-higher (``clip_eps_low``/``clip_eps_high``) and optional dual clip."""
    alg = inp.alg
    loss, clipped = clipped_surrogate(inp.logp, inp.old_logp, inp.adv, alg.clip_eps_low, alg.clip_eps_high, alg.dual_clip)
    return LossOutputs(inp.weighted(loss), clipped)


@policy_loss("gspo")
def gspo_loss(inp: LossInputs) -> LossOutputs:
    """GSPO (Zheng et al., 2025), in its token form: one importance ratio per sequence,
    s_i = exp(mean over the sequence's loss tokens of (logp - old_logp)), clipped to [1 - clip_eps_low,
    1 + clip_eps_high] in the PPO way. Per token the ratio is s_i,t = sg[s_i] * pi(y_t) / sg[pi(y_t)]: its value
    is s_i, its gradient s_i times that of log pi(y_t), so with per-sequence advantages and
    ``seq_mean_token_mean`` the gradient is GSPO's sequence-level one. A sequence with no loss token has s_i = 1."""
    m = inp.mask.to(inp.logp.dtype)
    log_s = ((inp.logp - inp.old_logp) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # (n,)
    ratio = torch.exp(log_s.detach().unsqueeze(-1) + inp.logp - inp.logp.detach())  # (n, T), value s_i
    alg = inp.alg
    loss, clipped = _clip_ratio(ratio, inp.token_adv, alg.clip_eps_low, alg.clip_eps_high, alg.dual_clip)
    return LossOutputs(inp.weighted(loss), clipped)


@policy_loss("cispo")
def cispo_loss(inp: LossInputs) -> LossOutputs:
    """CISPO (MiniMax-M1, 2025): REINFORCE weighted by the clipped, stop-gradient importance ratio,
    loss = -sg(clip(r, 1 - clip_eps_low, 1 + clip_eps_high)) * A * logp per token, r = pi / pi_old. No token
    loses its gradient: clipping bounds the weight, never zeroes the update; ``clipped`` marks clipped weights."""
    ratio = torch.exp(inp.logp.detach() - inp.old_logp)  # (n, T)
    low, high = 1.0 - inp.alg.clip_eps_low, 1.0 + inp.alg.clip_eps_high
    weight = ratio.clamp(min=low, max=high)
    return LossOutputs(inp.weighted(-weight * inp.token_adv * inp.logp), (ratio < low) | (ratio > high))


# ---------------------------------------------------------------- per-token terms


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> tuple[Tensor, Tensor]:
    """PPO clipped objective as a loss, per token.

    logp, old_logp: (N, T); adv: (N,) or (N, T). Returns (N, T) loss = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)
    and (N, T) bool, True where a clipped branch was taken (the gradient is zero there).
    With ``dual_clip`` = c > 1, tokens with A < 0 are also bounded below: the objective is
    max(that, c*A), so a huge ratio on a bad token cannot blow up the loss (dual-clip PPO).
    """
    a = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # (N, 1) or (N, T)
    return _clip_ratio(torch.exp(logp - old_logp), a, eps_low, eps_high, dual_clip)


def _clip_ratio(ratio: Tensor, a: Tensor, eps_low: float, eps_high: float, dual_clip: float | None) -> tuple[Tensor, Tensor]:
    """(N, T) ratios, advantages (N, 1) or (N, T) -> the clipped surrogate's (N, T) loss and clipped flags."""
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    objective = torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, not {dual_clip}")
        floor = dual_clip * a  # (N, 1) or (N, T)
        lower = (a < 0) & (objective < floor)
        objective = torch.where(lower, floor.expand_as(objective), objective)
        was_clipped = was_clipped | lower
    return -objective, was_clipped


def truncated_is_weights(trainer_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """(N, T) detached weights min(pi_trainer / pi_sampler, cap) correcting sampler/trainer mismatch.

    The sampler (e.g. vLLM) and the trainer compute slightly different
    probabilities for the same tokens; multiplying the per-token loss by this
    capped ratio keeps the update on-policy for the trainer (truncated IS).
    """
    return torch.exp(trainer_logp.detach() - sampler_logp).clamp(max=cap)


# ---------------------------------------------------------------- aggregation
# Each returns this micro-batch's share of the full-batch loss, so summing the
# micro-batch results gives the loss of the whole batch. ``total_tokens`` and
# ``total_seqs`` count the whole batch; ``max_len`` is the generation limit.


def _token_mean(loss: Tensor, mask: Tensor, total_tokens: int, total_seqs: int, max_len: int) -> Tensor:
    return (loss * mask).sum() / max(total_tokens, 1)


def _seq_mean_token_mean(loss: Tensor, mask: Tensor, total_tokens: int, total_seqs: int, max_len: int) -> Tensor:
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (n,)
    return per_seq.sum() / max(total_seqs, 1)


def _seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, total_tokens: int, total_seqs: int, max_len: int) -> Tensor:
    return (loss * mask).sum() / (max(total_seqs, 1) * max_len)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token_mean": _token_mean,  # DAPO: every token of the batch weighs the same
    "seq_mean_token_mean": _seq_mean_token_mean,  # GRPO (DeepSeekMath): each sequence weighs the same
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,  # Dr. GRPO: constant normaliser
}


def aggregate(name: str, loss: Tensor, mask: Tensor, *, total_tokens: int, total_seqs: int, max_len: int) -> Tensor:
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {name!r}; known: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[name](loss, mask.to(loss.dtype), total_tokens, total_seqs, max_len)


# ---------------------------------------------------------------- KL estimators (Schulman's k1, k2, k3)
# All estimate KL(pi || ref) from samples of pi, per token: d = ref_logp - logp.


def _k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """(N, T) per-token KL estimate of the sampling policy against ``ref``."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)
