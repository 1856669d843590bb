"""Tasks: where problems, prompt templates and demonstrations come from.

A :class:`Task` declares what it provides: a generated held-out set and an
endless generated training stream (the arithmetic world), demonstrations for
SFT (generated, or made from data with ``task.target``), and how it renders a
prompt. ``task.name=arith`` is the built-in world; any other name is a task
read from data (``task.path``, :mod:`reasonrl.tasks.dataset`), and the
arithmetic world can read its problems from data too. Callers ask with
:meth:`Task.need`, which names what is missing and how to supply it.

Training problems come as a :class:`ProblemStream` whose position can be saved
and restored (``state_dict`` / ``load_state_dict``), so a resumed run draws
the same problems it would have drawn.

:func:`prepare_problems` reads and checks a task's data before anything slow
happens (entry points call it before loading a model, so a data error costs
seconds, not the model's load); the next :func:`problem_source` call for the
same task, seed and verifiers takes the prepared problems instead of reading
them again.

It does not tokenize or score anything.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from reasonrl.tasks import arith
from reasonrl.tasks.base import ProblemStream, ShuffledRows, Task
from reasonrl.tasks.dataset import dataset_task
from reasonrl.tasks.sources import load_problems, normalized_text

log = logging.getLogger(__name__)

__all__ = [
    "Task",
    "ProblemStream",
    "get_task",
    "problem_source",
    "prepare_problems",
    "opens_think",
    "with_prompt_info",
    "check_overlap",
]
HELDOUT_SPLIT_SEED = 4_242  # which data rows a run sets aside as held-out when no eval_path is given: fixed, not per run


def get_task(task_cfg: Any) -> Task:
    """The Task a ``task`` config node describes (``arith``, shaped by the node, or a task read from data)."""
    if task_cfg.name == "arith":
        return arith.task(task_cfg)
    return dataset_task(task_cfg)


def _load(task_cfg: Any, task: Task, path: str, split: str, filter: str | None, limit: int | None) -> list[dict]:
    problems = load_problems(
        path,
        format=task_cfg.format,
        split=split,
        fields=task_cfg.fields,
        row_fn=task_cfg.row_fn,
        filter=filter,
        limit=limit,
        skip_bad=task_cfg.skip_bad_rows,
        required=list(task.required_fields),
    )
    for i, p in enumerate(problems):
        for key, typ in task.required_fields.items():
            if not isinstance(p[key], typ):
                raise ValueError(
                    f"{path}: row {i} field {key!r} is {type(p[key]).__name__} {p[key]!r}, "
                    f"expected {getattr(typ, '__name__', typ)}"
                )
    return [task.from_row(p) for p in problems]


def problem_source(task: Task, task_cfg: Any, seed: int, verifiers) -> tuple[ProblemStream, list[dict]]:
    """(training stream, held-out list): generated, or read from ``task.path`` / ``task.eval_path``.

    Rows are read as :mod:`reasonrl.tasks.sources` says (a malformed row names its source, row and
    field); problems whose gold answer a verifier cannot parse are reported once and skipped. Without
    an ``eval_path`` a data task sets ``heldout_size`` of its problems aside (a fixed choice) and never
    trains on them.
    """
    key = _prepared_key(task, task_cfg, seed, verifiers)
    train, heldout = _prepared.pop(key) if key in _prepared else _problems(task, task_cfg, verifiers)
    _prepared.clear()
    if train is not None:
        return ShuffledRows(train, seed), heldout
    return task.need("train_stream", "set task.path to the training data")(seed), heldout


_prepared: dict[tuple, tuple[list[dict] | None, list[dict]]] = {}


def _prepared_key(task: Task, task_cfg: Any, seed: int, verifiers) -> tuple:
    from omegaconf import OmegaConf

    node = OmegaConf.to_yaml(task_cfg, resolve=True) if OmegaConf.is_config(task_cfg) else repr(task_cfg)
    kinds = tuple((name, type(v).__module__, type(v).__qualname__, weight) for name, (v, weight) in verifiers.items())
    return task.name, node, seed, kinds


def prepare_problems(task: Task, task_cfg: Any, seed: int, verifiers) -> tuple[list[dict] | None, list[dict]]:
    """Read and check the task's problems now (data errors raise here, naming the file and row): (training
    problems or None for a generated stream, held-out problems). The next :func:`problem_source` call with
    the same arguments uses them instead of reading the data again."""
    _prepared.clear()
    out = _problems(task, task_cfg, verifiers)
    _prepared[_prepared_key(task, task_cfg, seed, verifiers)] = out
    return out


def _problems(task: Task, task_cfg: Any, verifiers) -> tuple[list[dict] | None, list[dict]]:
    from reasonrl.verifiers.scoring import check_golds

    train = None
    if task_cfg.path:
        train = check_golds(
            _load(task_cfg, task, task_cfg.path, task_cfg.split, task_cfg.filter, task_cfg.limit), verifiers, task_cfg.path
        )
        if not train:
            raise ValueError(f"{task_cfg.path}: no usable problems (every gold answer failed its check)")
    if task_cfg.eval_path:
        heldout = _load(task_cfg, task, task_cfg.eval_path, task_cfg.eval_split, task_cfg.eval_filter, None)
        heldout = check_golds(heldout, verifiers, task_cfg.eval_path)[: task_cfg.heldout_size]
    elif task.provides("heldout"):
        heldout = check_golds(task.heldout(task_cfg.heldout_size), verifiers, "held-out set")
    else:
        if len(train) < 2 * task_cfg.heldout_size:
            raise ValueError(
                f"{task_cfg.path}: {len(train)} problems are too few to set {task_cfg.heldout_size} aside as "
                "held-out; lower task.heldout_size or give task.eval_path"
            )
        order = list(range(len(train)))
        random.Random(HELDOUT_SPLIT_SEED).shuffle(order)
        aside = set(order[: task_cfg.heldout_size])
        heldout = [train[i] for i in sorted(aside)]
        train = [p for i, p in enumerate(train) if i not in aside]
    return train, heldout


def check_overlap(train: list[dict], evaluations: dict[str, list[dict]], allow: bool, key: str = "question") -> dict[str, int]:
    """How many training problems also appear (same ``key`` text, whitespace-normalised) in each evaluation set;
    a ValueError naming the counts unless ``allow`` (task.allow_overlap)."""
    seen = {normalized_text(p[key]) for p in train if key in p}
    counts = {name: sum(normalized_text(p[key]) in seen for p in probs if key in p) for name, probs in evaluations.items()}
    shared = {name: n for name, n in counts.items() if n}
    if shared:
        msg = ", ".join(f"{n} of {len(evaluations[name])} problems of {name}" for name, n in shared.items())
        if not allow:
            raise ValueError(
                f"the training data shares problems with evaluation sets ({msg}); remove them, or set "
                "task.allow_overlap=true to train on them anyway"
            )
        log.warning("training on problems that are also evaluated (task.allow_overlap=true): %s", msg)
    return counts


def opens_think(prompt: str) -> bool:
    """Whether a rendered prompt already opened the think block (the R1 templates for base models)."""
    return prompt.rstrip().endswith("<think>")


def with_prompt_info(problem: dict, prompt: str) -> dict:
    """The problem as verifiers see it: every field, plus ``prompt_opens_think`` read from its prompt
    (the one place that fact comes from: the format verifier and the length statistics use it)."""
    if opens_think(prompt) == problem.get("prompt_opens_think", False):
        return problem
    return {**problem, "prompt_opens_think": opens_think(prompt)}
