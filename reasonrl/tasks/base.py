"""The task contract: :class:`Task` (what a task provides) and :class:`ProblemStream` (resumable problems)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence


@dataclass(frozen=True)
class Task:
    name: str
    render_prompt: Callable[..., str]  # (problem, template, tokenizer) -> prompt text
    templates: tuple[str, ...]
    required_fields: Mapping[str, type | tuple[type, ...]]  # of a file row
    from_row: Callable[[Mapping[str, Any]], dict]  # file row -> problem
    # a generated world's own knobs (the arithmetic world's shape and template) are bound when the task is built
    # from its config node, so every caller gets problems of that one shape
    heldout: Callable[..., list[dict]] | None = None  # (n) -> the fixed held-out set
    train_stream: Callable[..., "ProblemStream"] | None = None  # (seed) -> stream, disjoint from the held-out set
    demonstrations: Callable[..., list[dict]] | None = None  # (n, seed, flaw_frac=...) -> {prompt, completion, answer}
    # demonstrations made from data problems: (problems, tokenizer, template) -> {prompt, completion, answer}
    file_demonstrations: Callable[..., list[dict]] | None = None

    def provides(self, what: str) -> bool:
        if what == "demonstrations":
            return self.demonstrations is not None or self.file_demonstrations is not None
        return getattr(self, what) is not None

    def need(self, what: str, hint: str) -> Callable:
        """The provided function ``what``, or a ValueError that names the task, what it lacks and ``hint``."""
        fn = getattr(self, what)
        if not self.provides(what):
            offered = [k for k in ("heldout", "train_stream", "demonstrations") if self.provides(k)]
            raise ValueError(f"task {self.name!r} provides no {what} (it provides: {offered or 'files only'}); {hint}")
        return fn


class ProblemStream:
    """An endless, seeded iterator of training problems whose position is part of a checkpoint."""

    def __next__(self) -> dict:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        return self

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class ShuffledRows(ProblemStream):
    """File rows, each pass in a new seeded order."""

    def __init__(self, rows: Sequence[dict], seed: int):
        self.rows, self.rng = list(rows), random.Random(seed)
        self.order: list[int] = []
        self.pos = 0

    def __next__(self) -> dict:
        if self.pos >= len(self.order):
            self.order = list(range(len(self.rows)))
            self.rng.shuffle(self.order)
            self.pos = 0
        row = self.rows[self.order[self.pos]]
        self.pos += 1
        return row

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_tuplify(state["rng"]))
        self.order, self.pos = list(state["order"]), int(state["pos"])


def _tuplify(x):
    """random.Random states come back from a checkpoint as lists; setstate wants tuples."""
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
