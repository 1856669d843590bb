"""The arithmetic world: a seeded, self-contained task for CPU-minute RL.

Problems are sums of ``n_terms`` numbers of ``digits`` digits, asked as
``Q:47+85+29=?``. Two ways to solve them are written the same way everywhere
(pretraining corpus, demonstrations, verifiers):

* direct:        ``<think></think><answer>161</answer>``
* step by step:  ``<think>7+5+9=21 4+8+2+2=16</think><answer>161</answer>``
  column by column from the ones digit, each step a sum of single digits plus
  the carry from the previous column; the answer is the last column's sum
  followed by the lower digits already written.
* tool call:     ``<think><python>print(47+85+29)</python><output>161</output></think><answer>161</answer>``
  the world's tool-use variant: the model writes the code, a sandbox runs it
  and the agent loop appends ``<output>{stdout, stripped}</output>`` as
  observation tokens (the model's turn stops at ``</python>``). Only a
  tokenizer with :data:`TOOL_TAGS` and :data:`TOOL_CHARS` can write it (the
  ``arith_tools`` corpus of :mod:`reasonrl.tiny`).

A tiny model cannot add three 2-digit numbers in one shot in CPU minutes but
can learn the single-digit column facts, so step by step is genuinely easier
than answering directly: that is what RL has to discover when the base model
was pretrained on a corpus that mostly answers directly.

The held-out set is fixed (its own seed) and never appears in the training
stream, the pretraining corpus or the demonstrations.

:func:`task` is the world as a run sees it: one object built from the ``task``
config node, whose held-out set, training stream and demonstrations all have
the node's shape (``n_terms``, ``digits``) and prompts (``template``), so the
cold start, ``reasonrl-sft``, RL and evaluation see the same problems. The
module-level functions take the shape as arguments (defaults: the schema's).

It does not load files: :mod:`reasonrl.data` validates external rows.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any

from reasonrl.tasks.base import ProblemStream, Task, _tuplify

HELDOUT_SEED = 20_241_126
DEMO_SEED_OFFSET = 7919  # demonstrations draw from their own stream, never the training stream of the same seed
CHARSET = list("0123456789+=?Q: ")
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
# the tool-use variant: its tags (single tokens) and the characters a tool call adds to CHARSET
TOOL_TAGS = ["<python>", "</python>", "<output>", "</output>"]
TOOL_CHARS = list("print()")

# Prompt templates by name. ``r1`` leaves the whole R1 structure to the model;
# ``r1_think`` opens the think block in the prompt (verifiers and length
# statistics read that from the rendered prompt: reasonrl.tasks.opens_think).
TEMPLATES = {
    "r1": "Q:{question}=?",
    "r1_think": "Q:{question}=?<think>",
}


REQUIRED_FIELDS = {"question": str, "answer": (str, int)}


def from_row(row: dict) -> dict:
    """A problem from a file row (``question`` like ``47+85+29``, ``answer``)."""
    return {**row, "answer": str(row["answer"])}


def render_prompt(problem: dict, template: str = "r1", tokenizer=None) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown arith template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(question=problem["question"])


def make_problem(numbers: tuple[int, ...]) -> dict:
    return {
        "question": "+".join(str(x) for x in numbers),
        "answer": str(sum(numbers)),
        "numbers": list(numbers),
    }


def _random_terms(rng: random.Random, n_terms: int, digits: int) -> tuple[int, ...]:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return tuple(rng.randint(lo, hi) for _ in range(n_terms))


def heldout(n: int = 500, n_terms: int = 3, digits: int = 2) -> list[dict]:
    """The fixed held-out set (same for every run seed)."""
    rng = random.Random(HELDOUT_SEED)
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < n:
        nums = _random_terms(rng, n_terms, digits)
        if nums not in seen:
            seen.add(nums)
            out.append(make_problem(nums))
    return out


class ArithStream(ProblemStream):
    """An endless seeded stream of training problems, disjoint from the held-out set."""

    def __init__(self, seed: int, n_terms: int = 3, digits: int = 2, heldout_n: int = 500):
        self.n_terms, self.digits = n_terms, digits
        self.excluded = {tuple(p["numbers"]) for p in heldout(heldout_n, n_terms, digits)}
        self.rng = random.Random(seed)

    def __next__(self) -> dict:
        while True:
            nums = _random_terms(self.rng, self.n_terms, self.digits)
            if nums not in self.excluded:
                return make_problem(nums)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_tuplify(state["rng"]))


def column_steps(numbers: tuple[int, ...] | list[int]) -> tuple[list[str], int]:
    """Column-wise steps ``['7+5+9=21', '4+8+2+2=16']`` and the final sum."""
    width = max(len(str(x)) for x in numbers)
    carry, steps = 0, []
    for col in range(width):
        column = [(x // 10**col) % 10 for x in numbers if x >= 10**col]
        terms = column + ([carry] if carry else [])
        total = sum(terms)
        steps.append("+".join(str(t) for t in terms) + f"={total}")
        carry = total // 10
    return steps, sum(numbers)


def tool_code(numbers) -> str:
    """The code a tool call runs for a problem: ``print(47+85+29)``."""
    return f"print({'+'.join(str(x) for x in numbers)})"


def solution(numbers, style: str) -> str:
    """The completion for a problem, in ``direct``, ``steps`` or ``tool`` style (the tool's output written in,
    as the agent loop appends it)."""
    steps, total = column_steps(numbers)
    if style == "tool":
        return f"<think><python>{tool_code(numbers)}</python><output>{total}</output></think><answer>{total}</answer>"
    think = " ".join(steps) if style == "steps" else ""
    if style not in ("steps", "direct"):
        raise ValueError(f"unknown solution style {style!r}")
    return f"<think>{think}</think><answer>{total}</answer>"


_PRINT_SUM = re.compile(r"print\((\d+(?:\+\d+)*)\)")


def tool_call(completion: str) -> str | None:
    """The code of a completion's first tool call (between ``<python>`` and ``</python>``), None without one."""
    m = re.search(r"<python>(.*?)</python>", completion, re.S)
    return m.group(1) if m else None


def tool_value(code: str) -> int | None:
    """What ``code`` prints when it is ``print(a+b+...)`` of integers, else None (evaluated here, not run)."""
    m = _PRINT_SUM.fullmatch(code.strip())
    return sum(int(t) for t in m.group(1).split("+")) if m else None


def pretrain_corpus(
    n: int,
    seed: int,
    *,
    steps_frac: float = 0.2,
    short_frac: float = 0.3,
    n_terms: int = 3,
    digits: int = 2,
    tool_frac: float = 0.0,
) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for the base model.

    Most solutions answer directly, ``steps_frac`` of them reason column by
    column and ``tool_frac`` of them call the tool (``tool`` style: a tokenizer
    with :data:`TOOL_TAGS` and :data:`TOOL_CHARS` only); ``short_frac`` extra
    rows are sums of 3-4 single digits answered directly, so the column facts
    themselves are learned. One draw picks a full problem's style, so tool rows
    take the place of direct ones and ``tool_frac=0`` gives the corpus it gave
    before the tool style existed, row for row.
    """
    if not (0.0 <= tool_frac and 0.0 <= steps_frac and steps_frac + tool_frac <= 1.0):
        raise ValueError(f"steps_frac={steps_frac} and tool_frac={tool_frac} must be shares of at most 1 together")
    rng = random.Random(seed)
    stream = ArithStream(seed, n_terms, digits)
    out = []
    for _ in range(n):
        if rng.random() < short_frac / (1 + short_frac):
            nums = tuple(rng.randint(0, 9) for _ in range(rng.choice((3, 4))))
            out.append((render_prompt(make_problem(nums)), solution(nums, "direct")))
        else:
            p = next(stream)
            r = rng.random()
            style = "steps" if r < steps_frac else "tool" if r < steps_frac + tool_frac else "direct"
            out.append((render_prompt(p), solution(p["numbers"], style)))
    return out


def _flaw(rng: random.Random, numbers) -> str:
    """One human-like mistake: a slipped column sum, a miscopied answer, or a lazy direct guess."""
    steps, total = column_steps(numbers)
    kind = rng.choice(("slip", "copy", "guess"))
    if kind == "slip":
        i = rng.randrange(len(steps))
        delta = rng.choice((-1, 1))
        lhs, rhs = steps[i].split("=")
        steps[i] = f"{lhs}={max(int(rhs) + delta, 0)}"
        return f"<think>{' '.join(steps)}</think><answer>{total + delta * 10**i}</answer>"
    if kind == "copy":
        return f"<think>{' '.join(steps)}</think><answer>{total + rng.choice((-10, 10))}</answer>"
    return f"<think></think><answer>{total + rng.choice((-2, -1, 1, 2))}</answer>"


def demonstrations(
    n: int,
    seed: int,
    *,
    flaw_frac: float = 0.15,
    n_terms: int = 3,
    digits: int = 2,
    heldout_n: int = 500,
    template: str = "r1",
) -> list[dict]:
    """Formatted step-by-step demonstrations for a cold start, ``flaw_frac`` of them flawed.

    Rows: {"prompt", "completion", "answer"} where ``answer`` is the true sum, so
    the demonstrations' own accuracy can be measured. A template that opens the
    think block in the prompt (``r1_think``) gets completions that continue it.
    """
    rng = random.Random(seed + DEMO_SEED_OFFSET)
    stream = ArithStream(seed + DEMO_SEED_OFFSET, n_terms, digits, heldout_n)
    out = []
    for _ in range(n):
        p = next(stream)
        text = solution(p["numbers"], "steps")
        if rng.random() < flaw_frac:
            text = _flaw(rng, p["numbers"])
        prompt = render_prompt(p, template)
        if prompt.endswith("<think>"):  # the prompt wrote the opening tag; the model writes what follows it
            text = text.removeprefix("<think>")
        out.append({"prompt": prompt, "completion": text, "answer": p["answer"]})
    return out


def task(cfg: Any) -> Task:
    """The arithmetic world a ``task`` config node describes: its held-out set, training stream and
    demonstrations all take the node's ``n_terms``, ``digits``, ``template`` and ``heldout_size``."""
    if cfg.template not in TEMPLATES:
        raise ValueError(f"task.template={cfg.template} is not an arith template; known: {', '.join(TEMPLATES)}")
    if cfg.n_terms < 1 or cfg.digits < 1:
        raise ValueError(f"task.n_terms and task.digits must be at least 1, not {cfg.n_terms} and {cfg.digits}")
    shape = {"n_terms": cfg.n_terms, "digits": cfg.digits}
    return Task(
        name="arith",
        render_prompt=render_prompt,
        templates=tuple(TEMPLATES),
        required_fields=REQUIRED_FIELDS,
        from_row=from_row,
        heldout=functools.partial(heldout, **shape),
        train_stream=functools.partial(ArithStream, **shape, heldout_n=cfg.heldout_size),
        # demonstrations avoid the 500-problem held-out set whatever a run sets aside (so the same seed gives the
        # same demonstrations at any task.heldout_size up to it), and the run's own beyond it
        demonstrations=functools.partial(demonstrations, **shape, heldout_n=max(cfg.heldout_size, 500), template=cfg.template),
    )
