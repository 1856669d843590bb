"""Tasks: where problems, prompt templates and demonstrations come from.

A task module exposes plain functions: ``REQUIRED_FIELDS`` and ``from_row``
(file rows to problems), ``render_prompt(problem, template, tokenizer)``, and,
for generated worlds, ``heldout`` and ``train_stream``. :func:`get_task` maps
the config's ``task.name`` to one.
"""

from __future__ import annotations

from types import ModuleType


def get_task(name: str) -> ModuleType:
    from reasonrl.tasks import arith, gsm8k

    tasks = {"arith": arith, "gsm8k": gsm8k}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(tasks)}")
    return tasks[name]
