"""Which logprobs the ratio is taken against follows each rollout's policy version.

A rollout sampled by an older policy than the one being trained takes its ratio
against the sampler's logprobs (the behaviour policy), whatever
``updates_per_batch`` is; a fresh one with one update per batch keeps ratio 1
(and truncated IS). On the learning batch of :mod:`helpers` (one token per
completion, token-mean loss) the stale update's gradient is therefore the fresh
update's with each advantage A_i replaced by A_i * r_i where the clipped
surrogate does not clip, and 0 where it does: a test estimator supplies exactly
those advantages to a fresh update, and the two updates must agree.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import PAD, REWARDS, G, algorithm, flat_params, one_token_logprobs, one_token_rollouts, tiny_model

from reasonrl import grpo
from reasonrl.update import UpdateSettings, update_policy

GAP = 0.22  # sampler logprobs this far below the trainer's: ratio e^0.22 = 1.246 > 1 + 0.2


def sgd_update(ros, alg, *, version: int, use_tis: bool = False, rewards=REWARDS):
    """One update with SGD (lr 1, no clipping): the parameter change is minus the gradient. -> (change, stats)"""
    model = tiny_model()
    start = flat_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=5, max_len=4, grad_clip=1e9, use_tis=use_tis)
    stats = update_policy(model, opt, sched, ros, rewards, [False] * len(ros), G, settings, step=1, policy_version=version)
    return flat_params(model) - start, stats


def sampled(stale_rows, version: int = 1):
    """The batch with sampler logprobs GAP below the current policy's; ``stale_rows`` sampled by version - 1."""
    ros = one_token_rollouts(logprobs=one_token_logprobs(tiny_model(), one_token_rollouts()) - GAP)
    return [dataclasses.replace(r, policy_version=version - 1 if i in stale_rows else version) for i, r in enumerate(ros)]


def test_a_stale_batch_clips_and_corrects_in_the_direction_of_its_ratios():
    alg = algorithm("grpo")
    stale, stats = sgd_update(sampled(range(12)), alg, version=1)
    fresh, fresh_stats = sgd_update(sampled(()), alg, version=1)
    adv = grpo.group_advantages(REWARDS, G)
    # ratio 1.246 on every token: positive advantages are clipped at 1.2 (no gradient), negative ones weigh 1.246
    assert stats.clip_frac == pytest.approx(float((adv > 0).float().mean())) and fresh_stats.clip_frac == 0.0
    assert stats.staleness_mean == 1.0 and stats.staleness_max == 1 and fresh_stats.staleness_max == 0
    implied = torch.where(adv > 0, torch.zeros_like(adv), adv * torch.exp(torch.tensor(GAP)))
    expected, _ = _with_advantages(implied)
    assert torch.allclose(stale, expected, atol=1e-6), float((stale - expected).abs().max())
    assert not torch.allclose(stale, fresh, atol=1e-4)  # and it is not the fresh update


def test_a_mixed_batch_takes_each_rows_ratio_by_its_own_version():
    """Rows 0-5 sampled one version ago, rows 6-11 by the policy being trained."""
    alg = algorithm("grpo")
    mixed, stats = sgd_update(sampled(range(6), version=3), alg, version=3)
    adv = grpo.group_advantages(REWARDS, G)
    r = torch.exp(torch.tensor(GAP))
    stale = torch.arange(12) < 6
    implied = torch.where(stale, torch.where(adv > 0, torch.zeros_like(adv), adv * r), adv)
    expected, _ = _with_advantages(implied)
    assert torch.allclose(mixed, expected, atol=1e-5), float((mixed - expected).abs().max())
    assert stats.staleness_mean == 0.5 and stats.staleness_max == 1
    assert stats.clip_frac == pytest.approx(float(((adv > 0) & stale).float().mean()))


def test_truncated_is_weights_only_the_fresh_rows_and_is_absent_without_them():
    """A stale row's ratio has the sampler in its denominator already: TIS on changes nothing for it, and with
    no fresh row (stale, or a batch reused for two updates) no weight is logged, rather than a weight of 0."""
    alg = algorithm("grpo")
    off, _ = sgd_update(sampled(range(12)), alg, version=1)
    on, stats = sgd_update(sampled(range(12)), alg, version=1, use_tis=True)
    assert torch.equal(off, on) and stats.tis_weight_mean is None and stats.tis_capped_frac is None
    _, reused = sgd_update(sampled(()), algorithm("grpo", "updates_per_batch=2"), version=1, use_tis=True)
    assert reused.tis_weight_mean is None
    _, mixed = sgd_update(sampled(range(6)), alg, version=1, use_tis=True)
    assert mixed.tis_weight_mean == pytest.approx(float(torch.exp(torch.tensor(GAP))), rel=1e-5)  # the fresh rows'
    _, fresh = sgd_update(sampled(()), alg, version=1, use_tis=True)
    assert fresh.tis_weight_mean == pytest.approx(float(torch.exp(torch.tensor(GAP))), rel=1e-5)


def test_a_rollout_newer_than_the_policy_is_refused():
    with pytest.raises(ValueError, match="newer than the trained"):
        sgd_update(sampled((), version=2), algorithm("grpo"), version=1)


def _with_advantages(adv: torch.Tensor):
    """A fresh update of the grpo preset whose advantages are ``adv`` (N,), given by a test estimator."""

    @grpo.advantage_estimator("test_given")
    def given(rewards, group_size, valid, alg):
        return adv

    try:
        return sgd_update(sampled(()), algorithm("grpo", "advantage=test_given"), version=1)
    finally:
        grpo.ADVANTAGE_ESTIMATORS.pop("test_given")


def test_the_stale_rows_ratio_is_reported_and_is_not_one():
    """The update reports pi_theta / pi_sampler over the stale rows' tokens (the off-policy ratio asynchronous
    rollouts bring): e^GAP on every stale token here, nothing from fresh rows, and absent without stale rows."""
    alg, r = algorithm("grpo"), float(torch.exp(torch.tensor(GAP)))
    _, stale = sgd_update(sampled(range(12)), alg, version=1)
    assert stale.stale_ratio_mean == pytest.approx(r, rel=1e-5) and r > 1.2
    assert stale.stale_ratio_min == pytest.approx(r, rel=1e-5) and stale.stale_ratio_max == pytest.approx(r, rel=1e-5)
    _, mixed = sgd_update(sampled(range(6), version=3), alg, version=3)
    assert mixed.stale_ratio_mean == pytest.approx(r, rel=1e-5)
    exact = one_token_rollouts(logprobs=one_token_logprobs(tiny_model(), one_token_rollouts()))
    stale_six = sampled(range(6), version=3)
    ros = [s if i < 6 else dataclasses.replace(s, logprobs=e.logprobs) for i, (s, e) in enumerate(zip(stale_six, exact))]
    _, mixed = sgd_update(ros, alg, version=3)  # fresh rows sampled exactly (ratio 1): not averaged in
    assert mixed.stale_ratio_mean == pytest.approx(r, rel=1e-5) and mixed.stale_ratio_min == pytest.approx(r, rel=1e-5)
    _, fresh = sgd_update(sampled(()), alg, version=1)
    assert fresh.stale_ratio_mean is None and fresh.stale_ratio_min is None and fresh.stale_ratio_max is None
