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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonrl.data import DataError, load_jsonl

# name -> (question field, gold field, reference field)
FORMATS: dict[str, tuple[str, str, str]] = {
    "gsm8k": ("question", "answer", "answer"),
    "math500": ("question", "answer", "answer"),
    "aime24": ("question", "answer", "answer"),
    "amc23": ("question", "answer", "answer"),
    "minerva_math": ("problem", "solution", "solution"),
    "olympiadbench": ("question", "final_answer", "final_answer"),
}


def _rows(path: str, split: str) -> list[dict[str, Any]]:
    if Path(path).is_file():
        return load_jsonl(path)
    if path.endswith((".jsonl", ".json")):  # a file path, not a hub name: never fall through to a download
        raise FileNotFoundError(f"benchmark data {path!r} is not a local file")
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(f"benchmark data {path!r} is not a local file, and the `datasets` library is not "
                                "installed to load it from a hub (pip install datasets)") from None
    return [dict(r) for r in datasets.load_dataset(path, split=split)]


def load_benchmark(name: str, path: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    if name not in FORMATS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(FORMATS)}")
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


