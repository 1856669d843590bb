"""The memory-lean training path: each change is equal to the plain computation it replaces.

Chunked logprobs and entropies (no tokens x V tensor, checked by watching every
op's output), per-token logprobs recorded during generation, float32 master
weights under bfloat16 compute, gradient checkpointing, token-budget
micro-batches, reference logprobs once per batch, the SFT loss, and the order
in which a sleeping vLLM engine is woken for a weight sync.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import REWARDS, G, LargestTensor, algorithm, batch, contiguous_splits, llama_of_vocab, one_token_rollouts, tiny_model
from oracle import entropy_from_logits, token_logprobs

from reasonrl.logprobs import completion_logprobs, token_logprobs_and_entropy


@pytest.mark.parametrize("tie,vocab,temperature", [(False, 40, 1.0), (True, 3000, 0.7), (False, 3000, 1.3)])
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_computation(tie, vocab, temperature):
    model = llama_of_vocab(vocab, tie)
    ids, att, cmask = batch(vocab)
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1] / temperature
    ref_lp, ref_ent = token_logprobs(logits, ids[:, 1:]) * cmask, entropy_from_logits(logits) * cmask
    (ref_lp.sum() + 0.3 * ref_ent.sum()).backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    import reasonrl.logprobs as L

    old = (L.TOKEN_CHUNK, L.VOCAB_CHUNK)
    L.TOKEN_CHUNK, L.VOCAB_CHUNK = 7, 257  # many blocks, ragged edges
    try:
        lp, ent = completion_logprobs(model, ids, att, cmask, temperature, want_entropy=True)
    finally:
        L.TOKEN_CHUNK, L.VOCAB_CHUNK = old
    (lp.sum() + 0.3 * ent.sum()).backward()
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_no_tokens_by_vocabulary_tensor_is_ever_made():
    V, n, length = 50_000, 4, 80  # 4 x 40 completion tokens x 50k vocab = 8M elements if materialised
    model = llama_of_vocab(V, tie=True, layers=1)
    ids, att, cmask = batch(V, n, length)
    tokens = int(cmask.sum())
    watch = LargestTensor()
    with watch:
        lp, ent = completion_logprobs(model, ids, att, cmask, want_entropy=True)
        (lp.sum() + ent.sum()).backward()
    # the output layer's own weight (V x hidden) is the largest thing allowed; blocks are far smaller
    assert tokens * V > 2 * V * 64 and watch.largest <= V * 64, (watch.largest, watch.op, tokens * V)
    plain = LargestTensor()  # the check can fail: the plain path makes a (tokens x V) logits tensor
    with plain:
        _ = model(input_ids=ids, attention_mask=att).logits
    assert plain.largest >= n * length * V


def test_generation_records_the_same_logprobs_a_forward_pass_gives():
    from reasonrl.rollout import HFGenerator, Sampling

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    model = llama_of_vocab(300, layers=1)
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        ros = HFGenerator(model, Tok()).generate(
            prompts, 2, Sampling(temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
        )
        for r in ros:
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(r.prompt_ids) - 1 : -1].float() / temperature
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(r.logprobs), want, atol=1e-5), (temperature, r.logprobs, want.tolist())


@pytest.mark.parametrize("capacity", [None, 3])  # None: the generator's own (no growth); 3: doubles as it goes
def test_the_in_place_kv_cache_samples_what_the_concatenating_one_does(capacity):
    from transformers import GenerationConfig

    from reasonrl.kvcache import BufferedLayer, preallocated_cache
    from reasonrl.rollout import HFGenerator, Sampling

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    model = llama_of_vocab(300, layers=2).eval()
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14, 15, 16]]  # unequal: left padding in the batch
    ids = torch.tensor([[0] * (6 - len(p)) + p for p in prompts])
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=None, max_new_tokens=20, pad_token_id=0, eos_token_id=1,
                           num_return_sequences=3, return_dict_in_generate=True, output_logits=True)  # fmt: skip
    runs = []
    for cache in ({}, preallocated_cache(model, capacity or 26)):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(model.generate(input_ids=ids, attention_mask=(ids != 0).long(), generation_config=cfg, **cache))
        if cache:
            layers = cache["past_key_values"].layers
            assert all(isinstance(layer, BufferedLayer) for layer in layers)
            assert layers[0]._k.shape[2] == (26 if capacity is None else 30)  # 3: 6 (the prefill), 14, 30
    plain, buffered = runs
    assert torch.equal(plain.sequences, buffered.sequences)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain.logits, buffered.logits))
    # the generator uses it: the same seed gives the plain generate's samples
    ros = HFGenerator(model, Tok()).generate(prompts, 3, Sampling(temperature=1.0, max_new_tokens=20, seed=7))
    for row, r in enumerate(ros):
        want = plain.sequences[row, 6:].tolist()
        assert r.completion_ids == want[: len(r.completion_ids)]


def test_float32_master_weights_under_bfloat16_compute_change_every_element():
    """One AdamW step at lr 1e-6 moves >= 99% of every matrix when the weights are float32, even though the
    forward runs in bfloat16; bfloat16 weights (refused unless asked for by name) keep most elements as they were."""
    from reasonrl.config import OptimConfig
    from reasonrl.policy import check_master_weights, make_optimizer
    from reasonrl.update import autocast

    ids, att, cmask = batch(300)
    for weights_dtype in (torch.float32, torch.bfloat16):
        model = llama_of_vocab(300).to(weights_dtype)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt, sched = make_optimizer(model, OptimConfig(lr=1e-6), total_steps=1)
        with autocast(torch.device("cpu"), torch.bfloat16):
            lp, _ = completion_logprobs(model, ids, att, cmask)
        (-lp.sum()).backward()
        opt.step()
        # of every matrix, the elements the step has a gradient for (embedding rows of tokens not in the batch have none)
        changed = {
            k: float(((p.detach() != before[k]) & (p.grad != 0)).sum() / (p.grad != 0).sum())
            for k, p in model.named_parameters()
            if p.ndim == 2
        }
        if weights_dtype == torch.float32:
            assert min(changed.values()) >= 0.99, changed
        else:
            assert max(changed.values()) < 0.5, changed  # what the refusal protects against
    with pytest.raises(ValueError, match="model.dtype=bfloat16.*master weights.*allow_low_precision_weights"):
        check_master_weights({"dtype": "bfloat16"})
    check_master_weights({"dtype": "bfloat16", "allow_low_precision_weights": True})


def test_gradient_checkpointing_gives_the_same_gradients():
    from reasonrl.policy import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        model = llama_of_vocab(300)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        ids, att, cmask = batch(300)
        lp, ent = completion_logprobs(model, ids, att, cmask, want_entropy=True)
        (lp.sum() + ent.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_micro_batches_by_token_budget():
    from reasonrl.update import plan_micro_batches

    lengths = [10, 50, 20, 50, 5, 30]
    plan = plan_micro_batches(lengths, max_seqs=8, max_tokens=100)
    # longest first, each padded to its own longest; of the 3-pass plans the least padded: 100 + 60 + 20 tokens
    # (filling greedily, [[1, 3], [5, 2, 0], [4]], pads to 100 + 90 + 5)
    assert plan == [[1, 3], [5, 2], [0, 4]]
    assert plan_micro_batches(lengths, max_seqs=2) == [[1, 3], [5, 2], [0, 4]]
    assert plan_micro_batches([500, 10], max_seqs=8, max_tokens=100) == [[0], [1]]  # too long for the budget: alone


def test_micro_batch_cuts_are_the_cheapest_contiguous_runs_of_the_sorted_batch():
    import random

    from reasonrl.update import plan_micro_batches

    def cost(plan, lengths, pass_cost):
        return sum(len(mb) * max(lengths[i] for i in mb) for mb in plan) + pass_cost * len(plan)

    # one 60-token sequence among 3-token ones: one pass pads 7 x 57 tokens; two passes cost one pass more
    lengths = [3, 60, 3, 3, 3, 3, 3, 3]
    assert plan_micro_batches(lengths, max_seqs=8, pass_cost=None) == [[1, 0, 2, 3, 4, 5, 6, 7]]
    assert plan_micro_batches(lengths, max_seqs=8, pass_cost=128) == [[1], [0, 2, 3, 4, 5, 6, 7]]
    assert plan_micro_batches(lengths, max_seqs=8, pass_cost=500) == [[1, 0, 2, 3, 4, 5, 6, 7]]  # padding is cheaper
    rng = random.Random(0)
    for _ in range(200):  # against every way of cutting the sorted order (n <= 7: 64 ways at most)
        n = rng.randint(1, 7)
        lengths = [rng.randint(1, 40) for _ in range(n)]
        max_seqs, max_tokens, pass_cost = rng.randint(1, 7), rng.choice([0, 30, 80]), rng.choice([0, 5, 40])
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        feasible = []
        for plan in contiguous_splits(order):
            ok = all(len(mb) <= max_seqs and (len(mb) == 1 or not max_tokens or len(mb) * lengths[mb[0]] <= max_tokens)
                     for mb in plan)  # fmt: skip
            if ok:
                feasible.append(plan)
        got = plan_micro_batches(lengths, max_seqs, max_tokens, pass_cost)
        assert got in feasible
        assert cost(got, lengths, pass_cost) == min(cost(p, lengths, pass_cost) for p in feasible)
        fewest = plan_micro_batches(lengths, max_seqs, max_tokens)
        assert len(fewest) == min(len(p) for p in feasible)


def test_the_reference_model_runs_once_per_batch_and_token_budgets_change_nothing():
    from reasonrl.update import UpdateSettings, update_policy

    finals, calls = [], []
    for budget in (0, 6):  # 6 tokens: two 3-token sequences per micro-batch
        model = tiny_model()
        ref = copy.deepcopy(model)
        count = [0]
        ref.model.register_forward_hook(lambda *a, c=count: c.__setitem__(0, c[0] + 1))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        old = [0.0] * 12
        settings = UpdateSettings(
            alg=algorithm("grpo_deepseekmath", "updates_per_batch=2"),
            pad_id=0,
            max_tokens_per_micro_batch=budget,
            max_len=4,
            grad_clip=1e9,
        )
        stats = update_policy(
            model, opt, sched, one_token_rollouts(logprobs=old), REWARDS, [False] * 12, G, settings, ref_model=ref
        )
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        calls.append((count[0], stats.micro_batches))
    assert calls == [(1, 1), (6, 6)]  # one reference pass per micro-batch, whatever the number of updates
    assert torch.allclose(finals[0], finals[1], atol=1e-6)


def test_the_sft_loss_is_the_mean_token_cross_entropy_in_any_micro_batching():
    from reasonrl.sft import collate, sft_backward

    model = llama_of_vocab(300)
    g = torch.Generator().manual_seed(0)
    data = [
        ([int(x) for x in torch.randint(2, 300, (p,), generator=g)], [int(x) for x in torch.randint(2, 300, (c,), generator=g)])
        for p, c in [(3, 5), (6, 2), (2, 9), (4, 4)]
    ]
    ids, mask, labels = collate(data, 0)
    want = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    want.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    for seqs, tokens in ((4, 0), (1, 0), (4, 12)):
        model.zero_grad()
        got = sft_backward(model, data, 0, seqs, tokens)
        assert torch.allclose(got, want.detach(), atol=1e-6)
        assert all(torch.allclose(p.grad, r, atol=1e-6) for p, r in zip(model.parameters(), ref))


def test_a_sleeping_vllm_engine_wakes_weights_first_then_its_cache():
    """On a GPU the engine sleeps at level 2 while the policy trains (weights and cache freed); a sync wakes
    the weights alone, loads the new ones, then wakes the KV cache. Checked with an engine that records."""
    from reasonrl.rollout_vllm import VLLMGenerator

    calls = []

    class Worker:
        def reload_weights(self, weights_iterator, is_checkpoint_format):
            calls.append(("reload_weights", len(list(weights_iterator))))

    class LLM:
        llm_engine = type(
            "E", (), {"model_executor": type("X", (), {"driver_worker": type("D", (), {"worker": Worker()})()})()}
        )()

        def sleep(self, level):
            calls.append(("sleep", level))

        def wake_up(self, tags=None):
            calls.append(("wake_up", tags))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache",))

    gen = VLLMGenerator.__new__(VLLMGenerator)
    gen.llm, gen.sleep_enabled, gen._asleep, gen.engine_dtype = LLM(), True, False, torch.float32
    model = llama_of_vocab(40, layers=1)
    gen.sleep()
    gen.sync_weights(model)
    n = len(model.state_dict())
    assert calls == [
        ("sleep", 2),
        ("wake_up", ["weights"]),
        ("reload_weights", n),
        ("wake_up", ["kv_cache"]),
        ("reset_prefix_cache",),
    ]
    calls.clear()
    gen.sync_weights(model)  # awake: no wake-up calls
    assert calls == [("reload_weights", n), ("reset_prefix_cache",)]


def test_token_logprobs_take_bias_and_no_entropy_gradient_when_unused():
    torch.manual_seed(0)
    h = torch.randn(9, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (9,))
    lp, _ = token_logprobs_and_entropy(h, w, b, t, 0.8, want_entropy=False, token_chunk=4, vocab_chunk=13)
    lp.sum().backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    ref = torch.log_softmax((h @ w.t() + b) / 0.8, -1).gather(-1, t[:, None]).squeeze(-1)
    ref.sum().backward()
    assert torch.allclose(lp, ref, atol=1e-5)
    assert all(torch.allclose(g, x.grad, atol=1e-5) for g, x in zip(grads, (h, w, b)))


@pytest.mark.parametrize("entry", ["sft", "cold_start"])
def test_sft_micro_batch_and_compute_dtype_settings_reach_the_training_passes(entry, tmp_path):
    # they were declared config keys that train_sft never saw: a batch of 8 ran as one float32 pass whatever they said
    from conftest import TINY, compose

    if entry == "sft":
        from reasonrl.finetune import main

        node = "sft"
        overrides = [o for o in TINY if o.startswith(("model.", "task.", "eval.", "logging."))]
        overrides += ["max_steps=1", "sft.eval_every=0", "sft.demos=16", "logging.tensorboard=false"]
    else:
        from reasonrl.train import main

        node = "cold_start"
        overrides = [*TINY, "experiment=sft_cold_start_arith", "cold_start.steps=1", "cold_start.demos=16", "max_steps=0",
                     "eval.every=0", "logging.tensorboard=false", "verify.workers=0"]  # fmt: skip
    cfg = compose("train" if entry == "cold_start" else "sft", [
        *overrides, f"{node}.batch_size=8", f"{node}.micro_batch_size=2", "model.compute_dtype=bfloat16", f"run_dir={tmp_path}",
    ])  # fmt: skip
    from reasonrl.models import load_policy

    load_policy(cfg.model, progress=False)  # the base model's pretraining (built once, cached) is not counted
    passes = []

    def seen(module, args, out):
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled():
            passes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)

    handle = torch.nn.modules.module.register_module_forward_hook(seen)
    try:
        main(cfg)
    finally:
        handle.remove()
    assert passes == [torch.bfloat16] * 4  # one step: 8 demonstrations in passes of 2, under bfloat16 autocast


@pytest.mark.parametrize("temperature,with_bias", [(1.0, True), (0.7, True), (0.7, False)])
def test_bfloat16_blocks_do_their_softmax_arithmetic_in_float32(temperature, with_bias):
    """Under bfloat16 compute only the block matmul is bfloat16: bias, temperature and the log-sum-exp run in
    float32, so the result equals float32 arithmetic on the bfloat16 logits to 1e-5 (bfloat16 arithmetic there is
    off by about 1e-2 at this vocabulary size). Gradients come from the same float32 arithmetic."""
    g = torch.Generator().manual_seed(0)
    M, H, V = 24, 64, 3000
    hidden = torch.randn(M, H, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.5).bfloat16()
    bias = torch.randn(V, generator=g) * 3 if with_bias else None
    targets = torch.randint(0, V, (M,), generator=g)
    logp, ent = token_logprobs_and_entropy(hidden, weight, bias, targets, temperature, want_entropy=True, vocab_chunk=512)
    ref_hidden = hidden.detach().clone().requires_grad_()
    z = (ref_hidden @ weight.t()).float()  # float32 from the bfloat16 matmul on
    z = (z + bias if with_bias else z) / temperature
    ref = torch.log_softmax(z, dim=-1)
    ref_logp = ref.gather(1, targets[:, None]).squeeze(1)
    ref_ent = -(ref.exp() * ref).sum(-1)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    (logp.sum() + ent.sum()).backward()
    (ref_logp.sum() + ref_ent.sum()).backward()
    torch.testing.assert_close(hidden.grad.float(), ref_hidden.grad.float(), atol=2e-2, rtol=2e-2)


SHARDED_LARGEST = r"""
import os, sys, json, torch
sys.path.insert(0, sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
from helpers import LargestTensor, batch, llama_of_vocab
from reasonrl.logprobs import completion_logprobs
from reasonrl.runtime import Runtime
from reasonrl.sharding import is_sharded, shard_model
V = 50_000
model = shard_model(llama_of_vocab(V, tie=True, layers=1), Runtime(), torch.float32, mode="on")
ids, att, cmask = batch(V, 4, 80)
watch = LargestTensor()
with watch:
    lp, ent = completion_logprobs(model, ids, att, cmask, want_entropy=True)
    (lp.sum() + ent.sum()).backward()
print(json.dumps({"sharded": is_sharded(model), "largest": watch.largest, "op": watch.op, "tokens": int(cmask.sum())}))
torch.distributed.destroy_process_group()
"""


def test_a_sharded_model_makes_no_tokens_by_vocabulary_tensor_either():
    """Under FSDP2 the output layer runs inside the root's forward (to keep its gathered weight for backward),
    asked for one position per sequence; the logprobs then come in blocks. Run in a process of its own (a process
    group of one), so no other test's process groups are touched."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a free port on this machine for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([sys.executable, "-c", SHARDED_LARGEST, str(Path(__file__).parent), str(port)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    V, H = 50_000, 64
    assert out["sharded"] and out["tokens"] * V > 2 * V * H
    # the root's gathered parameters (the tied V x H embedding and the final norm) are the largest thing
    assert out["largest"] <= V * H + 4 * H, out
