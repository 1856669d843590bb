"""GRPO math against values worked out by hand (each comment shows the arithmetic)."""

import math

import oracle
import pytest
import torch

from reasonrl import grpo


def test_group_advantages_group_scale():
    # group 1: rewards 1,0,0,0 -> mean .25, centred .75,-.25,-.25,-.25
    #   unbiased std = sqrt((.5625 + 3*.0625)/3) = sqrt(.25) = .5 -> 1.5, -.5, -.5, -.5
    # group 2: rewards 1,1,0,0 -> mean .5, centred +-.5, std = sqrt(1/3) = .57735 -> +-.866025
    adv = grpo.group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0]), 4, "group")
    expected = [1.5, -0.5, -0.5, -0.5, 0.866025, 0.866025, -0.866025, -0.866025]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)


def test_group_advantages_none_and_batch_scale():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    assert grpo.group_advantages(r, 4, "none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    # batch std: mean .375; sum sq = 3*.625^2 + 5*.375^2 = 1.875; /7 -> std .517549; .75/.517549 = 1.449138
    assert grpo.group_advantages(r, 4, "batch")[0].item() == pytest.approx(1.449138, abs=1e-5)


def test_all_equal_group_has_zero_advantage_and_is_flagged():
    r = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 1])
    adv = grpo.group_advantages(r, 4)
    assert adv[:4].abs().max().item() == 0.0
    assert grpo.zero_std_groups(r, 4).tolist() == [True, False]


def test_eps_keeps_advantages_finite_and_signed_when_the_spread_is_below_eps():
    # the scale is std + eps, in the batch scaling and on the masked path alike:
    # rewards 0, 1e-6 (G = 2): centred -+5e-7; unbiased std = 7.0711e-7 < eps = 1e-6.
    #   + eps: -5e-7 / 1.7071e-6 = -.292893; - eps would divide by -2.93e-7 and flip the sign (to +1.707).
    r = torch.tensor([0.0, 1e-6])
    want = [-0.292893, 0.292893]
    assert grpo.group_advantages(r, 2, "batch").tolist() == pytest.approx(want, abs=1e-4)
    # the masked path (one invalid sample in a second group) computes the same numbers
    r4, valid = torch.tensor([0.0, 1e-6, 0.0, 9.0]), torch.tensor([True, True, True, False])
    adv = grpo.group_advantages(r4, 2, "group", valid=valid)
    assert adv[:2].tolist() == pytest.approx(want, abs=1e-4) and adv[2:].tolist() == [0.0, 0.0]
    # batch scale over the valid samples 0, 1e-6, 0: mean 3.333e-7, std 5.7735e-7 (< eps);
    # group-centred (-5e-7, 5e-7, 0) / (5.7735e-7 + 1e-6) = -+.316987
    adv = grpo.group_advantages(r4, 2, "batch", valid=valid)
    assert adv.tolist() == pytest.approx([-0.316987, 0.316987, 0.0, 0.0], abs=1e-4)


def test_masked_group_with_one_or_two_valid_samples():
    # the masked group mean divides by the valid count clamped at 1 and the unbiased std by n - 1 clamped at 1
    # (not at 2: a group of one or two valid samples would be scaled wrong)
    # group A = [1, 0, x, x] (2 valid): mean .5, centred +-.5, unbiased std sqrt(.5 / 1) = .707107 -> +-.707107
    # group B = [4, x, x, x] (1 valid): mean 4, centred 0 -> 0 (no baseline, no signal)
    r = torch.tensor([1.0, 0.0, 7.0, 7.0, 4.0, 9.0, 9.0, 9.0])
    valid = torch.tensor([True, True, False, False, True, False, False, False])
    adv = grpo.group_advantages(r, 4, "group", valid=valid)
    assert adv.tolist() == pytest.approx([0.707107, -0.707107, 0, 0, 0, 0, 0, 0], abs=1e-5)
    assert grpo.group_advantages(r, 4, "none", valid=valid).tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0, 0, 0])


def test_masked_batch_scale_by_hand():
    # the whole "batch" branch under masking, and "none" under masking, by hand
    # groups [1, 0, x] and [1, 1, 0]; valid rewards 1, 0, 1, 1, 0: mean .6, unbiased std sqrt(1.2 / 4) = .547723
    # group-centred: [.5, -.5, 0], [1/3, 1/3, -2/3] -> / .547723
    r = torch.tensor([1.0, 0.0, 5.0, 1.0, 1.0, 0.0])
    valid = torch.tensor([True, True, False, True, True, True])
    s = 0.547723
    adv = grpo.group_advantages(r, 3, "batch", valid=valid)
    assert adv.tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.0, 1 / 3 / s, 1 / 3 / s, -2 / 3 / s], abs=1e-4)
    # "none" under masking is the plain group-centred reward
    assert grpo.group_advantages(r, 3, "none", valid=valid).tolist() == pytest.approx([0.5, -0.5, 0, 1 / 3, 1 / 3, -2 / 3])


def test_masked_batch_scale_with_one_or_two_valid_samples_in_the_batch():
    # the batch std is taken only over more than one valid sample (the vals.numel() > 1 guard)
    # two valid (1, 0) in group 1: batch std over (1, 0) = .707107; centred +-.5 -> +-.707107
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    two = torch.tensor([True, True, False, False])
    assert grpo.group_advantages(r, 2, "batch", valid=two).tolist() == pytest.approx([0.707107, -0.707107, 0, 0], abs=1e-5)
    # one valid sample in the whole batch: no spread, std 0 (not NaN); its centred reward is 0 -> all 0
    one = torch.tensor([True, False, False, False])
    adv = grpo.group_advantages(r, 2, "batch", valid=one)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_unknown_variant_names_itself():
    with pytest.raises(ValueError, match="'groupp'"):
        grpo.group_advantages(torch.zeros(4), 2, "groupp")
    with pytest.raises(ValueError, match="'tok_mean'"):
        grpo.aggregate("tok_mean", torch.zeros(1, 1), torch.ones(1, 1), total_tokens=1, total_seqs=1, max_len=1)


def test_unknown_kl_estimator_names_itself():
    # a ValueError naming the estimator and the known ones (not a bare error, not a TypeError);
    # the same contract as test_unknown_variant_names_itself for scales and aggregations
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'.*k3"):
        grpo.kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_clipped_surrogate_clip_higher():
    # ratio 1.5 (logp = ln 1.5, old = 0), eps_low .2, eps_high .28:
    #   A=+1: min(1.5, 1.28) = 1.28 -> loss -1.28, clipped
    #   A=-1: min(-1.5, -1.28) = -1.5 -> loss 1.5, not clipped
    # ratio 0.5:
    #   A=+1: min(.5, .8) = .5 -> loss -.5, not clipped
    #   A=-1: min(-.5, -.8) = -.8 -> loss .8, clipped
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = grpo.clipped_surrogate(logp, old, adv, 0.2, 0.28)
    assert loss.squeeze(1).tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8], abs=1e-6)
    assert clipped.squeeze(1).tolist() == [True, False, False, True]


def test_surrogate_gradient_on_policy_is_advantage_times_score():
    # ratio = 1 at old = logp.detach(): d loss / d logp = -A
    logp = torch.tensor([[-0.7, -1.2]], requires_grad=True)
    loss, _ = grpo.clipped_surrogate(logp, logp.detach(), torch.tensor([2.0]), 0.2, 0.2)
    loss.sum().backward()
    assert logp.grad.tolist() == [[-2.0, -2.0]]


def test_aggregations_by_hand_and_microbatch_additivity():
    # per-token loss [[1,2,3],[4,.,.]], 4 real tokens, 2 sequences, max_len 5
    loss = torch.tensor([[1.0, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    kw = dict(total_tokens=4, total_seqs=2, max_len=5)
    assert grpo.aggregate("token_mean", loss, mask, **kw).item() == pytest.approx(2.5)  # (6+4)/4
    assert grpo.aggregate("seq_mean_token_mean", loss, mask, **kw).item() == pytest.approx(3.0)  # (6/3 + 4/1)/2
    assert grpo.aggregate("seq_mean_token_sum_norm", loss, mask, **kw).item() == pytest.approx(1.0)  # 10/(2*5)
    for name in grpo.AGGREGATIONS:  # micro-batches add up to the whole-batch loss
        whole = grpo.aggregate(name, loss, mask, **kw)
        parts = sum(grpo.aggregate(name, loss[i : i + 1], mask[i : i + 1], **kw) for i in range(2))
        assert parts.item() == pytest.approx(whole.item())


def test_aggregations_of_a_single_token_and_a_single_sequence():
    # each aggregation clamps its counts at 1 (max(count, 1), not 2): one sequence with one real token, loss 3
    loss, mask = torch.tensor([[3.0, 7.0]]), torch.tensor([[1.0, 0.0]])
    kw = dict(total_tokens=1, total_seqs=1, max_len=4)
    assert grpo.aggregate("token_mean", loss, mask, **kw).item() == pytest.approx(3.0)  # 3 / 1
    assert grpo.aggregate("seq_mean_token_mean", loss, mask, **kw).item() == pytest.approx(3.0)  # (3 / 1) / 1
    assert grpo.aggregate("seq_mean_token_sum_norm", loss, mask, **kw).item() == pytest.approx(0.75)  # 3 / (1 * 4)


def test_kl_estimators():
    # logp = ln .5, ref = ln .25: k1 = ln 2 = .693147; k2 = .5 * .693147^2 = .240227;
    # k3 = exp(ln .5) - ln .5 - 1 = .5 + .693147 - 1 = .193147
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert grpo.kl_estimate(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert grpo.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert grpo.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    assert grpo.kl_estimate(logp, logp, "k3").item() == 0.0


def test_the_oracles_entropy_and_token_logprobs():
    # uniform over 2: ln 2 = .693147; probs (.25, .75): -(.25 ln .25 + .75 ln .75) = .562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    assert oracle.entropy_from_logits(logits)[0].tolist() == pytest.approx([0.693147, 0.562335], abs=1e-6)
    # log p(token 1) under (.25, .75) = ln .75 = -.287682
    assert oracle.token_logprobs(logits, torch.tensor([[1, 1]]))[0, 1].item() == pytest.approx(-0.287682, abs=1e-6)


def test_the_oracles_masked_mean_ignores_padding():
    assert oracle.masked_mean(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0])).item() == 2.0
    assert oracle.masked_mean(torch.tensor([5.0, 100.0]), torch.tensor([1, 0])).item() == 5.0  # one token: itself


def test_token_logprobs_and_entropy_normalise_over_the_vocabulary_axis():
    # the test oracle (tests/oracle.py) normalises over V (dim -1, not +1 / -2): the logits of
    # test_the_oracles_entropy_and_token_logprobs are (1, 2, 2) with values for which the T axis gives the same numbers;
    # here N, T, V all differ and the reference is torch's own log_softmax / Categorical entropy.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    want_logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(oracle.token_logprobs(logits, targets), want_logp, atol=1e-6)
    want_ent = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(oracle.entropy_from_logits(logits), want_ent, atol=1e-6)


def test_truncated_importance_weights():
    # trainer p = .5, sampler p = .25 -> ratio 2, capped at 1.5; trainer .25 vs sampler .5 -> .5 (never floored)
    trainer = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5, 0.3]]))
    w = grpo.truncated_is_weights(trainer, sampler, cap=1.5)
    assert w.tolist()[0] == pytest.approx([1.5, 0.5, 1.0])
    assert not w.requires_grad


def test_dual_clip_bounds_negative_advantages():
    # ratio 5 (logp = ln 5), A = -1, eps .2: min(-5, -1.2) = -5; dual clip c = 3 -> max(-5, -3) = -3 -> loss 3
    # ratio 5, A = +1: min(5, 1.2) = 1.2 (dual clip only acts on A < 0) -> loss -1.2
    # ratio .5, A = -1: min(-.5, -.8) = -.8 > -3 -> unchanged, loss .8
    logp = torch.log(torch.tensor([[5.0], [5.0], [0.5]]))
    loss, clipped = grpo.clipped_surrogate(logp, torch.zeros(3, 1), torch.tensor([-1.0, 1.0, -1.0]), 0.2, 0.2, dual_clip=3.0)
    assert loss.squeeze(1).tolist() == pytest.approx([3.0, -1.2, 0.8])
    assert clipped.squeeze(1).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.clipped_surrogate(logp, torch.zeros(3, 1), torch.ones(3), 0.2, 0.2, dual_clip=0.5)


def test_dual_clip_threshold_and_scale():
    # c = 1 is refused and c = 2 accepted (c must be above 1); the floor is c * A (c / A is equal only for
    # |A| = 1); small positive advantages (A < 1) are not floored
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), 0.2, 0.2, dual_clip=1.0)
    # ratio 5, A = -2, c = 2: min(-10, -2.4) = -10; floor c*A = -4 -> loss 4, clipped
    # ratio 1, A = +.5, c = 2: min(.5, .5) = .5 (dual clip acts only on A < 0) -> loss -.5, not clipped
    logp = torch.log(torch.tensor([[5.0], [1.0]]))
    loss, clipped = grpo.clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([-2.0, 0.5]), 0.2, 0.2, dual_clip=2.0)
    assert loss.squeeze(1).tolist() == pytest.approx([4.0, -0.5])
    assert clipped.squeeze(1).tolist() == [True, False]


def test_overlong_penalty():
    # max 20, buffer 4: lengths <= 16 -> 0; 17 -> (16-17)/4 = -.25; 18 -> -.5; 20 -> -1; 25 -> -1 (capped)
    pen = grpo.overlong_penalty(torch.tensor([3, 16, 17, 18, 20, 25]), max_len=20, buffer=4)
    assert pen.tolist() == pytest.approx([0, 0, -0.25, -0.5, -1.0, -1.0])


def test_overlong_penalty_accepts_exactly_the_buffers_in_0_max_len():
    # a buffer of 0 and one above max_len are each refused, with a message naming the buffer; 1 and exactly
    # max_len are accepted
    with pytest.raises(ValueError, match="overlong buffer"):
        grpo.overlong_penalty(torch.tensor([5]), max_len=10, buffer=0)
    with pytest.raises(ValueError, match="overlong buffer"):
        grpo.overlong_penalty(torch.tensor([5]), max_len=10, buffer=11)
    # buffer 1: 0 up to 9, -1 at 10; buffer == max_len 4: linear from length 0: (0 - L) / 4
    assert grpo.overlong_penalty(torch.tensor([9, 10]), max_len=10, buffer=1).tolist() == [0.0, -1.0]
    assert grpo.overlong_penalty(torch.tensor([0, 1, 4]), max_len=4, buffer=4).tolist() == [0.0, -0.25, -1.0]


def test_keep_groups_for_dynamic_sampling():
    assert grpo.keep_groups(torch.tensor([1.0, 1, 0, 1, 0, 0]), 2).tolist() == [False, True, False]


def test_rloo_advantages_by_hand():
    from reasonrl.grpo import estimate_advantages

    # group [1, 0, 0]: sample 0 minus the mean of (0, 0) = 1; sample 1 minus mean(1, 0) = -0.5
    # group [1, 1, x] with x invalid: each minus the other valid one = 0; x gets 0
    r = torch.tensor([1.0, 0, 0, 1, 1, 5])
    valid = torch.tensor([True, True, True, True, True, False])
    assert estimate_advantages("rloo", r, 3, valid, None).tolist() == [1.0, -0.5, -0.5, 0.0, 0.0, 0.0]
    # a group with one valid sample has no baseline
    assert estimate_advantages("rloo", torch.tensor([3.0, 1.0]), 2, torch.tensor([True, False]), None).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'.*rloo"):
        estimate_advantages("nope", r, 3, valid, None)


# ---------------------------------------------------------------- the loss interface, GSPO, CISPO, the objective


def _alg(**knobs):
    from reasonrl.config import AlgorithmConfig

    return AlgorithmConfig(**knobs)


def _inputs(logp, old, adv, mask=None, is_weights=None, **knobs):
    mask = torch.ones_like(logp) if mask is None else mask
    return grpo.LossInputs(logp, old, old, adv, mask, is_weights, _alg(**knobs))


def test_per_token_advantages_that_broadcast_give_the_per_sequence_loss():
    # A = (1, -1) per sequence or the same repeated over T = 2: the PPO loss is the same tensor
    logp, old = torch.log(torch.tensor([[1.5, 0.9], [1.1, 0.5]])), torch.zeros(2, 2)
    per_seq = grpo.clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), 0.2, 0.2)
    per_tok = grpo.clipped_surrogate(logp, old, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), 0.2, 0.2)
    assert torch.equal(per_seq[0], per_tok[0]) and torch.equal(per_seq[1], per_tok[1])
    # a per-token advantage changes its own token only: A[0, 1] = 3 -> ratio .9 unclipped, loss -2.7
    changed = grpo.clipped_surrogate(logp, old, torch.tensor([[1.0, 3.0], [-1.0, -1.0]]), 0.2, 0.2)[0]
    assert changed[0, 1].item() == pytest.approx(-2.7) and (changed != per_seq[0]).sum() == 1


def test_ppo_clip_applies_the_importance_weights_it_is_given():
    # ratio 1, A = 2: loss -2 per token; weights (1.5, .5) -> -3, -1
    logp = torch.tensor([[-0.7, -1.2]])
    out = grpo.get_policy_loss("ppo_clip")(_inputs(logp, logp, torch.tensor([2.0]), is_weights=torch.tensor([[1.5, 0.5]])))
    assert out.per_token.tolist()[0] == pytest.approx([-3.0, -1.0]) and not out.clipped.any()


def test_gspo_takes_one_ratio_per_sequence_over_its_loss_tokens():
    # eps .1 / .1. logp - old per token, mask, advantage:
    #   seq 0: (.1, .3, [5, masked]) -> mean .2 -> s = e^.2 = 1.221403; A = +1: min(1.2214, 1.1) = 1.1 -> loss -1.1, clipped
    #   seq 1: (-.3, 0, -.3) -> mean -.2 -> s = e^-.2 = .818731; A = -1: min(-.8187, -.9) = -.9 -> loss .9, clipped
    #   seq 2: (.05, .05, .05) -> s = e^.05 = 1.051271; A = +1: inside the range -> loss -1.051271, not clipped
    diff = torch.tensor([[0.1, 0.3, 5.0], [-0.3, 0.0, -0.3], [0.05, 0.05, 0.05]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 1, 1]])
    old = torch.full((3, 3), -2.0)
    logp = (old + diff).requires_grad_(True)
    out = grpo.get_policy_loss("gspo")(
        _inputs(logp, old, torch.tensor([1.0, -1.0, 1.0]), mask, clip_eps_low=0.1, clip_eps_high=0.1)
    )
    assert out.per_token[:, 0].tolist() == pytest.approx([-1.1, 0.9, -1.051271], abs=1e-6)
    assert out.clipped.tolist() == [[True] * 3, [True] * 3, [False] * 3]  # one decision per sequence
    # token form: the gradient of each token of an unclipped sequence is -A * s (here -1.051271), 0 where clipped
    (out.per_token * mask).sum().backward()
    assert logp.grad[2].tolist() == pytest.approx([-1.051271] * 3, abs=1e-6)
    assert logp.grad[:2].abs().max().item() == 0.0


def test_gspo_token_form_has_the_sequence_level_gradient():
    # with per-sequence advantages and seq_mean_token_mean, the token form's gradient is that of
    # -(1/N) sum_i s_i A_i, s_i = exp(mean_t (logp - old)): d/d logp_t = -A_i s_i / (N |y_i|)
    old = torch.log(torch.tensor([[0.3, 0.2, 0.5], [0.4, 0.4, 0.1]]))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv = torch.tensor([0.5, -2.0])
    logp = (old + torch.tensor([[0.01, -0.02, 0.03], [0.02, 0.0, 9.0]])).requires_grad_(True)
    out = grpo.get_policy_loss("gspo")(_inputs(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2))
    grpo.aggregate("seq_mean_token_mean", out.per_token, mask, total_tokens=5, total_seqs=2, max_len=3).backward()
    x = logp.detach().clone().requires_grad_(True)
    s = torch.exp(((x - old) * mask).sum(1) / mask.sum(1))
    (-(s * adv).sum() / 2).backward()
    assert torch.allclose(logp.grad * mask, x.grad * mask, atol=1e-7)


def test_cispo_weights_reinforce_by_the_clipped_ratio_and_keeps_every_gradient():
    # eps_low 1 (no lower bound), eps_high 1 (weights at most 2); r = pi / pi_old, loss = -sg(clip r) * A * logp:
    #   p .6 / old .4: r 1.5 -> w 1.5, A +1: -1.5 * ln .6 = -1.5 * -.510826 = .766238, d/dlogp = -1.5
    #   p .3 / old .1: r 3 -> w 2 (clipped), A -1: 2 * ln .3 = 2 * -1.203973 = -2.407946, d/dlogp = 2
    #   p .2 / old .4: r .5 -> w .5, A +2: -.5 * 2 * ln .2 = 1.609438, d/dlogp = -1
    logp = torch.log(torch.tensor([[0.6], [0.3], [0.2]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.4], [0.1], [0.4]]))
    out = grpo.get_policy_loss("cispo")(_inputs(logp, old, torch.tensor([1.0, -1.0, 2.0]), clip_eps_low=1.0, clip_eps_high=1.0))
    assert out.per_token.squeeze(1).tolist() == pytest.approx([0.766238, -2.407946, 1.609438], abs=1e-6)
    assert out.clipped.squeeze(1).tolist() == [False, True, False]
    out.per_token.sum().backward()
    assert logp.grad.squeeze(1).tolist() == pytest.approx([-1.5, 2.0, -1.0], abs=1e-6)  # a clipped token still learns
    # eps_low .2: r .5 is lifted to .8 (clipped): loss -.8 * 2 * ln .2 = 2.575101
    low = grpo.get_policy_loss("cispo")(
        _inputs(logp.detach(), old, torch.tensor([1.0, -1.0, 2.0]), clip_eps_low=0.2, clip_eps_high=1.0)
    )
    assert low.per_token[2, 0].item() == pytest.approx(2.575101, abs=1e-6) and low.clipped[2, 0]


def test_the_objective_weights_fresh_rows_and_takes_stale_ratios_to_the_sampler():
    # both rows: trainer p .5, sampler p .25, A = +1, clip .2 / .2, TIS cap 1.5, token mean over 2 tokens
    #   row 0 fresh: ratio to itself 1 -> surrogate -1; TIS weight min(.5/.25, 1.5) = 1.5 -> -1.5
    #   row 1 stale: ratio to the sampler 2 -> clipped at 1.2 -> -1.2; no TIS weight (the sampler is already
    #   the ratio's denominator): 1
    #   loss = (-1.5 - 1.2) / 2 = -1.35
    from reasonrl.objective import Counts, policy_objective

    logp = torch.log(torch.full((2, 1), 0.5)).requires_grad_(True)
    sampler = torch.log(torch.full((2, 1), 0.25))
    out = policy_objective(
        _alg(tis_cap=1.5), logp, sampler, torch.ones(2), torch.ones(2, 1), torch.tensor([False, True]),
        Counts(tokens=2, seqs=2, max_len=1), use_tis=True,
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(-1.35)
    assert out.tis_weights.squeeze(1).tolist() == [1.5, 1.0] and out.tis_rows.tolist() == [True, False]
    assert out.clipped.squeeze(1).tolist() == [False, True]
    # KL and entropy join in the same place: + .1 * k3 (ref p .25: .193147) - .01 * H (H = 2) per token
    out = policy_objective(
        _alg(kl_coef=0.1, entropy_coef=0.01), logp, sampler, torch.ones(2), torch.ones(2, 1), torch.tensor([False, False]),
        Counts(tokens=2, seqs=2, max_len=1), entropy=torch.full((2, 1), 2.0), ref_logp=sampler,
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(-1 + 0.1 * 0.193147 - 0.02, abs=1e-6)
    assert out.tis_weights is None and out.ref_kl.squeeze(1).tolist() == pytest.approx([0.193147] * 2, abs=1e-6)
