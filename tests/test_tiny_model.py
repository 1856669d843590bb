"""The locally built tokenizer and model, the cache, and generator/trainer logprob agreement."""

from __future__ import annotations

import torch

from conftest import compose


def test_tokenizer_is_character_level_with_single_token_tags():
    from reasonrl.tasks import arith
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(arith.CHARSET, arith.TAGS)
    text = "Q:47+85+29=?<think>7+5+9=21 4+8+2+2=16</think><answer>161</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) == len("Q:47+85+29=?") + 1 + len("7+5+9=21 4+8+2+2=16") + 1 + 1 + 3 + 1
    assert tok.convert_tokens_to_ids("</think>") != tok.unk_token_id
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text


def test_base_model_is_built_once_cached_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    from reasonrl.models import load_policy
    from reasonrl.tiny import base_path

    cfg = compose(
        "train",
        [
            "model.pretrain.max_steps=3",
            "model.pretrain.eval_every=3",
            "model.pretrain.eval_problems=4",
            "model.pretrain.batch_size=8",
            "logging.progress=false",
        ],
    )
    model, tok, path = load_policy(cfg.model, progress=False)
    assert path == base_path(cfg.model.arch, cfg.model.pretrain) and (path / "build.json").is_file()
    assert model.config.head_dim == 64 and sum(p.numel() for p in model.parameters()) > 400_000
    mtime = (path / "config.json").stat().st_mtime
    _, _, again = load_policy(cfg.model, progress=False)
    assert again == path and (path / "config.json").stat().st_mtime == mtime  # no rebuild
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # nothing half-written left
    AutoModelForCausalLM.from_pretrained(path)
    other = compose("train", ["model.pretrain.max_steps=4"])
    assert base_path(other.model.arch, other.model.pretrain) != path  # keyed by config


def test_hf_generator_logprobs_match_trainer_recomputation():
    from oracle import token_logprobs

    from reasonrl.data import pack
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.tasks import arith
    from reasonrl.tiny import build_model, build_tokenizer

    tok = build_tokenizer(arith.CHARSET, arith.TAGS)
    model = build_model(compose("train").model.arch, tok, seed=0)
    prompts = [tok(arith.render_prompt(p), add_special_tokens=False)["input_ids"] for p in arith.heldout(3)]
    prompts[1] = prompts[1][:-3]  # uneven lengths exercise left padding
    gen = HFGenerator(model, tok, batch_size=8)
    ro = gen.generate(prompts, 4, Sampling(temperature=0.7, max_new_tokens=12, seed=1))
    assert [r.prompt_index for r in ro] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(len(r.logprobs) == len(r.completion_ids) for r in ro)
    assert {r.finish_reason for r in ro} <= {"stop", "length"}
    assert all((r.finish_reason == "stop") == (r.completion_ids[-1] == tok.eos_token_id) for r in ro)
    b = pack(ro, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1] / 0.7
    lp = token_logprobs(logits, b.input_ids[:, 1:])
    diff = ((lp - b.sampler_logprobs).abs() * b.completion_mask).max().item()
    assert diff < 1e-4, diff
    # same seed, same samples
    again = gen.generate(prompts, 4, Sampling(temperature=0.7, max_new_tokens=12, seed=1))
    assert [r.completion_ids for r in again] == [r.completion_ids for r in ro]
