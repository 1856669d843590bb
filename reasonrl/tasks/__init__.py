"""Tasks: where problems, prompt templates and demonstrations come from.

A :class:`Task` declares what it provides: a generated held-out set and an
endless generated training stream (the arithmetic world), demonstrations for
SFT, and whether it reads problems from files (``task.train_file`` /
``task.eval_file``). Callers ask with :meth:`Task.need`, which names what is
missing and how to supply it, instead of probing modules for attributes.

Training problems come as a :class:`ProblemStream` whose position can be saved
and restored (``state_dict`` / ``load_state_dict``), so a resumed run draws
the same problems it would have drawn.

It does not tokenize or score anything.
"""

from __future__ import annotations

from typing import Any

from reasonrl.tasks import arith, gsm8k
from reasonrl.tasks.base import ProblemStream, ShuffledRows, Task

__all__ = ["Task", "ProblemStream", "get_task", "problem_source", "opens_think", "with_prompt_info"]
TASKS = {"arith": arith.TASK, "gsm8k": gsm8k.TASK}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def problem_source(task: Task, task_cfg: Any, seed: int, verifiers) -> tuple[ProblemStream, list[dict]]:
    """(training stream, held-out list) for the task: generated, or from ``task.train_file`` / ``eval_file``.

    File rows are validated (a malformed row names its file and index) and rows
    whose gold answer a verifier cannot parse are reported once and skipped.
    """
    from reasonrl.data import load_jsonl, validate_rows
    from reasonrl.verifiers.scoring import check_golds

    def load(path):
        rows = validate_rows(load_jsonl(path), task.required_fields, path, task_cfg.skip_bad_rows)
        rows = check_golds([task.from_row(r) for r in rows], verifiers, path)
        if not rows:
            raise ValueError(f"{path}: no usable rows")
        return rows

    for key, what in (("eval_file", "heldout"), ("train_file", "train_stream")):
        if not task_cfg[key] and not task.provides(what):
            task.need(what, f"it reads its problems from files: set task.{key}")
    if task_cfg.eval_file:
        heldout = load(task_cfg.eval_file)[: task_cfg.heldout_size]
    else:
        heldout = check_golds(task.heldout(task_cfg.heldout_size, task_cfg.n_terms, task_cfg.digits), verifiers, "held-out set")
    if task_cfg.train_file:
        return ShuffledRows(load(task_cfg.train_file), seed), heldout
    return task.train_stream(seed, task_cfg.n_terms, task_cfg.digits, task_cfg.heldout_size), heldout


def opens_think(prompt: str) -> bool:
    """Whether a rendered prompt already opened the think block (the R1 templates for base models)."""
    return prompt.rstrip().endswith("<think>")


def with_prompt_info(problem: dict, prompt: str) -> dict:
    """The problem as verifiers see it: every field, plus ``prompt_opens_think`` read from its prompt
    (the one place that fact comes from: the format verifier and the length statistics use it)."""
    if opens_think(prompt) == problem.get("prompt_opens_think", False):
        return problem
    return {**problem, "prompt_opens_think": opens_think(prompt)}
