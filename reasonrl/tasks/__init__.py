"""Tasks: where problems, prompt templates and demonstrations come from.

A task module exposes plain functions; :func:`get_task` maps the config's
``task.name`` to one. Only the built-in arithmetic world lives here for now;
benchmark loaders for real data live in :mod:`reasonrl.evals`.
"""

from __future__ import annotations

from types import ModuleType


def get_task(name: str) -> ModuleType:
    from reasonrl.tasks import arith

    tasks = {"arith": arith}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(tasks)}")
    return tasks[name]
