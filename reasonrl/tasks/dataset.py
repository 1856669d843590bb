"""A task backed by data files: any rows, any verifier, prompts from a template.

``task.name`` is the task's label (it names the ``eval/<name>/...`` metrics);
problems come from ``task.path`` (see :mod:`reasonrl.tasks.sources`: JSONL,
JSON, Parquet, CSV, a saved dataset folder, a hub name), turned into problems
by ``task.format`` (a built-in layout such as ``gsm8k`` or ``mbpp``),
``task.fields`` (problem key -> column) or ``task.row_fn``, filtered by
``task.filter``. Held-out problems come from ``task.eval_path`` (or are set
aside from the training rows).

Prompts: ``task.instruction`` is filled from the problem's fields (a Python
format string, or Jinja with ``task.template_engine=jinja``) and wrapped by
``task.template``: ``chat`` (the tokenizer's chat template, with an optional
``task.system`` message; for instruct models), ``r1`` (the R1-Zero plain-text
prompt ending in ``<think>``; for base models) or ``text`` (the instruction as
it is). With ``task.target`` (say ``{solution}``) the task also provides SFT
demonstrations: the rendered prompt and the filled target.

It does not score: the configured verifiers read the problem's fields.
"""

from __future__ import annotations

from typing import Any, Mapping

from reasonrl.tasks.base import Task

R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and the answer is enclosed within <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\nAssistant: <think>"
)
BOXED_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_INSTRUCTION = "{question}\nWrite the complete Python function in a single ```python code block."
TEMPLATES = ("chat", "r1", "text")


def benchmark_instruction(code: bool, template: str) -> str:
    """What a benchmark asks: a code block for code; for math a boxed answer, except in the R1 prompt,
    which asks for <answer> tags itself."""
    if code:
        return CODE_INSTRUCTION
    return "{question}" if template == "r1" else BOXED_INSTRUCTION


def fill(text: str, problem: Mapping[str, Any], engine: str = "format", what: str = "task.instruction") -> str:
    """``text`` with the problem's fields filled in; a missing field is named."""
    if engine == "jinja":
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            return env.from_string(text).render(**problem)
        except jinja2.UndefinedError as e:
            raise ValueError(f"{what}: {e.message} (the problem's fields: {sorted(problem)})") from None
    if engine != "format":
        raise ValueError(f"task.template_engine must be format or jinja, not {engine!r}")
    try:
        return text.format(**problem)
    except KeyError as e:
        raise ValueError(f"{what} uses the field {e.args[0]!r}, which the problem lacks (fields: {sorted(problem)})") from None


def render(
    problem: Mapping[str, Any],
    template: str,
    tokenizer=None,
    instruction: str = "{question}",
    system: str | None = None,
    engine: str = "format",
    key: str | None = None,
) -> str:
    """The prompt text for ``problem``: the filled instruction, wrapped by ``template`` (chat, r1 or text);
    ``key`` is the config key that chose the template, for error messages."""
    text = fill(instruction, problem, engine)
    if template == "text":
        return text
    if template == "r1":
        return R1_PROMPT.format(question=text)
    if template == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise ValueError(
                _template_error(
                    key,
                    "chat",
                    "needs a tokenizer with a chat template, and this model's has none; for base models use r1 or text",
                )
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(_template_error(key, template, f"is not a template; use one of {', '.join(TEMPLATES)}"))


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _template_error(key: str | None, template: str, problem: str) -> str:
    """A template error naming the key that chose it (the caller's, or every key that chooses a template)."""
    if key:
        return f"{key}={template} {problem}"
    return (
        f"template {template!r} {problem} (the setting: task.template in reasonrl-train and reasonrl-sft, "
        "template in reasonrl-eval, eval.benchmark_template for benchmarks evaluated during training)"
    )


def dataset_task(task_cfg: Any) -> Task:
    """The Task for a ``task`` config node whose problems come from files."""
    if not task_cfg.get("path") and not task_cfg.get("eval_path"):
        raise ValueError(
            f"task {task_cfg.name!r} reads its problems from data: set task.path (a JSONL/JSON/Parquet/CSV file, "
            "a saved dataset folder or a hub name)"
        )
    instruction, system, engine = task_cfg.instruction, task_cfg.get("system"), task_cfg.template_engine

    def render_prompt(problem, template, tokenizer=None):
        return render(problem, template, tokenizer, instruction, system, engine, key="task.template")

    demonstrations = None
    if task_cfg.get("target"):

        def demonstrations(problems, tokenizer, template):
            return [
                {
                    "prompt": render_prompt(p, template, tokenizer),
                    "completion": fill(task_cfg.target, p, engine, "task.target"),
                    "answer": p.get("answer"),
                }
                for p in problems
            ]

    return Task(
        name=task_cfg.name,
        render_prompt=render_prompt,
        templates=TEMPLATES,
        required_fields={},
        from_row=dict,
        file_demonstrations=demonstrations,
    )
