"""The update (:mod:`reasonrl.update`): its settings, what it masks, how it plans micro-batches, and its statistics.

Entropy, KL to the sampler and the logprob gap are means over every completion
token of the batch the policy sampled, the masked rollouts' (timeout/error
verdicts) included: they describe the sampled batch, while the loss and its
token count cover only what trains. The settings carry every config field, a
truncated completion leaves the loss under ``mask_truncated``, micro-batches
keep to their token budget, compute runs under bfloat16 autocast or none, and
the gradients are freed when the update ends.
"""

from __future__ import annotations

import pytest
import torch
from helpers import REWARDS, G, model_of_family, one_token_rollouts, random_length_rollouts, tiny_model

from reasonrl import grpo
from reasonrl.data import pack
from reasonrl.logprobs import batch_logprobs
from reasonrl.update import UpdateSettings, update_policy

from conftest import compose


def test_entropy_kl_and_logprob_gap_are_means_over_every_completion_token():
    ros = random_length_rollouts(seed=5)
    masked = [False, True, False, False, True, False, False, False, False, False, True, False]  # 3 rollouts leave the loss
    model = model_of_family("qwen2")
    packed = pack(ros, 0)
    with torch.no_grad():
        logp, ent = batch_logprobs(model, packed, 1.0, want_entropy=True)
    m = packed.completion_mask
    n_all = m.sum()
    keep = torch.tensor([not x for x in masked], dtype=torch.float32)[:, None]
    assert (m * keep).sum() < n_all  # the masked rollouts hold completion tokens: the two counts differ
    expected = {
        "entropy": float((ent * m).sum() / n_all),
        "kl": float((grpo.kl_estimate(packed.sampler_logprobs, logp, "k3") * m).sum() / n_all),
        "logprob_diff_mean": float(((logp - packed.sampler_logprobs).abs() * m).sum() / n_all),
        "completion_tokens": float(n_all),
    }
    settings = UpdateSettings(alg=compose("train", []).algorithm, pad_id=0, micro_batch_size=5, grad_clip=1e9)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0])
    stats = update_policy(model, opt, sched, ros, rewards, masked, 4, settings)
    for key, value in expected.items():
        assert abs(getattr(stats, key) - value) < 1e-5 * max(1.0, abs(value)), (key, getattr(stats, key), value)
    assert abs(stats.masked_frac - 3 / 12) < 1e-9


def test_update_settings_from_config_carries_every_field():
    # every field reaches the settings, compute_dtype included (dropped, bfloat16 autocast would be silently off)
    from reasonrl.update import UpdateSettings

    cfg = compose(
        "train",
        [
            "rollout.temperature=0.7",
            "rollout.micro_batch_size=8",
            "rollout.max_tokens_per_micro_batch=512",
            "rollout.max_new_tokens=33",
            "optim.grad_clip=0.5",
        ],
    )
    s = UpdateSettings.from_config(cfg, pad_id=3, use_tis=True, compute_dtype=torch.bfloat16)
    assert (s.pad_id, s.temperature, s.micro_batch_size, s.max_tokens_per_micro_batch, s.max_len, s.grad_clip, s.use_tis) == (
        3,
        0.7,
        8,
        512,
        33,
        0.5,
        True,
    )
    assert s.compute_dtype == torch.bfloat16 and s.alg is cfg.algorithm
    assert UpdateSettings.from_config(compose("train", ["rollout.temperature=0"]), 0, False).temperature == 1.0  # greedy -> 1


def test_mask_truncated_leaves_only_the_truncated_completions_out():
    # finish_reason == "length" is what is masked (!= would mask every completion that stopped and train on
    # the truncated ones)
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(mask_truncated=True), pad_id=0, micro_batch_size=5, max_len=4, grad_clip=1e9)
    ros = one_token_rollouts(finish=lambda k: "length" if k in (0, 5) else "stop")
    stats = update_policy(model, opt, sched, ros, REWARDS, [False] * 12, G, settings, step=1)
    assert stats.masked_frac == pytest.approx(2 / 12)  # 2 truncated of 12; the other 10 train


def test_plan_micro_batches_budget_edges():
    # max_tokens 0 is "no budget" (not every sequence alone); a micro-batch costs its number of sequences x
    # its longest length (not len - 1 or len + 2 sequences); one exactly at the budget fits
    from reasonrl.update import plan_micro_batches

    assert plan_micro_batches([3, 3, 3, 3], max_seqs=3) == [[0, 1, 2], [3]]  # max_tokens 0: only the sequence cap
    assert plan_micro_batches([5, 5, 5, 5], max_seqs=8, max_tokens=10) == [[0, 1], [2, 3]]  # 2 x 5 = 10 fits exactly
    assert plan_micro_batches([5, 5, 5, 5], max_seqs=8, max_tokens=9) == [[0], [1], [2], [3]]


def test_autocast_is_bfloat16_compute_or_nothing():
    # float32 compute gets no autocast context and bfloat16 gets one (the check inverted, bfloat16 would run
    # silently in float32 and float32 would get an autocast context)
    from reasonrl.update import autocast

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    ctx = autocast(torch.device("cpu"), torch.float32)
    assert not isinstance(ctx, torch.autocast)
    with ctx:
        assert (a @ b).dtype == torch.float32


def test_update_frees_the_gradients():
    # the final zero_grad sets the gradients to None (zeroed in place, their memory would stay allocated while
    # the generator wakes up, which the memory-lean path relies on)
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(), pad_id=0, micro_batch_size=5, max_len=4)
    update_policy(model, opt, sched, one_token_rollouts(), REWARDS, [False] * 12, G, settings, step=1)
    assert all(p.grad is None for p in model.parameters())


def test_update_reports_its_micro_batches():
    # the statistic is reported under the name "micro_batches"
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(), pad_id=0, micro_batch_size=5, max_len=4)
    stats = update_policy(model, opt, sched, one_token_rollouts(), REWARDS, [False] * 12, G, settings, step=1)
    assert stats.micro_batches == 3  # 12 sequences, at most 5 per micro-batch
