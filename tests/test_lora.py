"""LoRA policies (``model.lora.*``, reasonrl.lora): only the adapters train, a LoRA step is the merged model's
step, the KL reference is the base, the merged and adapter layouts load back, and a tiny-world run trains.

The vLLM side (adapter sync with logprob parity, the exported adapter in the engine) is in test_vllm.py; kill -9
resume and export from a checkpoint in test_resume.py; two processes with FSDP2 in test_distributed.py.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import model_of_family, random_length_rollouts

from reasonrl import lora
from reasonrl.config import ConfigError, OptimConfig, check_eval_config, check_train_config
from reasonrl.policy import make_optimizer
from reasonrl.update import UpdateSettings, update_policy

from conftest import TINY, compose

REWARDS = torch.tensor([1.0, 0, 0.5, 0, 0, 0, 1, 1, 1, 0, 0, 0.25])


def lora_node(r: int = 4, **kw):
    return compose("train", [f"model.lora.r={r}", *[f"model.lora.{k}={v}" for k, v in kw.items()]]).model.lora


def adapted(kind: str = "llama", r: int = 4, seed: int = 0, nonzero: bool = True, **kw):
    """(a LoRA policy whose adapters are not zero, so they matter; its base, untouched)."""
    base = model_of_family(kind)
    model = lora.add_adapters(copy.deepcopy(base), lora_node(r, **kw), seed=seed)
    if nonzero:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model, base


def merged_copy(model, base):
    """A plain model with the LoRA policy's merged weights (the layout vLLM's merged sync and the export use)."""
    plain = copy.deepcopy(base)
    missing = plain.load_state_dict(dict(lora.merged_tensors(model.state_dict().items(), lora.scalings(model))), strict=True)
    assert not missing.missing_keys
    return plain


def settings(kl: float = 0.0, share: bool = False, **alg):
    over = [f"algorithm.kl_coef={kl}", *[f"algorithm.{k}={v}" for k, v in alg.items()]]
    return UpdateSettings(alg=compose("train", over).algorithm, pad_id=0, micro_batch_size=4, max_len=16, grad_clip=1e9,
                          share_prompt=share)  # fmt: skip


def step(model, s: UpdateSettings, ref=None, lr: float = 1e-2):
    opt, sched = make_optimizer(model, OptimConfig(lr=lr), total_steps=1)
    rollouts = random_length_rollouts()
    stats = update_policy(model, opt, sched, rollouts, REWARDS, [False] * len(rollouts), 4, s, ref_model=ref, step=1)
    return stats, opt


def test_only_the_adapters_train_and_hold_optimizer_state():
    model, _ = adapted()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(lora.is_adapter_name(n) for n in trainable)
    stats, opt = step(model, settings(kl=0.1), ref=model)  # the KL reference switches the adapters off and on again
    assert stats.grad_norm > 0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in opt.state} == trainable, "optimizer state exactly for the adapters"
    after = model.state_dict()
    for n, t in before.items():
        assert torch.equal(t, after[n]) != lora.is_adapter_name(n), n  # every adapter tensor moved, nothing else
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable, "requires_grad restored"


@pytest.mark.parametrize(
    "case", ["plain", "shared_prompt", "gradient_checkpointing", "kl", "qwen2_targets", "bf16_base", "modules_to_save"]
)
def test_a_lora_step_is_the_merged_models_step(case):
    """Loss, KL, entropy and the trainer's logprobs of one LoRA update equal those of the full model with the
    merged weights (its KL reference the base itself) to 1e-5; the same batch, the same settings."""
    kw = {"target_modules": "[q_proj,v_proj,down_proj]"} if case == "qwen2_targets" else {}
    kw.update({"modules_to_save": "[lm_head]"} if case == "modules_to_save" else {})
    model, base = adapted("qwen2" if case == "qwen2_targets" else "llama", **kw)
    if case == "modules_to_save":
        with torch.no_grad():
            model.lm_head.modules_to_save[lora.ADAPTER].weight.mul_(1.1)
    if case == "bf16_base":  # a frozen low-precision base, float32 adapters (the merged model: the same bf16 base)
        model, base = adapted(nonzero=True)
        for n, p in model.named_parameters():
            if not lora.is_adapter_name(n):
                p.data = p.data.to(torch.bfloat16).float()  # the values a bf16 base holds, compared in float32
    plain = merged_copy(model, base)
    if case == "gradient_checkpointing":
        from reasonrl.policy import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    kl = 0.1 if case == "kl" else 0.0
    s = settings(kl=kl, share=case == "shared_prompt")
    ours, _ = step(model, s, ref=model if kl else None, lr=0.0)
    theirs, _ = step(plain, s, ref=base if kl else None, lr=0.0)
    for key in ("loss", "kl", "entropy", "logprob_diff_mean", "logprob_diff_max"):
        assert getattr(ours, key) == pytest.approx(getattr(theirs, key), abs=1e-5), key
    if kl:
        assert ours.kl > 1e-4, "the adapters move the policy away from the base: the KL term is not zero"


def test_the_kl_reference_is_the_base_and_the_adapters_come_back():
    from reasonrl.data import pack
    from reasonrl.logprobs import batch_logprobs

    model, base = adapted()
    b = pack(random_length_rollouts(), 0)
    with torch.no_grad():
        policy = batch_logprobs(model, b)[0]
        with lora.adapters_disabled(model):
            ref = batch_logprobs(model, b)[0]
        again = batch_logprobs(model, b)[0]
        want = batch_logprobs(base, b)[0]
    assert torch.equal(ref, want), "adapters off: exactly the base"
    assert torch.equal(again, policy), "and on again after"
    assert (policy - ref).abs().max() > 1e-3, "the adapters matter in this test"


def test_the_merged_folder_and_the_adapter_folder_load_back(tmp_path):
    """save_checkpoint (checkpoints/final, reasonrl-export) writes the merged model and the adapter alone: the
    first loads in transformers, the second with peft on the base, both with the policy's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrl.policy import save_checkpoint

    model, base = adapted()
    base.save_pretrained(tmp_path / "base")
    tok_dir = _any_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    save_checkpoint(model, tok, tmp_path / "final", base_path=str(tmp_path / "base"))
    ids = torch.randint(1, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final")(input_ids=ids).logits
        config = json.loads((tmp_path / "final" / "adapter" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tmp_path / "base") and config["r"] == 4
        on_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        adapter = PeftModel.from_pretrained(on_base, tmp_path / "final" / "adapter")(input_ids=ids).logits
    assert (merged - want).abs().max() < 1e-5
    assert torch.equal(adapter, want)


def _any_tokenizer(tmp_path):
    """A small tokenizer folder (the tiny base model's)."""
    from reasonrl.models import model_path

    return model_path(compose("train", TINY).model, progress=False)


def test_a_cold_start_adapter_becomes_the_base_and_a_fresh_adapter_starts():
    model, _ = adapted()
    ids = torch.randint(1, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        lora.merge_into_base(model, seed=5)
        after = model(input_ids=ids).logits
        with lora.adapters_disabled(model):
            base_now = model(input_ids=ids).logits
    assert (after - before).abs().max() < 1e-5, "merging leaves the policy as it was"
    assert (base_now - before).abs().max() < 1e-5, "the base is now that policy (the RL run's KL reference)"
    assert all(float(p.detach().abs().max()) == 0 for n, p in model.named_parameters() if ".lora_B." in n), "fresh adapters"
    assert all(p.requires_grad for n, p in model.named_parameters() if lora.is_adapter_name(n))


def test_lora_settings_are_checked_before_anything_loads():
    bad = {
        "model.lora.r=-1": "model.lora.r must be >= 0",
        "model.lora.alpha=0": "model.lora.alpha must be above 0",
        "model.lora.dropout=1.5": "model.lora.dropout must be in [0, 1)",
        "model.lora.sync=adaptor": "model.lora.sync must be auto, adapter or merged",
        "model.lora.target_modules=[]": "model.lora.target_modules is empty",
        "model.lora.modules_to_save=[lm_head]": "model.lora.sync=adapter with model.lora.modules_to_save",
    }
    for override, message in bad.items():
        extra = ["model.lora.sync=adapter"] if "modules_to_save" in override else []
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            check_train_config(compose("train", ["model.lora.r=4", override, *extra]))
    check_train_config(compose("train", ["model.lora.r=0", "model.lora.dropout=3"]))  # off: its knobs are not read
    with pytest.raises(ConfigError, match="reasonrl-eval scores a model folder"):
        check_eval_config(compose("eval", ["model.lora.r=8"]))
    with pytest.raises(ValueError, match="model.lora: .*nonexistent_proj"):
        lora.add_adapters(model_of_family("llama"), lora_node(4, target_modules="[nonexistent_proj]"))


def test_a_generator_that_cannot_take_an_adapter_is_refused_by_name(tmp_path):
    from transformers import AutoTokenizer

    from reasonrl.build import build_generator

    tok = AutoTokenizer.from_pretrained(_any_tokenizer(tmp_path))
    node = {"_target_": "reasonrl.rollout.HFGenerator"}
    build_generator(node, model_of_family("llama"), tok, lora={"sync": "adapter"})  # samples the module itself
    with pytest.raises(ValueError, match="cannot sample a LoRA policy"):
        build_generator({"_target_": "reasonrl.tasks.arith.heldout"}, None, None, lora={"sync": "adapter"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny-world GRPO run with a LoRA policy (KL to the base, bf16-free CPU settings): 4 steps."""
    from reasonrl.train import main

    run = tmp_path_factory.mktemp("lora_run")
    cfg = compose("train", [*TINY, "model.lora.r=8", "algorithm.kl_coef=0.05", "max_steps=4", "eval.every=4",
                            "optim.lr=1e-2", "verifier.format.partial_credit=true", f"run_dir={run}"])  # fmt: skip
    main(cfg)
    return run


def test_a_tiny_world_lora_run_trains_the_adapter_alone(tiny_run, capfd):
    from transformers import AutoModelForCausalLM

    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    steps = rows[1:]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["train/grad_norm"] > 0 for r in steps), "every step has a gradient"
    assert steps[0]["train/kl"] == pytest.approx(0.0, abs=1e-7), "step 1 samples with B = 0: the policy is its base"
    assert any(r["train/kl"] > 1e-6 for r in steps[1:]), "then the adapter moves it away"
    final = tiny_run / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    base_dir = json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    trained = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    moved = [n for n, t in trained.state_dict().items() if not torch.equal(t, base.state_dict()[n])]
    adapted_kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert moved and all(n.split(".")[-2] in adapted_kinds for n in moved), moved  # norms, embeddings untouched


def test_an_asynchronous_lora_run_publishes_the_adapter_to_the_actors_copy(tmp_path):
    """max_staleness=1 with transformers: the actor samples from its own copy of the policy, which receives the
    base once and then only adapter tensors (a version's publish holds nothing else); by the end it holds a
    trained adapter (B was 0 at version 0) on the learner's base."""
    from reasonrl.train import GRPOTrainer

    cfg = compose("train", [*TINY, "model.lora.r=8", "rollout.max_staleness=1", "max_steps=4", "eval.every=0",
                            "checkpoint.every=0", "checkpoint.final=false", "verify.workers=0", "optim.lr=1e-2",
                            "verifier.format.partial_credit=true", f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    trainer = GRPOTrainer(cfg).setup()
    published = []
    publish = trainer.rollouts.publish
    trainer.rollouts.publish = lambda version, tensors: (published.append(set(tensors)), publish(version, tensors))[1]
    try:
        trainer.fit()
        copy_ = trainer.generator.model.state_dict()
        learner = trainer.model.state_dict()
    finally:
        trainer.close()
    assert published and all(names and all(lora.is_adapter_name(n) for n in names) for names in published)
    assert copy_ is not learner and copy_.keys() == learner.keys()
    for name, t in copy_.items():
        if not lora.is_adapter_name(name):
            assert torch.equal(t, learner[name]), name
    assert any(float(t.abs().max()) > 0 for n, t in copy_.items() if ".lora_B." in n), "a trained adapter arrived"
