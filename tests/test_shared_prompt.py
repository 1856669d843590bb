"""The update runs a group's prompt once, its completions on top of it, and gets what the packed pass gets.

:func:`reasonrl.data.pack_shared` keeps each distinct prompt once per
micro-batch; :func:`reasonrl.logprobs.batch_logprobs` runs those prompts, then
the completions with the prompts' keys and values in front of them. Checked
here against the packed full pass (every sequence run whole): logprobs,
entropies and gradients per model family, under gradient checkpointing, and
whole updates (KL to a reference, entropy bonus, two updates per batch); that
the prompt really runs once per group; that micro-batches are cut at the least
cost; and that a model the path does not cover takes the packed one.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import FAMILY_V, contiguous_splits, model_of_family, random_length_rollouts

from reasonrl.data import pack, pack_shared
from reasonrl.logprobs import batch_logprobs, prompt_sharing_supported
from reasonrl.update import UpdateSettings, plan_micro_batches, update_policy

from conftest import compose


def _values(lp, mask):
    return lp[mask.bool()]  # row-major over completion tokens: the same order in both layouts


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_shared_prompt_logprobs_entropies_and_gradients_equal_the_packed_pass(kind, checkpointing):
    model = model_of_family(kind).train()
    assert prompt_sharing_supported(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ros = random_length_rollouts()
    results = []
    for batch in (pack(ros, 0), pack_shared(ros, 0)):
        model.zero_grad()
        lp, ent = batch_logprobs(model, batch, temperature=0.8, want_entropy=True)
        (lp.sum() + 0.3 * ent.sum()).backward()
        results.append((_values(lp, batch.completion_mask), _values(ent, batch.completion_mask),
                        [p.grad.clone() for p in model.parameters()]))  # fmt: skip
    (lp_a, ent_a, grads_a), (lp_b, ent_b, grads_b) = results
    assert lp_a.numel() == lp_b.numel() > 40
    assert torch.allclose(lp_a, lp_b, atol=2e-5) and torch.allclose(ent_a, ent_b, atol=2e-5)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, atol=2e-5)


def embedded_shapes(model, micro_batch_size: int, max_tokens: int = 0) -> tuple[list[tuple[int, int]], dict]:
    """One shared-prompt update of ``model`` on :func:`helpers.random_length_rollouts` (lr 0): the (rows, width) of
    every batch its embedding saw, and the update's statistics."""
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    settings = UpdateSettings(alg=compose("train", []).algorithm, pad_id=0, micro_batch_size=micro_batch_size,
                              max_tokens_per_micro_batch=max_tokens, share_prompt=True)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = update_policy(model, opt, sched, random_length_rollouts(), torch.tensor([1.0, 0] * 6), [False] * 12, 4, settings)
    return seen, stats


def test_each_prompt_runs_once_per_micro_batch():
    seen, stats = embedded_shapes(model_of_family("llama"), micro_batch_size=4)
    # one micro-batch per group (4 sequences each): its prompt once, then its 4 completions
    assert stats.micro_batches == 3
    prompt_rows = [rows for rows, _ in seen[0::2]]
    assert prompt_rows == [1, 1, 1] and [rows for rows, _ in seen[1::2]] == [4, 4, 4]
    assert sorted(width for _, width in seen[0::2]) == [3, 7, 11]


def test_the_token_budget_counts_each_prompt_once_under_sharing():
    """The update plans shared micro-batches from completion lengths plus each distinct prompt once: a budget that
    holds the whole batch that way gives one pass (counting prompts inside every sequence's length too would cut
    it into several: the same values, more passes)."""
    ros = random_length_rollouts()
    clens, plens = [len(r.completion_ids) for r in ros], [len(r.prompt_ids) for r in ros]
    keys = [tuple(r.prompt_ids) for r in ros]
    budget = _shared_cost([list(range(len(ros)))], clens, plens, keys)
    whole = [a + b for a, b in zip(plens, clens)]
    assert budget < _shared_cost([list(range(len(ros)))], whole, plens, keys)  # prompts counted twice: over budget
    seen, stats = embedded_shapes(model_of_family("llama"), micro_batch_size=len(ros), max_tokens=budget)
    assert stats.micro_batches == 1 and [rows for rows, _ in seen] == [3, len(ros)]


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("grpo", ["algorithm.kl_coef=0.05"]),
        ("dapo", []),
        ("grpo_deepseekmath", ["algorithm.updates_per_batch=2", "algorithm.entropy_coef=0.01"]),
    ],
)
def test_an_update_with_shared_prompts_equals_the_packed_update(preset, overrides):
    alg = compose("train", [f"algorithm={preset}", *overrides]).algorithm
    ros, rewards = random_length_rollouts(seed=3), torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0])
    results = []
    for share in (False, True):
        model = model_of_family("qwen2")
        ref = copy.deepcopy(model).eval().requires_grad_(False) if alg.kl_coef > 0 else None
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        settings = UpdateSettings(alg=alg, pad_id=0, micro_batch_size=5, max_len=14, grad_clip=1e9, share_prompt=share)
        stats = update_policy(model, opt, sched, ros, rewards, [False] * 11 + [True], 4, settings, ref_model=ref)
        results.append((stats, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (plain, params_a), (shared, params_b) = results
    for key in ("loss", "kl", "entropy", "grad_norm", "clip_frac", "logprob_diff_mean", "completion_tokens"):
        assert getattr(shared, key) == pytest.approx(getattr(plain, key), rel=1e-4, abs=1e-6), key
    assert (params_a - params_b).abs().max() < 1e-5
    before = torch.cat([p.detach().flatten() for p in model_of_family("qwen2").parameters()])
    assert (params_a - before).abs().max() > 1e-3  # the update moved the weights: equal is not trivially equal


def _shared_cost(plan, clens, plens, keys):
    return sum(len({keys[i] for i in mb}) * max(plens[i] for i in mb) + len(mb) * max(clens[i] for i in mb) for mb in plan)


def test_shared_micro_batches_are_the_cheapest_cuts_of_either_order():
    # two groups of 4 with 50-token prompts: one micro-batch per group, each prompt once (8 sequences fit in one,
    # but mixing the groups would pad nothing and cost nothing more, so the cap decides)
    prompts = [[1] * 50] * 4 + [[2] * 50] * 4
    assert plan_micro_batches([5, 9, 7, 6, 8, 5, 5, 4], max_seqs=4, pass_cost=0, prompts=prompts) == [[1, 2, 3, 0], [4, 5, 6, 7]]
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 7)
        group_of = [rng.randrange(3) for _ in range(n)]
        plen = {0: rng.randint(1, 30), 1: rng.randint(1, 30), 2: rng.randint(1, 30)}
        prompts = [[g + 1] * plen[g] for g in group_of]
        clens = [rng.randint(0, 40) for _ in range(n)]
        plens, keys = [len(p) for p in prompts], [tuple(p) for p in prompts]
        max_seqs, max_tokens, pass_cost = rng.randint(1, 7), rng.choice([0, 60, 150]), rng.choice([0, 5, 40])
        by_length = sorted(range(n), key=lambda i: (-(plens[i] + clens[i]), i))
        top = {k: max(plens[i] + clens[i] for i in range(n) if keys[i] == k) for k in keys}
        by_group = sorted(range(n), key=lambda i: (-top[keys[i]], keys[i], -clens[i], i))
        feasible = []
        for order in (by_length, by_group):
            for plan in contiguous_splits(order):
                fits = [_shared_cost([mb], clens, plens, keys) <= max_tokens for mb in plan]
                if all(len(mb) <= max_seqs and (len(mb) == 1 or not max_tokens or f) for mb, f in zip(plan, fits)):
                    feasible.append(plan)
        got = plan_micro_batches(clens, max_seqs, max_tokens, pass_cost, prompts=prompts)
        assert sorted(i for mb in got for i in mb) == list(range(n))
        best = min(_shared_cost(p, clens, plens, keys) + pass_cost * len(p) for p in feasible)
        assert _shared_cost(got, clens, plens, keys) + pass_cost * len(got) == best


def test_a_model_the_path_does_not_cover_takes_the_packed_pass():
    sliding = model_of_family("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert not prompt_sharing_supported(sliding)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=FAMILY_V, n_embd=64, n_layer=1, n_head=1, n_positions=64))
    assert not prompt_sharing_supported(gpt2)
    seen, _ = embedded_shapes(sliding, micro_batch_size=12)
    ros = random_length_rollouts()
    assert seen == [(12, max(len(r.prompt_ids) + len(r.completion_ids) for r in ros))]  # one packed pass


def test_a_sliding_window_size_that_is_switched_off_still_shares_prompts():
    """Qwen2 configs often carry ``sliding_window: 4096`` with ``use_sliding_window: false``: every layer then
    attends in full, so prompts are shared; the same window switched on is not."""
    model = model_of_family("qwen2")
    model.config.sliding_window, model.config.use_sliding_window = 4096, False
    assert prompt_sharing_supported(model)
    model.config.use_sliding_window = True
    assert not prompt_sharing_supported(model)


def test_rollout_share_prompt_reaches_the_update_settings():
    for value in (True, False):
        cfg = compose("train", [f"rollout.share_prompt={str(value).lower()}"])
        assert UpdateSettings.from_config(cfg, 0, use_tis=False).share_prompt is value
