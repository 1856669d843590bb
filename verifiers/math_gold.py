"""Gold answers: read in each data set's own format, and refused when they are not answers at all.

``gold_strings`` reads a GSM8K solution (text after ``####``), a MATH-style
solution (its last ``\\boxed{}``, or what follows "The answer is:"), AMC floats,
AIME strings, OlympiadBench lists (JSON lists, or a list printed as text:
Python's doubled backslashes or LaTeX's single ones), or plain LaTeX.
``unreadable`` says why a gold string cannot be an answer (unbalanced braces, a
dangling operator); ``undefined`` spots ``1/0``. ``too_complex`` flags answers
whose evaluation could take unbounded time in sympy. Pure functions; nothing is
evaluated.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from reasonrl.verifiers.base import GoldAnswerError
from reasonrl.verifiers.extract import last_boxed

MAX_NESTING = 10  # real final answers nest a few levels ({\frac{\sqrt{2}}{2}} is 2)
_EXP_LITERAL = re.compile(r"\^\s*\{?\s*\(?\s*[+-]?(\d+)")
_TOWER = re.compile(r"\^\s*[{(]*\s*[+-]?\d+\s*[})]*\s*\^")  # 9^9^9, 10^{10^{10}}
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!|\(\s*\d[\d\s^{}+*]*\)\s*!")  # 10000!, (10^5)!


def too_complex(text: str) -> bool:
    """Answers whose evaluation could take unbounded time or memory in sympy (never a real final answer):
    power towers, exponents over 10^4, factorials of 1000 and more, or brackets nested over 10 deep."""
    if any(len(d) > 4 for d in _EXP_LITERAL.findall(text)):
        return True
    if _TOWER.search(text):
        return True
    if _BIG_FACTORIAL.search(text):
        return True
    depth = peak = 0
    for ch in text:  # sympy's set/tuple comparison grows exponentially with nesting
        depth += (ch in "{([") - (ch in "})]")
        peak = max(peak, depth)
    return peak > MAX_NESTING


def strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s.strip()


def gold_strings(value: Any, fmt: str) -> list[str]:
    """The gold answer(s) as strings, read in the data set's own format."""
    if isinstance(value, bool) or value is None:
        raise GoldAnswerError(f"gold answer {value!r} is empty")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise GoldAnswerError(f"gold answer {value!r} is not finite")
        return [str(int(value))] if float(value).is_integer() else [repr(float(value))]
    if isinstance(value, (list, tuple)):
        out = [s for v in value for s in gold_strings(v, "plain")]
        if not out:
            raise GoldAnswerError("gold answer list is empty")
        return out
    s = str(value).strip()
    if fmt == "auto":
        if "####" in s:
            fmt = "gsm8k"
        elif s.startswith("['") or s.startswith('["'):  # a Python list of strings rendered as text
            fmt = "list"
        elif "\\boxed" in s or "The answer is:" in s:
            fmt = "boxed"
        else:
            fmt = "plain"
    if fmt == "gsm8k":
        if "####" not in s:
            raise GoldAnswerError(f"gold {s[:80]!r} has no '####' final answer")
        return [s.rsplit("####", 1)[1].strip().replace(",", "")]
    if fmt == "list":
        try:
            # a list written by hand holds LaTeX's single backslashes (\frac would read as a form feed);
            # one printed by Python doubles them
            items = ast.literal_eval(s if "\\\\" in s else s.replace("\\", "\\\\"))
        except (ValueError, SyntaxError) as e:
            raise GoldAnswerError(f"gold list {s[:80]!r} does not parse: {e}") from None
        return gold_strings(list(items), "plain")
    if fmt == "boxed":
        boxed = last_boxed(s)
        if boxed is None and "The answer is:" in s:
            boxed = s.rsplit("The answer is:", 1)[1]
        if boxed is None:
            raise GoldAnswerError(f"gold solution has no \\boxed{{}} answer: ...{s[-80:]!r}")
        return [strip_dollars(boxed)]
    if fmt != "plain":
        raise ValueError(f"unknown gold_format {fmt!r}; use auto, plain, gsm8k, boxed or list")
    if not s:
        raise GoldAnswerError("gold answer is empty")
    return [strip_dollars(s)]


def unreadable(text: str) -> str | None:
    """Why a gold is not an answer at all (unbalanced brackets, a dangling operator or ``=``), else None."""
    t = re.sub(r"\\[{}]", "", text)  # \{ \} are set braces, balanced on their own below
    if text.count("\\{") != text.count("\\}"):
        return "unbalanced \\{ \\}"
    if t.count("{") != t.count("}"):
        return "unbalanced braces"
    opened = t.count("(") + t.count("[")
    closed = t.count(")") + t.count("]")
    if opened != closed:  # half-open intervals pair ( with ] and [ with ): only the totals must agree
        return "unbalanced brackets"
    if re.search(r"(?:[+\-*/=^_,]|\\(?:times|cdot|div|pm|mp|left|right|frac|sqrt))\s*$", t):
        return "it ends in an operator"
    if re.match(r"^\s*(?:=|[*/^_])", t):
        return "it starts with an operator"
    return None


def undefined(value: Any) -> bool:
    """True for sympy's undefined values (``1/0`` is zoo, ``0/0`` nan)."""
    import sympy

    return isinstance(value, sympy.Basic) and bool(value.has(sympy.zoo, sympy.nan))
