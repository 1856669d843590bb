"""The trainer's update goes the right way: direction, masking, clip-higher, entropy, presets.

Each test drives :func:`reasonrl.train.update_policy` (steps 5-8 of the GRPO step,
exactly as ``reasonrl-train`` runs them) on a fixed batch of B = 3 prompts x G = 4
samples on a tiny model (the learning batch of ``helpers.py``). Every completion is
one token of its own, so a completion's log-probability is one number that an
update should move in the direction of its advantage.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import PAD, REWARDS, B, G, V, algorithm, flat_params, one_token_logprobs, one_token_rollouts, tiny_model

from reasonrl.config import OptimConfig
from reasonrl.grpo import group_advantages
from reasonrl.policy import make_optimizer
from reasonrl.rollout import Rollout
from reasonrl.update import UpdateSettings, update_policy

from conftest import REPO

PRESETS = ["grpo", "grpo_deepseekmath", "dr_grpo", "dapo", "gspo", "cispo"]


@torch.no_grad()
def completion_entropy(model, ros) -> float:
    ids = torch.tensor([r.prompt_ids for r in ros])
    logp = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), -1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def run_update(model, ros, rewards, alg, masked=None, lr=1e-2, sgd=False, grad_clip=1.0):
    """One call of the trainer's update; ``sgd`` makes the parameter change the gradient itself (times lr),
    and a large ``grad_clip`` keeps its scale (clipping would normalise a wrong token count away)."""
    opt, sched = make_optimizer(model, OptimConfig(lr=lr), total_steps=1)
    if sgd:  # Adam's first step is about lr * sign(gradient): it would magnify float noise in near-zero gradients
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if alg.kl_coef > 0 else None
    settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=5, max_len=4, grad_clip=grad_clip)
    return update_policy(model, opt, sched, ros, rewards, masked or [False] * len(ros), G, settings, ref_model=ref, step=1)


def test_the_rewards_tell_the_groupings_apart():
    right = group_advantages(REWARDS, G)
    wrong = group_advantages(REWARDS, B)
    assert (right.sign() != wrong.sign()).sum() >= 6  # a test with B == G could not see the difference


@pytest.mark.parametrize("preset", PRESETS)
def test_one_update_raises_positive_and_lowers_negative_completions(preset):
    model = tiny_model()
    ros = one_token_rollouts()
    before = one_token_logprobs(model, ros)
    run_update(model, ros, REWARDS, algorithm(preset))
    change = one_token_logprobs(model, ros) - before
    adv = group_advantages(REWARDS, G)
    assert (change.sign() == adv.sign()).all(), (preset, adv.tolist(), change.tolist())


def test_a_masked_sample_changes_nothing_and_is_counted():
    """A `timeout` sample: whatever its tokens, length and reward, the gradient is the one without it."""
    alg = algorithm("grpo")
    masked = [False] * (B * G)
    masked[5] = True
    results = []
    for tokens, reward in (([15], 0.0), ([33, 34], 1.0), ([7, 8, 9], 0.5)):  # other tokens, lengths and rewards
        model = tiny_model()
        rewards = REWARDS.clone()
        rewards[5] = reward
        ros = one_token_rollouts()
        ros[5].completion_ids = tokens
        stats = run_update(model, ros, rewards, alg, masked, lr=1.0, sgd=True, grad_clip=1e9)
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]), stats))
    for params, stats in results[1:]:
        assert torch.allclose(params, results[0][0], rtol=0, atol=1e-7)
        assert stats.masked_frac == pytest.approx(1 / 12)
    unmasked = tiny_model()
    run_update(unmasked, one_token_rollouts(), REWARDS, alg, lr=1.0, sgd=True, grad_clip=1e9)
    assert not torch.allclose(torch.cat([p.detach().flatten() for p in unmasked.parameters()]), results[0][0], atol=1e-6)


def test_masked_samples_leave_the_group_baseline():
    valid = torch.ones(B * G, dtype=torch.bool)
    valid[3] = False  # group 0 keeps rewards 1, 1, 1: no signal left in it
    adv = group_advantages(REWARDS, G, valid=valid)
    assert adv[:4].abs().max() == 0
    assert torch.allclose(adv[4:], group_advantages(REWARDS, G)[4:])


def test_clip_higher_changes_the_update():
    """Two updates per batch use the sampler's logprobs as the old policy; with them 0.22 below the
    current ones, every ratio is e^0.22 = 1.25: clipped at 1 + 0.2 for positive advantages, not at 1 + 0.28."""
    finals = {}
    for eps_high in (0.2, 0.28):
        model = tiny_model()
        old = one_token_logprobs(model, one_token_rollouts()) - 0.22
        run_update(
            model,
            one_token_rollouts(logprobs=old),
            REWARDS,
            algorithm("dapo", "updates_per_batch=2", f"clip_eps_high={eps_high}"),
        )
        finals[eps_high] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(finals[0.2], finals[0.28], atol=1e-6)


def test_clip_statistics_count_every_update():
    """The first of two updates sees ratios of exactly 1 (nothing clipped); the second, after a large
    step, sees ratios outside [0.8, 1.2]: the reported clip fraction must include it."""
    model = tiny_model()
    old = one_token_logprobs(model, one_token_rollouts())
    stats = run_update(model, one_token_rollouts(logprobs=old), REWARDS, algorithm("grpo", "updates_per_batch=2"), lr=0.3)
    assert stats.clip_frac > 0


def test_the_entropy_bonus_raises_entropy():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a peaked policy, far from the maximum entropy log(V)
    ros = one_token_rollouts()
    before = completion_entropy(model, ros)
    assert before < 0.8 * torch.log(torch.tensor(float(V)))
    flat = torch.ones(B * G)  # no advantage anywhere: only the bonus moves the policy
    run_update(model, ros, flat, algorithm("grpo", "entropy_coef=0.1"), lr=1e-3)
    assert completion_entropy(model, ros) > before + 1e-3


# -- presets against the README's algorithm table -----------------------------------------------------
ADVANTAGES = {"group std": {"adv_scale": "group"}, "not divided by std": {"adv_scale": "none"}}
AGGREGATION = {
    "token mean over the batch": "token_mean",
    "mean over sequences of each sequence's token mean": "seq_mean_token_mean",
    "token sum / (sequences x max length)": "seq_mean_token_sum_norm",
}


def readme_presets() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)`[^|]*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_every_preset_has_the_values_the_readme_states():
    rows = readme_presets()
    assert set(rows) == {p.stem for p in (REPO / "conf" / "algorithm").glob("*.yaml")}
    for preset, (adv, agg, clip, kl, extras) in rows.items():
        alg = algorithm(preset)
        assert alg.adv_scale == ADVANTAGES[adv]["adv_scale"], preset
        assert alg.loss_agg == AGGREGATION[agg], preset
        low, high = (float(x) for x in re.findall(r"[\d.]+", clip)[:2])
        assert (alg.clip_eps_low, alg.clip_eps_high) == (low, high), preset
        if kl == "none":
            assert alg.kl_coef == 0, preset
        else:
            estimator, coef = re.match(r"(k\d), ([\d.]+)", kl).groups()
            assert (alg.kl_estimator, alg.kl_coef) == (estimator, float(coef)), preset
        assert alg.dynamic_sampling == ("dynamic sampling" in extras), preset
        assert (alg.overlong_buffer > 0) == ("overlong penalty" in extras), preset
        named = re.search(r"policy_loss=(\w+)", extras)
        assert alg.policy_loss == (named.group(1) if named else "ppo_clip"), preset


def test_a_new_estimator_and_loss_are_one_decorated_function_each():
    """Registered from outside the trainer, chosen by name in the config, used by the unchanged update."""
    from reasonrl import grpo

    calls = []

    @grpo.advantage_estimator("test_sign")
    def sign_advantages(rewards, group_size, valid, alg):
        calls.append("advantage")
        return (rewards - 0.5).sign() * valid

    @grpo.policy_loss("test_reinforce")
    def reinforce(inp: grpo.LossInputs) -> grpo.LossOutputs:
        calls.append("loss")
        return grpo.LossOutputs(inp.weighted(-inp.logp * inp.token_adv), torch.zeros_like(inp.logp, dtype=torch.bool))

    try:
        model = tiny_model()
        before = one_token_logprobs(model, one_token_rollouts())
        run_update(model, one_token_rollouts(), REWARDS, algorithm("grpo", "advantage=test_sign", "policy_loss=test_reinforce"))
        change = one_token_logprobs(model, one_token_rollouts()) - before
        assert calls[:2] == ["advantage", "loss"]
        assert (change.sign() == (REWARDS - 0.5).sign()).all()
    finally:
        grpo.ADVANTAGE_ESTIMATORS.pop("test_sign")
        grpo.POLICY_LOSSES.pop("test_reinforce")
    with pytest.raises(ValueError, match="unknown policy loss 'test_reinforce'"):
        run_update(tiny_model(), one_token_rollouts(), REWARDS, algorithm("grpo", "policy_loss=test_reinforce"))


def test_truncated_importance_sampling_weights_the_loss_and_caps():
    """With the sampler's logprobs log(3) below the trainer's, every weight is min(3, cap 2) = 2: the
    gradient doubles (SGD, no clipping) and every token counts as capped; with equal logprobs it is 1."""
    alg = algorithm("grpo", "tis_cap=2.0")
    changes, stats = [], []
    for gap in (0.0, float(torch.log(torch.tensor(3.0)))):
        model = tiny_model()
        start = flat_params(model)
        sampler = one_token_logprobs(model, one_token_rollouts()) - gap
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=5, max_len=4, grad_clip=1e9, use_tis=True)
        stats.append(update_policy(model, opt, sched, one_token_rollouts(logprobs=sampler), REWARDS, [False] * 12, G, settings))
        changes.append(flat_params(model) - start)
    assert torch.allclose(changes[1], 2 * changes[0], atol=1e-6) and changes[0].abs().max() > 0
    assert stats[0].tis_weight_mean == pytest.approx(1.0) and stats[0].tis_capped_frac == 0.0
    assert stats[1].tis_weight_mean == pytest.approx(2.0) and stats[1].tis_capped_frac == 1.0


def test_micro_batch_size_does_not_change_the_update():
    finals = []
    for mb in (1, 5, 12):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        settings = UpdateSettings(alg=algorithm("grpo_deepseekmath"), pad_id=PAD, micro_batch_size=mb, max_len=4, grad_clip=1e9)
        update_policy(model, opt, sched, one_token_rollouts(), REWARDS, [False] * 12, G, settings, ref_model=copy.deepcopy(model))
        finals.append(flat_params(model))
    assert torch.allclose(finals[0], finals[1], atol=1e-6) and torch.allclose(finals[1], finals[2], atol=1e-6)


def test_a_non_finite_loss_stops_the_update_with_the_step():
    rewards = REWARDS.clone()
    rewards[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 1"):
        run_update(tiny_model(), one_token_rollouts(), rewards, algorithm("grpo"))


# -- per-token advantages ---------------------------------------------------------------------------------------
def _long_rollouts() -> list[Rollout]:
    """B*G rollouts whose completions have 1 to 3 tokens, so that per-token advantages have tokens to choose."""
    ros = one_token_rollouts()
    for k, r in enumerate(ros):
        r.completion_ids = [10 + k, 20 + (k % 3), 30][: 1 + k % 3]
    return ros


def _logp_gradients(advantage: str, share: bool) -> list[torch.Tensor]:
    """d loss / d logp (n, T) of every micro-batch of one update with estimator ``advantage``, read by a loss that
    wraps ppo_clip; the rows where a completion token sits are those of the micro-batch's loss mask."""
    from reasonrl import grpo

    grads = []

    @grpo.policy_loss("test_probe")
    def probe(inp: grpo.LossInputs) -> grpo.LossOutputs:
        inp.logp.register_hook(lambda g: grads.append((g * inp.mask).detach()))
        return grpo.ppo_clip_loss(inp)

    try:
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        alg = algorithm("grpo", f"advantage={advantage}", "policy_loss=test_probe")
        settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=5, max_len=4, grad_clip=1e9, share_prompt=share)
        update_policy(model, opt, sched, _long_rollouts(), REWARDS, [False] * 12, G, settings)
    finally:
        grpo.POLICY_LOSSES.pop("test_probe")
    return grads


@pytest.mark.parametrize("share", [False, True])
def test_per_token_advantages_that_broadcast_give_the_same_update_and_one_token_changes_only_itself(share):
    """An (N, T) estimator that repeats grpo's (N,) values over T (wider than any completion) gives the very same
    gradients; one that zeroes every token but each completion's first leaves exactly those tokens' gradients."""
    from reasonrl import grpo

    @grpo.advantage_estimator("test_broadcast")
    def broadcast(rewards, group_size, valid, alg):
        return grpo.grpo_advantages(rewards, group_size, valid, alg).unsqueeze(-1).expand(-1, 5)

    @grpo.advantage_estimator("test_first_token")
    def first_token(rewards, group_size, valid, alg):
        adv = broadcast(rewards, group_size, valid, alg).clone()
        adv[:, 1:] = 0.0
        return adv

    try:
        per_seq = _logp_gradients("grpo", share)
        same = _logp_gradients("test_broadcast", share)
        first = _logp_gradients("test_first_token", share)
    finally:
        grpo.ADVANTAGE_ESTIMATORS.pop("test_broadcast")
        grpo.ADVANTAGE_ESTIMATORS.pop("test_first_token")
    assert len(per_seq) == len(same) == len(first) > 1
    for g_seq, g_same, g_first in zip(per_seq, same, first):
        assert torch.equal(g_seq, g_same)
        for row in range(g_seq.shape[0]):  # the first completion token of a row is its first nonzero gradient
            cols = g_seq[row].nonzero().flatten()
            assert g_first[row, cols[0]] == g_seq[row, cols[0]] != 0  # the intended token keeps its gradient
            assert (g_first[row, cols[1:]] == 0).all()  # every other token of the row has none
        assert (g_first != 0).sum() == g_seq.shape[0]


def test_per_token_advantages_narrower_than_a_completion_are_refused():
    from reasonrl import grpo

    @grpo.advantage_estimator("test_narrow")
    def narrow(rewards, group_size, valid, alg):
        return torch.zeros(len(rewards), 2)

    try:
        with pytest.raises(ValueError, match="width 2 for completions of up to 3 tokens"):
            run_update(tiny_model(), _long_rollouts(), REWARDS, algorithm("grpo", "advantage=test_narrow"))
    finally:
        grpo.ADVANTAGE_ESTIMATORS.pop("test_narrow")
