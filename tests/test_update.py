"""The update's statistics: what each is a mean over.

Entropy, KL to the sampler and the logprob gap are means over every completion
token of the batch the policy sampled, the masked rollouts' (timeout/error
verdicts) included: they describe the sampled batch, while the loss and its
token count cover only what trains.
"""

from __future__ import annotations

import torch
from test_shared_prompt import model_of, rollouts

from reasonrl import grpo
from reasonrl.data import pack
from reasonrl.logprobs import batch_logprobs
from reasonrl.update import UpdateSettings, update_policy

from conftest import compose


def test_entropy_kl_and_logprob_gap_are_means_over_every_completion_token():
    ros = rollouts(seed=5)
    masked = [False, True, False, False, True, False, False, False, False, False, True, False]  # 3 rollouts leave the loss
    model = model_of("qwen2")
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
