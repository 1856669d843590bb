"""The one sampling path (reasonrl.pipeline): verifiers see each problem with what its rendered prompt opened,
one verdict row per rollout, prompt-major, in this process or in the scoring pool."""

from __future__ import annotations

from helpers import llama_of_vocab

from reasonrl.pipeline import generate_and_verify, render_prompts
from reasonrl.rollout import HFGenerator, Sampling
from reasonrl.verifiers import Verdict


class SeenThink:
    """Records, as its verdict, whether the problem it was handed says its prompt opened <think>."""

    name = "seen"

    def __call__(self, problem, completion):
        opened = problem.get("prompt_opens_think")
        return Verdict(1.0 if opened else 0.0, "correct" if opened else "wrong", {"q": problem["question"]})


def test_verifiers_see_each_problem_with_what_its_prompt_opened():
    from reasonrl.tiny import build_tokenizer

    tok = build_tokenizer(list("0123456789+=Q:"), ["<think>"], vocab_size=64)
    problems = [{"question": "1+2"}, {"question": "3+4"}]
    render = lambda p: f"Q:{p['question']}=" + ("<think>" if p["question"] == "3+4" else "")  # noqa: E731
    prompts = render_prompts(problems, render, tok)
    assert prompts.texts == ["Q:1+2=", "Q:3+4=<think>"]
    assert prompts.ids == [tok(t, add_special_tokens=False)["input_ids"] for t in prompts.texts]
    assert [p.get("prompt_opens_think", False) for p in prompts.problems] == [False, True]
    assert "prompt_opens_think" not in problems[1], "the caller's problem is not modified"

    gen = HFGenerator(llama_of_vocab(len(tok)), tok)
    out = generate_and_verify(gen, prompts, 3, Sampling(max_new_tokens=4, seed=0), verifiers={"seen": SeenThink()})
    assert [r.prompt_index for r in out.rollouts] == [0, 0, 0, 1, 1, 1]
    assert [row["seen"].info["q"] for row in out.rows] == ["1+2"] * 3 + ["3+4"] * 3
    assert [row["seen"].status for row in out.rows] == ["wrong"] * 3 + ["correct"] * 3
    # nothing to verify with: rollouts only
    assert generate_and_verify(gen, prompts, 1, Sampling(max_new_tokens=2, seed=0)).rows is None
