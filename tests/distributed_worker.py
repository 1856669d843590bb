"""Run under torchrun by tests/test_distributed.py (not a test module itself).

``update``: one global batch of fixed rollouts (B = 4 groups of G = 4, completions of 1-7 tokens, so the ranks
hold unequal token counts and micro-batch counts), updated once by one unsharded process (every rank computes
this reference itself) and once by all ranks together with FSDP2 (every sequence whole, then each group's prompt
run once), for every loss aggregation, both advantage scales, with and without KL; each rank writes the largest
loss and parameter gaps it saw.
``nan``: rank 1's rewards are NaN; every rank must stop with the same FloatingPointError.
``dynamic``: dynamic sampling with the transformers generator on the sharded tiny model, where rank 1's groups never
carry signal (its verifier gives every completion the same score) and rank 0's always do: the ranks disagree about
how many groups to drop, and must still make the same number of generate calls and finish.
``save`` / ``resume``: two ranks take one AdamW step on a fixed batch, save a sharded checkpoint, take a second
step and write its loss and parameters; one process loads that checkpoint and takes the same second step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import torch

from reasonrl.config import OptimConfig
from reasonrl.policy import make_optimizer
from reasonrl.rollout import Rollout
from reasonrl.runtime import Runtime, init_runtime
from reasonrl.sharding import full_tensors, shard_model
from reasonrl.update import UpdateSettings, plan_micro_batches, update_policy

B, G, V, PAD = 4, 4, 64, 0
MICRO_TOKENS = 20  # rank 0's shorter sequences fit in fewer micro-batches than rank 1's


def tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=32, tie_word_embeddings=False,
        pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).float()


def global_batch() -> tuple[list[Rollout], torch.Tensor, list[bool]]:
    gen = torch.Generator().manual_seed(1)
    ros = []
    for k in range(B * G):
        b = k // G
        n = 1 + (k % G) + 3 * (b >= B // 2)  # later groups are longer: the ranks' token counts differ
        toks = torch.randint(1, V, (n,), generator=gen).tolist()
        ros.append(Rollout(prompt_index=b, prompt_ids=[1, 2 + b, 3], completion_ids=toks, text="",
                           finish_reason="stop", logprobs=[-1.0] * n))  # fmt: skip
    rewards = torch.tensor([1.0, 0, 0.5, 0, 0, 0, 1, 1, 1, 0, 0, 0.25, 0, 1, 0, 1])
    masked = [False] * (B * G)
    masked[5] = masked[14] = True  # a timeout verdict on each side
    return ros, rewards, masked


def algorithm(loss_agg: str, adv_scale: str, kl: float):
    from conftest import compose

    return compose(
        "train",
        [f"algorithm.loss_agg={loss_agg}", f"algorithm.adv_scale={adv_scale}", f"algorithm.kl_coef={kl}"],
    ).algorithm


def one_update(model, ros, rewards, masked, alg, runtime, share: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # the parameter change is the gradient itself
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ref = None
    if alg.kl_coef > 0:
        ref = shard_model(tiny_model(seed=1).requires_grad_(False), runtime, torch.float32)  # a policy apart from it
    settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=4, max_tokens_per_micro_batch=MICRO_TOKENS, max_len=8,
                              grad_clip=1e9, share_prompt=share)  # fmt: skip
    passes = [0]  # forward passes of the policy's base model: two per micro-batch when prompts are shared
    hook = model.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    stats = update_policy(model, opt, sched, ros, rewards, masked, G, settings, ref_model=ref, step=1, runtime=runtime)
    hook.remove()
    return {**dataclasses.asdict(stats), "passes": passes[0]}


def check_update(runtime: Runtime, out: str) -> None:
    ros, rewards, masked = global_batch()
    mine = runtime.share(B, "groups")
    rows = slice(mine.start * G, mine.stop * G)
    results = []
    mine_ros = ros[rows]
    local_micro = {
        False: plan_micro_batches([len(r.prompt_ids) + len(r.completion_ids) for r in mine_ros], 4, MICRO_TOKENS),
        True: plan_micro_batches(
            [len(r.completion_ids) for r in mine_ros], 4, MICRO_TOKENS, prompts=[r.prompt_ids for r in mine_ros]
        ),
    }
    for loss_agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        for adv_scale in ("group", "batch"):
            for kl in (0.0, 0.1):
                alg = algorithm(loss_agg, adv_scale, kl)
                single = tiny_model()
                ref_stats = one_update(single, ros, rewards, masked, alg, Runtime())  # one process, every sequence whole
                for share in (False, True):  # sharded: every sequence whole, or each group's prompt once
                    sharded = shard_model(tiny_model(), runtime, torch.float32)
                    stats = one_update(sharded, mine_ros, rewards[rows], masked[rows], alg, runtime, share)
                    want = dict(single.state_dict())
                    gap = max(float((t - want[name]).abs().max()) for name, t in full_tensors(sharded))
                    moved = max(float((t - tiny_model().state_dict()[name]).abs().max()) for name, t in want.items())
                    results.append({
                        "case": f"{loss_agg}/{adv_scale}/kl={kl}/share={share}", "loss": stats["loss"],
                        "loss_1": ref_stats["loss"], "param_gap": gap, "moved": moved, "kl": stats["kl"],
                        "kl_1": ref_stats["kl"], "micro_batches": stats["micro_batches"],
                        "local_micro_batches": len(local_micro[share]), "share": share, "passes": stats["passes"],
                    })  # fmt: skip
    with open(f"{out}.{runtime.rank}.json", "w") as f:
        json.dump(results, f)


def lora_model(seed: int = 0):
    """tiny_model with LoRA adapters (r=4, all-linear) whose B is not zero, the same in every process."""
    from reasonrl import lora

    from conftest import compose

    model = lora.add_adapters(tiny_model(seed), compose("train", ["model.lora.r=4"]).model.lora, seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def check_lora(runtime: Runtime, out: str) -> None:
    """A LoRA policy with KL to its own base (adapters off), one process vs FSDP2 over every rank: loss, KL and
    every tensor after one SGD step agree, and only adapter tensors moved."""
    from reasonrl.lora import is_adapter_name

    ros, rewards, masked = global_batch()
    mine = runtime.share(B, "groups")
    rows = slice(mine.start * G, mine.stop * G)
    alg = algorithm("token_mean", "group", 0.1)
    results = []
    for share in (False, True):
        settings = UpdateSettings(alg=alg, pad_id=PAD, micro_batch_size=4, max_tokens_per_micro_batch=MICRO_TOKENS,
                                  max_len=8, grad_clip=1e9, share_prompt=share)  # fmt: skip
        single, sharded = lora_model(), shard_model(lora_model(), runtime, torch.float32)
        stats = {}
        for name, model, rt, part in (("one", single, Runtime(), slice(None)), ("all", sharded, runtime, rows)):
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            stats[name] = update_policy(model, opt, sched, ros[part], rewards[part], masked[part], G, settings,
                                        ref_model=model, step=1, runtime=rt)  # fmt: skip
        want, start = dict(single.state_dict()), dict(lora_model().state_dict())
        got = dict(full_tensors(sharded))
        results.append({
            "share": share, "loss": stats["all"].loss, "loss_1": stats["one"].loss, "kl": stats["all"].kl,
            "kl_1": stats["one"].kl, "param_gap": max(float((t - want[n]).abs().max()) for n, t in got.items()),
            "base_moved": max(float((t - start[n]).abs().max()) for n, t in got.items() if not is_adapter_name(n)),
            "adapter_moved": max(float((t - start[n]).abs().max()) for n, t in got.items() if is_adapter_name(n)),
        })  # fmt: skip
    with open(f"{out}.{runtime.rank}.json", "w") as f:
        json.dump(results, f)


def check_nan(runtime: Runtime, out: str) -> None:
    ros, rewards, masked = global_batch()
    mine = runtime.share(B, "groups")
    rows = slice(mine.start * G, mine.stop * G)
    local = rewards[rows].clone()
    if runtime.rank == 1:
        local[:] = float("nan")
    model = shard_model(tiny_model(), runtime, torch.float32)
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-3), total_steps=1)
    settings = UpdateSettings(alg=algorithm("token_mean", "group", 0.0), pad_id=PAD, micro_batch_size=3, max_len=8)
    t = time.time()
    try:
        update_policy(model, opt, sched, ros[rows], local, masked[rows], G, settings, step=3, runtime=runtime)
        message = None
    except FloatingPointError as e:
        message = str(e)
    with open(f"{out}.{runtime.rank}.json", "w") as f:
        json.dump({"message": message, "seconds": time.time() - t}, f)


class RankVerifier:
    """Rank 0: 1 for a completion whose characters sum to an even code, else 0 (signal); rank 1: always 0 (none)."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, problem, completion: str):
        from reasonrl.verifiers.base import Verdict

        if self.rank == 1 or sum(map(ord, completion)) % 2:
            return Verdict(0.0, "wrong")
        return Verdict(1.0, "correct")


class CountingGenerator:
    """The real transformers generator, counting its calls."""

    def __init__(self, inner):
        self.inner, self.calls, self.exact_logprobs = inner, 0, True

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.inner.generate(*args, **kwargs)


def check_dynamic(runtime: Runtime, out: str) -> None:
    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(list("0123456789q "), [], vocab_size=V)
    model = shard_model(tiny_model(), runtime, torch.float32)
    gen = CountingGenerator(HFGenerator(model, tok))
    plan = GroupPlan(B=4, G=4, sampling=Sampling(temperature=1.0, max_new_tokens=6), dynamic=True, max_redraws=2)
    stream = iter({"question": f"q{i}", "answer": i} for i in range(1000))
    batch = collect_groups(gen, tok, stream, lambda p: p["question"], {"r": (RankVerifier(runtime.rank), 1.0)}, None,
                           plan, seed=5, runtime=runtime)  # fmt: skip
    with open(f"{out}.{runtime.rank}.json", "w") as f:
        json.dump({"calls": gen.calls, "groups": len(batch.rollouts) // plan.G, **dataclasses.asdict(batch.stats)}, f)


def two_batches():
    ros, rewards, masked = global_batch()
    second = [Rollout(r.prompt_index, r.prompt_ids, list(reversed(r.completion_ids)), "", "stop", r.logprobs) for r in ros]
    return (ros, rewards, masked), (second, rewards.flip(0), masked)


def adamw_update(model, opt, sched, batch, runtime, step):
    ros, rewards, masked = batch
    mine = runtime.share(B, "groups")
    rows = slice(mine.start * G, mine.stop * G)
    settings = UpdateSettings(alg=algorithm("token_mean", "group", 0.0), pad_id=PAD, micro_batch_size=4, max_len=8)
    return update_policy(model, opt, sched, ros[rows], rewards[rows], masked[rows], G, settings, step=step, runtime=runtime)


def check_save_resume(runtime: Runtime, out: str, save: bool) -> None:
    from reasonrl import checkpoint as ckpt

    first, second = two_batches()
    model = shard_model(tiny_model(), runtime, torch.float32)
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-3), total_steps=4)
    if save:
        adamw_update(model, opt, sched, first, runtime, 1)
        ckpt.save(out, 1, model, opt, {"steps_done": 1}, "{}", is_main=runtime.is_main, barrier=runtime.barrier)
    else:
        ckpt.load_model_and_optimizer(ckpt.step_dir(out, 1), model, opt)
        sched.step()  # the scheduler's position (the trainer restores it from trainer.pt)
    stats = adamw_update(model, opt, sched, second, runtime, 2)
    params = {name: t.tolist() for name, t in full_tensors(model)}
    if runtime.is_main:
        with open(f"{out}/{'saved' if save else 'resumed'}.json", "w") as f:
            json.dump({"loss": stats.loss, "params": params}, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    rt = init_runtime("cpu")
    modes = {
        "update": check_update,
        "lora": check_lora,
        "nan": check_nan,
        "dynamic": check_dynamic,
        "save": lambda r, o: check_save_resume(r, o, True),
        "resume": lambda r, o: check_save_resume(r, o, False),
    }
    modes[sys.argv[1]](rt, sys.argv[2])
    if sys.argv[1] != "nan":
        rt.close()
