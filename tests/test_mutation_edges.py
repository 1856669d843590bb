"""Edge cases found by mutation testing (``make mutate``): each test names the mutants it kills.

Every test here failed a mutant that survived the rest of the suite and that a test should
catch (masked advantages in the "batch" scaling, validation boundaries, the ``strict`` zips
of scoring, log lines that name the culprit, micro-batch budgets, autocast, the math
verifier's cleaning of numbers). Values are worked out by hand in the comments, in the style
of tests/test_grpo.py. Survivors left on purpose are equivalent mutants or error-message
texts (the closing notes of the mutation runs list them).
"""

from __future__ import annotations

import logging

import oracle
import pytest
import torch
from test_learning import REWARDS as REWARDS_TINY  # B = 3 prompts x G = 4, prompt-major
from test_learning import G as G_TINY
from test_learning import tiny_model as _tiny_model  # the same 1-layer Llama the learning tests update

from reasonrl import grpo

# ---------------------------------------------------------------- reasonrl.grpo


def test_eps_keeps_advantages_finite_and_signed_when_the_spread_is_below_eps():
    # kills: grpo.x__scale_batch__mutmut_2, x__masked_group_advantages__mutmut_40, _52 (std - eps)
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
    # kills: x__masked_group_advantages__mutmut_21 (mean over n.clamp(min=2)) and _38 (std over (n-1).clamp(min=2))
    # group A = [1, 0, x, x] (2 valid): mean .5, centred +-.5, unbiased std sqrt(.5 / 1) = .707107 -> +-.707107
    # group B = [4, x, x, x] (1 valid): mean 4, centred 0 -> 0 (no baseline, no signal)
    r = torch.tensor([1.0, 0.0, 7.0, 7.0, 4.0, 9.0, 9.0, 9.0])
    valid = torch.tensor([True, True, False, False, True, False, False, False])
    adv = grpo.group_advantages(r, 4, "group", valid=valid)
    assert adv.tolist() == pytest.approx([0.707107, -0.707107, 0, 0, 0, 0, 0, 0], abs=1e-5)
    assert grpo.group_advantages(r, 4, "none", valid=valid).tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0, 0, 0])


def test_masked_batch_scale_by_hand():
    # kills: x__masked_group_advantages__mutmut_41 .. _46, _51 (the whole "batch" branch under masking) and _41 for "none"
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
    # kills: x__masked_group_advantages__mutmut_47, _48, _49, _50 (the vals.numel() > 1 guard)
    # two valid (1, 0) in group 1: batch std over (1, 0) = .707107; centred +-.5 -> +-.707107
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    two = torch.tensor([True, True, False, False])
    assert grpo.group_advantages(r, 2, "batch", valid=two).tolist() == pytest.approx([0.707107, -0.707107, 0, 0], abs=1e-5)
    # one valid sample in the whole batch: no spread, std 0 (not NaN); its centred reward is 0 -> all 0
    one = torch.tensor([True, False, False, False])
    adv = grpo.group_advantages(r, 2, "batch", valid=one)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_overlong_penalty_accepts_exactly_the_buffers_in_0_max_len():
    # kills: x_overlong_penalty__mutmut_1 (or -> and), _2 (<= 0 -> < 0), _3 (<= 1), _4 (> -> >=); also _5 (message)
    with pytest.raises(ValueError, match="overlong buffer"):
        grpo.overlong_penalty(torch.tensor([5]), max_len=10, buffer=0)
    with pytest.raises(ValueError, match="overlong buffer"):
        grpo.overlong_penalty(torch.tensor([5]), max_len=10, buffer=11)
    # buffer 1: 0 up to 9, -1 at 10; buffer == max_len 4: linear from length 0: (0 - L) / 4
    assert grpo.overlong_penalty(torch.tensor([9, 10]), max_len=10, buffer=1).tolist() == [0.0, -1.0]
    assert grpo.overlong_penalty(torch.tensor([0, 1, 4]), max_len=4, buffer=4).tolist() == [0.0, -0.25, -1.0]


def test_token_logprobs_and_entropy_normalise_over_the_vocabulary_axis():
    # the test oracle (tests/oracle.py) normalises over V (dim -1, not +1 / -2): tests/test_grpo.py's logits are
    # (1, 2, 2) with values for which the T axis gives the same numbers;
    # here N, T, V all differ and the reference is torch's own log_softmax / Categorical entropy.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    want_logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(oracle.token_logprobs(logits, targets), want_logp, atol=1e-6)
    want_ent = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(oracle.entropy_from_logits(logits), want_ent, atol=1e-6)


def test_dual_clip_threshold_and_scale():
    # kills: x_clipped_surrogate__mutmut_30 (c = 1 accepted), _31 (c in (1, 2] refused),
    #        _34 (floor c / A: equal to c * A only for |A| = 1), _38 (a < 1: small positive advantages floored)
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), 0.2, 0.2, dual_clip=1.0)
    # ratio 5, A = -2, c = 2: min(-10, -2.4) = -10; floor c*A = -4 -> loss 4, clipped
    # ratio 1, A = +.5, c = 2: min(.5, .5) = .5 (dual clip acts only on A < 0) -> loss -.5, not clipped
    logp = torch.log(torch.tensor([[5.0], [1.0]]))
    loss, clipped = grpo.clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([-2.0, 0.5]), 0.2, 0.2, dual_clip=2.0)
    assert loss.squeeze(1).tolist() == pytest.approx([4.0, -0.5])
    assert clipped.squeeze(1).tolist() == [True, False]


def test_aggregations_of_a_single_token_and_a_single_sequence():
    # kills: x__token_mean__mutmut_7, x__seq_mean_token_mean__mutmut_15, x__seq_mean_token_sum_norm__mutmut_8
    # (max(count, 1) -> max(count, 2)): one sequence with one real token, loss 3
    loss, mask = torch.tensor([[3.0, 7.0]]), torch.tensor([[1.0, 0.0]])
    kw = dict(total_tokens=1, total_seqs=1, max_len=4)
    assert grpo.aggregate("token_mean", loss, mask, **kw).item() == pytest.approx(3.0)  # 3 / 1
    assert grpo.aggregate("seq_mean_token_mean", loss, mask, **kw).item() == pytest.approx(3.0)  # (3 / 1) / 1
    assert grpo.aggregate("seq_mean_token_sum_norm", loss, mask, **kw).item() == pytest.approx(0.75)  # 3 / (1 * 4)


def test_unknown_kl_estimator_names_itself():
    # kills: x_kl_estimate__mutmut_4 (message None) and _5 (sorted(None): TypeError instead of ValueError);
    # the same contract as test_unknown_variant_names_itself for scales and aggregations
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'.*k3"):
        grpo.kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- reasonrl.verifiers.scoring


class _Fixed:
    """A verifier that returns a fixed verdict (or None: not applicable) for every completion."""

    def __init__(self, name, verdict):
        self.name, self.verdict = name, verdict

    def __call__(self, problem, completion):
        return self.verdict


def test_score_refuses_problems_and_completions_of_different_lengths():
    # kills: scoring.x_score__mutmut_16, _19, _20 (zip(..., strict=True) weakened: a missing completion
    # would silently drop a problem and misalign rewards with the batch)
    from reasonrl.verifiers.base import Verdict
    from reasonrl.verifiers.scoring import score

    vs = {"v": (_Fixed("v", Verdict(1.0, "correct", {})), 1.0)}
    with pytest.raises(ValueError):
        score([{"answer": "1"}, {"answer": "2"}], ["only one"], vs)


def test_summarize_edge_cases():
    # kills: x_summarize__mutmut_4 (n == 1 treated as empty), _33 (continue -> break past a verifier with no
    # verdicts), _57 (counts / 0 when no verdict at all), _59 (0.0 -> 1.0 there), _63 (masked_frac * n)
    from reasonrl.verifiers.base import STATUSES, Verdict
    from reasonrl.verifiers.scoring import Scored, summarize

    assert summarize(Scored([], [], []), ["a"]) == {}
    one = summarize(Scored([1.0], [{"a": Verdict(1.0, "correct", {})}], [False]), ["a"])
    assert one["reward/mean"] == 1.0 and one["reward/a/mean"] == 1.0 and one["verify/correct_frac"] == 1.0
    # "na" is not applicable to any rollout (None); "b" still gets its metrics after it
    ok, bad = Verdict(1.0, "correct", {}), Verdict(0.0, "error", {})
    rows = [{"na": None, "b": ok}, {"na": None, "b": bad}]
    m = summarize(Scored([1.0, 0.0], rows, [False, True]), ["na", "b"])
    assert "reward/na/mean" not in m and m["reward/b/mean"] == 0.5
    assert m["verify/correct_frac"] == 0.5 and m["verify/error_frac"] == 0.5
    assert m["verify/masked_frac"] == 0.5  # 1 of 2 rollouts masked
    # no verdict at all: every status fraction is 0, not a division by zero
    none = summarize(Scored([0.0, 0.0], [{"na": None}, {"na": None}], [False, False]), ["na"])
    assert all(none[f"verify/{s}_frac"] == 0.0 for s in STATUSES) and none["verify/masked_frac"] == 0.0


def test_check_golds_reports_reason_row_and_count_and_checks_every_verifier(caplog):
    # kills: scoring.x_check_golds__mutmut_13 (continue -> break after a verifier without check_gold),
    # _22 (reason dropped from the row line), _23 (row dropped), _32 (summary logged with nothing skipped),
    # _36 (source dropped from the summary), _43 (skipped count len + len); the exact summary also kills _41
    from reasonrl.verifiers.base import Verdict
    from reasonrl.verifiers.integer import IntegerVerifier
    from reasonrl.verifiers.scoring import check_golds

    no_check = _Fixed("fmt", Verdict(1.0, "correct", {}))  # has no check_gold: skipped, the next one still runs
    vs = {"fmt": (no_check, 0.1), "integer": (IntegerVerifier(), 1.0)}
    rows = [{"answer": "3"}, {"answer": "three"}, {"answer": "5"}]
    with caplog.at_level(logging.ERROR):
        kept = check_golds(rows, vs, "demo.jsonl")
    assert kept == [rows[0], rows[2]]
    row_line, summary = [r.getMessage() for r in caplog.records]
    assert "demo.jsonl row 1" in row_line and "(integer: " in row_line and "{'answer': 'three'}" in row_line
    assert summary == "data errors: 1 of 3 problems in demo.jsonl skipped"
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert check_golds([rows[0]], vs, "clean.jsonl") == [rows[0]]
    assert caplog.records == []  # clean data: no error lines


# ---------------------------------------------------------------- reasonrl.update


def _rollouts(finish=lambda k: "stop"):
    from reasonrl.rollout import Rollout

    return [
        Rollout(
            prompt_index=k // G_TINY, prompt_ids=[1, 2 + k // G_TINY], completion_ids=[10 + k], text="", finish_reason=finish(k)
        )
        for k in range(12)
    ]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from reasonrl.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="train", overrides=overrides)


def test_update_settings_from_config_carries_every_field():
    # kills: update.xǁUpdateSettingsǁfrom_config__mutmut_19 (compute_dtype dropped: bfloat16 autocast silently off)
    from reasonrl.update import UpdateSettings

    cfg = _compose(
        [
            "rollout.temperature=0.7",
            "rollout.micro_batch_size=8",
            "rollout.max_tokens_per_micro_batch=512",
            "rollout.max_new_tokens=33",
            "optim.grad_clip=0.5",
        ]
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
    assert UpdateSettings.from_config(_compose(["rollout.temperature=0"]), 0, False).temperature == 1.0  # greedy -> 1


def test_mask_truncated_leaves_only_the_truncated_completions_out():
    # kills: update.x_update_policy__mutmut_11 (finish_reason == "length" -> != : would mask every completion
    # that stopped and train on the truncated ones)
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(mask_truncated=True), pad_id=0, micro_batch_size=5, max_len=4, grad_clip=1e9)
    ros = _rollouts(finish=lambda k: "length" if k in (0, 5) else "stop")
    stats = update_policy(model, opt, sched, ros, REWARDS_TINY, [False] * 12, G_TINY, settings, step=1)
    assert stats.masked_frac == pytest.approx(2 / 12)  # 2 truncated of 12; the other 10 train


def test_plan_micro_batches_budget_edges():
    # kills: update.x_plan_micro_batches__mutmut_21 (max_tokens 0 no longer "no budget": every sequence alone),
    # _24 (len - 1), _25 (len + 2), _27 (a micro-batch exactly at the budget refused).
    # All four are also killed by tests/test_memory_path.py::test_micro_batches_by_token_budget, which is not
    # in [tool.mutmut]'s test selection.
    from reasonrl.update import plan_micro_batches

    assert plan_micro_batches([3, 3, 3, 3], max_seqs=3) == [[0, 1, 2], [3]]  # max_tokens 0: only the sequence cap
    assert plan_micro_batches([5, 5, 5, 5], max_seqs=8, max_tokens=10) == [[0, 1], [2, 3]]  # 2 x 5 = 10 fits exactly
    assert plan_micro_batches([5, 5, 5, 5], max_seqs=8, max_tokens=9) == [[0], [1], [2], [3]]


def test_autocast_is_bfloat16_compute_or_nothing():
    # kills: update.x_autocast__mutmut_1 (dtype == float32 -> !=: bfloat16 runs silently in float32, and float32
    # gets an autocast context)
    from reasonrl.update import autocast

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    ctx = autocast(torch.device("cpu"), torch.float32)
    assert not isinstance(ctx, torch.autocast)
    with ctx:
        assert (a @ b).dtype == torch.float32


def test_update_frees_the_gradients():
    # kills: update.x_update_policy__mutmut_284 (final zero_grad(set_to_none=False): the gradients' memory stays
    # allocated while the generator wakes up, which the memory-lean path (issue 19) relies on)
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(), pad_id=0, micro_batch_size=5, max_len=4)
    update_policy(model, opt, sched, _rollouts(), REWARDS_TINY, [False] * 12, G_TINY, settings, step=1)
    assert all(p.grad is None for p in model.parameters())


def test_update_reports_its_micro_batches():
    # kills: update.x_update_policy__mutmut_345 (the "micro_batches" statistic renamed); also killed by
    # tests/test_memory_path.py::test_the_reference_model_runs_once_per_batch_and_token_budgets_change_nothing,
    # outside [tool.mutmut]'s test selection
    from reasonrl.config import AlgorithmConfig
    from reasonrl.update import UpdateSettings, update_policy

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = UpdateSettings(alg=AlgorithmConfig(), pad_id=0, micro_batch_size=5, max_len=4)
    stats = update_policy(model, opt, sched, _rollouts(), REWARDS_TINY, [False] * 12, G_TINY, settings, step=1)
    assert stats.micro_batches == 3  # 12 sequences, at most 5 per micro-batch


# ---------------------------------------------------------------- reasonrl.verifiers.math (sampled survivors)


def test_math_latex_thin_space_and_left_right_are_cleaned():
    # kills: verifiers.math.x__clean__mutmut_36 ("\ " replaced by "XX XX": "1\ 000" no longer 1000) and
    # _58 ("\left" replaced by "XXXX": a choice letter in \left( \right) no longer matches)
    from reasonrl.verifiers.math import MathVerifier

    v = MathVerifier()
    assert v({"answer": "1000"}, "\\boxed{1\\ 000}").status == "correct"
    assert v({"answer": "(A)"}, "\\boxed{\\left(A\\right)}").status == "correct"


def test_math_verify_logging_is_silenced_without_touching_the_root_logger(monkeypatch):
    # kills: verifiers.math.x__extraction_config__mutmut_11 (getLogger(None): the ROOT logger is set to ERROR,
    # silencing every INFO/WARNING of the trainer, and math_verify's own loggers are left as they were)
    from reasonrl.verifiers import math as vmath

    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.setattr(vmath, "_CONFIG", [])  # the settings are built once per process: rebuild them here
    vmath._extraction_config()
    assert root.level == logging.WARNING
    assert logging.getLogger("math_verify.grader").level == logging.ERROR


def test_math_space_grouped_thousands_and_too_complex_scores_zero():
    # kills: verifiers.math.x__as_number__mutmut_26 (spaces kept in the numeric path: "1 000" is wrong) and
    # xǁMathVerifierǁ__call____mutmut_36 (a too-complex answer is "wrong" with score 1.0: full reward)
    from reasonrl.verifiers.math import MathVerifier

    v = MathVerifier()
    assert v({"answer": "1000"}, "\\boxed{1 000}").status == "correct"
    tower = v({"answer": "2"}, "\\boxed{2^{100000}}")
    assert (tower.status, tower.score, tower.info.get("too_complex")) == ("wrong", 0.0, 1)


def test_math_boxed_gold_without_box_uses_the_answer_is_line_and_multi_part_verdicts_summarize():
    # kills: verifiers.math.x__gold_strings__mutmut_107 (rsplit(1): TypeError for a "boxed" gold that has only
    # "The answer is:"), xǁMathVerifierǁ__call____mutmut_80 and _90 (multi-part verdicts with info None, which
    # scoring.summarize cannot read)
    from reasonrl.verifiers.math import MathVerifier, _gold_strings
    from reasonrl.verifiers.scoring import Scored, summarize

    assert _gold_strings("We get 7 in all. The answer is: 7", "boxed") == ["7"]
    v = MathVerifier(answer_field="final_answer")
    row = {"final_answer": ["3", "4"]}
    good, bad = v(row, "\\boxed{4, 3}"), v(row, "\\boxed{3, 5}")
    assert (good.status, good.info) == ("correct", {}) and (bad.status, bad.info) == ("wrong", {})
    m = summarize(Scored([1.0, 0.0], [{"math": good}, {"math": bad}], [False, False]), ["math"])
    assert m["verify/correct_frac"] == 0.5
