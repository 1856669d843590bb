"""GSM8K as an RL task: rows from the original JSONL files, chat or R1 prompts.

Rows have ``question`` and ``answer``, where ``answer`` is a worked solution
ending in ``#### <final answer>``. :func:`from_row` keeps the solution and
puts the final answer (commas removed) in ``answer``, which the answer
verifiers read; a row without ``####`` keeps an empty gold answer, which the
gold check reports with its row and skips.

Templates: ``chat_boxed`` (the tokenizer's chat template, asking for a boxed
final answer; for instruct models) and ``r1`` (the plain-text R1-Zero prompt
ending in ``<think>``, for base models; the format verifier and the length
statistics see that the prompt opened the think block).

It does not download anything: ``task.train_file`` and ``task.eval_file``
point at local files.
"""

from __future__ import annotations

from typing import Any, Mapping

from reasonrl.tasks.base import Task

REQUIRED_FIELDS = {"question": str, "answer": str}

R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and the answer is enclosed within <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\nAssistant: <think>"
)
BOXED_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def final_answer(solution: str) -> str:
    """The text after the last ``####``, without thousands commas ('' when absent)."""
    if "####" not in solution:
        return ""
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def from_row(row: Mapping[str, Any]) -> dict:
    return {"question": row["question"], "answer": final_answer(row["answer"]), "solution": row["answer"]}


def render_prompt(
    problem: Mapping[str, Any], template: str = "chat_boxed", tokenizer=None, instruction: str = BOXED_INSTRUCTION
) -> str:
    """``instruction`` wraps the question for chat templates and R1 alike (code benchmarks ask for a code block)."""
    if template == "r1":
        question = problem["question"] if instruction is BOXED_INSTRUCTION else instruction.format(question=problem["question"])
        return R1_PROMPT.format(question=question)
    if template == "chat_boxed":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("task.template=chat_boxed needs a tokenizer with a chat template; use template=r1 for base models")
        msg = [{"role": "user", "content": instruction.format(question=problem["question"])}]
        return tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown gsm8k template {template!r}; known: ['chat_boxed', 'r1']")


TASK = Task(
    name="gsm8k",
    render_prompt=render_prompt,
    templates=("chat_boxed", "r1"),
    required_fields=REQUIRED_FIELDS,
    from_row=from_row,
)
