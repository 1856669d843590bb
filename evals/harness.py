"""The evaluation loop: generate, verify, aggregate.

``evaluate`` renders each problem, generates ``n`` samples (greedy when the
temperature is 0), scores them with one verifier (default: exact integer
answer), and returns accuracy (the mean over all samples, i.e. pass@1 averaged
over ``n``), mean completion length, mean think/answer lengths and the
truncation rate.

It does not load benchmark files or compute pass@k / maj@k.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from reasonrl.metrics import cot_lengths, mean
from reasonrl.rollout import Generator, Sampling


def evaluate(
    generator: Generator,
    tokenizer,
    problems: Sequence[Mapping[str, Any]],
    *,
    render: Callable[[Mapping[str, Any]], str],
    verifier=None,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    think_in_prompt: bool = False,
    banned_first_tokens: tuple[int, ...] = (),
) -> dict[str, Any]:
    from reasonrl.verifiers.base import safe_call
    from reasonrl.verifiers.integer import IntegerVerifier

    verifier = verifier or IntegerVerifier()
    prompts = [tokenizer(render(p), add_special_tokens=False)["input_ids"] for p in problems]
    sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, banned_first_tokens=banned_first_tokens)
    rollouts = generator.generate(prompts, n, sampling)
    verdicts = [safe_call(verifier, problems[r.prompt_index], r.text) for r in rollouts]
    think, answer = cot_lengths([r.text for r in rollouts], tokenizer, think_in_prompt)
    correct = [v is not None and v.status == "correct" for v in verdicts]
    return {
        "accuracy": mean(correct),
        "len_mean": mean(len(r.completion_ids) for r in rollouts),
        "think_len_mean": mean(think),
        "answer_len_mean": mean(answer),
        "clipped_frac": mean(r.finish_reason == "length" for r in rollouts),
        "n_samples": len(rollouts),
        "rollouts": rollouts,
        "correct": correct,
    }
