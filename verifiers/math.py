"""Symbolic math answers: extraction, gold parsing in each data set's format, and comparison.

Extraction (``extract``, in order, the first that finds something wins):
``answer_tag`` (last ``<answer>...</answer>``), ``boxed`` (last ``\\boxed{...}``),
``answer_is`` (the last "the (final) answer is ..."), ``gsm8k`` (after the last
``####``), ``last_number`` (the last number written: lenient, for models that
never box). Default: ``answer_tag`` then ``boxed``.

Gold answers are read in the data's own formats (``gold_format="auto"``): a
GSM8K solution (text after ``####``), a MATH-style solution (its last
``\\boxed{}``, or what follows "The answer is:"), AMC floats such as ``27.0``,
AIME strings such as ``025``, OlympiadBench ``final_answer`` lists (several
elements: all are required, in any order), or plain LaTeX with or without
``$...$``. A gold that does not parse raises :class:`GoldAnswerError` (a data
error, reported with its row).

Comparison: plain numbers (integers, decimals, fractions, thousands commas,
``%``, ``$``) compare exactly without sympy, within ``rel_tol`` (relative);
``abs_tol`` applies only where the gold is itself a decimal, and never beyond
half the gold's size. A percentage on one side only may also mean its
fraction (``50\\%`` is ``50`` or ``0.5``). Constant expressions compare by
value, exactly (``2^{-99}`` is not ``2^{-98}``; math-verify's own numeric
check rounds tiny values to zero). Choice letters, degrees against radians,
inequalities against intervals, ``\\sqrt{-1}`` and radical forms have their own
rules (:mod:`reasonrl.verifiers.math_forms`). Everything else goes to
math-verify (sympy), whose internal signal-based timeouts are off: a slow
comparison is stopped by the scoring pool and reported as ``timeout``, never
silently as wrong. Short text answers compare as
normalised strings. An answer that hedges between different values (several
boxed answers, or "3 or 4") scores 0 with ``info['hedge']``.

It does not run model code or call a network.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from fractions import Fraction
from typing import Any, Mapping, Sequence

from reasonrl.verifiers import math_forms as forms
from reasonrl.verifiers.base import GoldAnswerError, Verdict
from reasonrl.verifiers.extract import _ANSWER, all_boxed, last_boxed

MAX_NESTING = 10  # real final answers nest a few levels ({\frac{\sqrt{2}}{2}} is 2)
MAX_ANSWER_CHARS = 2000  # longer "answers" are not answers; never hand them to sympy
_ANSWER_IS = re.compile(r"(?:final answer|the answer) is[:\s]*\$?(.+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_NUM = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[+-]?\.\d+$")
_HEDGE_SPLIT = re.compile(r"\s+(?:or|and/or)\s+|\\text\{\s*or\s*\}|\\quad\s*\\text\{or\}|\\vee", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    r"(?:cm|m|km|mm|kg|g|mg|s|sec|seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|years?|dollars?|cents?|"
    r"degrees?|units?|inches|inch|feet|foot|ft|miles?|meters?|pounds?|lbs?|ounces?|oz|liters?|l|ml|mph|"
    r"square|sq|cubic|points?|people|students?|apples?|marbles?|cookies?|eggs?|pages?|books?|items?|rad|radians?)"
)


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


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s.strip()


def _gold_strings(value: Any, fmt: str) -> list[str]:
    """The gold answer(s) as strings, read in the data set's own format."""
    if isinstance(value, bool) or value is None:
        raise GoldAnswerError(f"gold answer {value!r} is empty")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise GoldAnswerError(f"gold answer {value!r} is not finite")
        return [str(int(value))] if float(value).is_integer() else [repr(float(value))]
    if isinstance(value, (list, tuple)):
        out = [s for v in value for s in _gold_strings(v, "plain")]
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
            items = ast.literal_eval(s)
        except (ValueError, SyntaxError) as e:
            raise GoldAnswerError(f"gold list {s[:80]!r} does not parse: {e}") from None
        return _gold_strings(list(items), "plain")
    if fmt == "boxed":
        boxed = last_boxed(s)
        if boxed is None and "The answer is:" in s:
            boxed = s.rsplit("The answer is:", 1)[1]
        if boxed is None:
            raise GoldAnswerError(f"gold solution has no \\boxed{{}} answer: ...{s[-80:]!r}")
        return [_strip_dollars(boxed)]
    if fmt != "plain":
        raise ValueError(f"unknown gold_format {fmt!r}; use auto, plain, gsm8k, boxed or list")
    if not s:
        raise GoldAnswerError("gold answer is empty")
    return [_strip_dollars(s)]


_DEGREE_SIGN = re.compile(r"\^\s*\{?\\circ\}?")
_UNIT_WRAPPED = re.compile(r"\\(?:text|mathrm|mbox)\{\s*(" + _UNIT_WORDS + r")\s*\}", re.IGNORECASE)
_UNIT_TRAILING = re.compile(r"\s+" + _UNIT_WORDS + r"\.?$", re.IGNORECASE)
_FRAC = re.compile(r"([+-]?)\\frac\{(\d+)\}\{(\d+)\}")
_SLASH = re.compile(r"([+-]?)(\d+)/(\d+)")


def _clean(s: str) -> str:
    """Light normalisation shared by the numeric and the text paths."""
    s = _strip_dollars(s)
    if "\\" in s or "~" in s:  # the common plain number skips these
        s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ").replace("~", " ")
        s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        s = _DEGREE_SIGN.sub("", s).replace("\\%", "%").replace("\\$", "$")
        s = _UNIT_WRAPPED.sub("", s)
    s = forms.strip_percent_word(s.replace("°", ""))
    return s.strip()


def _as_number(s: str) -> Fraction | None:
    """A plain number (with commas, %, $, a trailing unit word) as a Fraction, else None."""
    t = _clean(s)
    if " " in t:
        t = _UNIT_TRAILING.sub("", t)
    t = t.replace("$", "").replace(" ", "").rstrip(".").rstrip("%")
    m = _FRAC.fullmatch(t) or _SLASH.fullmatch(t)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(num, den) * (-1 if m.group(1) == "-" else 1)
    if len(t) > 60 or not _NUM.match(t):
        return None
    return Fraction(t.replace(",", ""))


@functools.lru_cache(maxsize=65536)
def _traits(gold_text: str) -> tuple[bool, bool]:
    """(written as a decimal, written as a percentage) for a gold answer; cached, golds repeat."""
    return "." in _clean(gold_text), forms.is_percent(gold_text)


_WRAPPED_TEXT = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z' ]{2,}$|^\([A-Ea-e]\)$")


def _norm_text(s: str) -> str | None:
    """A text answer (``\\text{Evelyn}``, ``even``, ``(C)``), normalised; None when it is mathematics."""
    t = _clean(s)
    wrapped = bool(_WRAPPED_TEXT.match(t))
    for _ in range(3):
        t = _TEXT_WRAP.sub(r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().strip(".")
    if not t or not (wrapped or _WORDS.match(t)) or re.search(r"[\\^_{}=+*/<>]|\d", t):
        return None
    return t.lower()


class MathVerifier:
    name = "math"

    def __init__(
        self,
        answer_field: str = "answer",
        gold_format: str = "auto",
        extract: Sequence[str] = ("answer_tag", "boxed"),
        rel_tol: float = 1e-9,
        abs_tol: float = 1e-12,
        float_rounding: int = 6,
    ):
        unknown = set(extract) - {"answer_tag", "boxed", "answer_is", "gsm8k", "last_number"}
        if unknown:
            raise ValueError(f"unknown extract methods {sorted(unknown)}; use answer_tag, boxed, answer_is, gsm8k, last_number")
        self.answer_field = answer_field
        self.gold_format = gold_format
        self.extract_order = tuple(extract)
        self.rel_tol, self.abs_tol, self.float_rounding = rel_tol, abs_tol, float_rounding
        self._gold_cache: dict[str, list[tuple[str, Fraction | None, Any]]] = {}

    # ------------------------------------------------------------ gold
    def check_gold(self, problem: Mapping[str, Any]) -> list[tuple[str, Fraction | None, Any]]:
        """Parsed gold parts [(text, number or None, math-verify parse)], cached by the raw value."""
        raw = problem.get(self.answer_field)
        key = repr(raw)
        if key not in self._gold_cache:
            parts = []
            for text in _gold_strings(raw, self.gold_format):
                num = _as_number(text)
                parsed = None if num is not None else self._parse(text)
                if num is None and not parsed and _norm_text(text) is None:
                    raise GoldAnswerError(f"gold {self.answer_field}={text!r} does not parse")
                parts.append((text, num, parsed))
            self._gold_cache[key] = parts
        return self._gold_cache[key]

    # ------------------------------------------------------------ prediction
    def extract(self, completion: str) -> tuple[str | None, list[str]]:
        """(the answer, every candidate the chosen method found)."""
        for how in self.extract_order:
            if how == "answer_tag":
                found = [x.strip() for x in _ANSWER.findall(completion)]
            elif how == "boxed":
                found = [b.strip() for b in all_boxed(completion)]
            elif how == "answer_is":
                found = [x.strip() for x in _ANSWER_IS.findall(completion)]
            elif how == "last_number":  # lenient fallback for models that never box: the last number written
                found = _LAST_NUMBER.findall(completion)[-1:]
            else:
                found = [completion.rsplit("####", 1)[1].strip()] if "####" in completion else []
            found = [f for f in found if f]
            if found:
                return found[-1], found
        return None, []

    @staticmethod
    def _parse(text: str):
        from math_verify import parse

        text = forms.normalize_imaginary(_strip_dollars(text))
        return parse("$" + text + "$", extraction_config=_extraction_config(), parsing_timeout=None)

    def _equal(self, gold: tuple[str, Fraction | None, Any], pred: str) -> bool:
        text, gnum, gparsed = gold
        pnum = _as_number(pred)
        if gnum is not None and pnum is not None:  # the fast path: plain numbers on both sides
            return self._numbers_equal(text, gnum, pred, pnum)
        gletter, pletter = forms.choice_letter(text), forms.choice_letter(pred)
        if gletter is not None and pletter is not None:  # multiple choice: (B), B, \text{(B)}, (B) 12
            return gletter == pletter
        angle = self._angles_equal(text, pred)
        if angle is not None:
            return angle
        pred = forms.strip_membership(pred)
        gtext = _norm_text(text)
        if gtext is not None:
            ptext = _norm_text(pred)
            return gtext == (ptext if ptext is not None else _clean(pred).strip().lower())
        from math_verify import verify

        if gparsed is None:
            gparsed = self._parse(text)
        pparsed = self._parse(pred)
        if not gparsed or not pparsed:
            return False
        as_sets = self._inequality_vs_set(text, gparsed, pred, pparsed)
        if as_sets is not None:
            return as_sets
        same_value = forms.constants_equal(gparsed[0], pparsed[0])
        if same_value is not None:  # constants: decided by value, exactly (math-verify rounds tiny values to 0)
            return same_value
        if verify(gparsed, pparsed, float_rounding=self.float_rounding, timeout_seconds=None):
            return True
        return _sympy_equal(gparsed[0], pparsed[0]) or forms.radicals_equal(gparsed[0], pparsed[0])

    def _numbers_equal(self, gold_text: str, g: Fraction, pred: str, p: Fraction) -> bool:
        """Plain numbers: exact when both are exact; a percentage on one side only may also mean its fraction."""
        pairs = [(g, p)]
        gold_pct, pred_pct = _traits(gold_text)[1], forms.is_percent(pred)
        if gold_pct and not pred_pct:
            pairs.append((g / 100, p))
        elif pred_pct and not gold_pct:
            pairs.append((g, p / 100))
        return any(self._close(gold_text, a, b) for a, b in pairs)

    def _close(self, gold_text: str, g: Fraction, p: Fraction) -> bool:
        """Relative tolerance; an absolute one only where the gold is a rounded decimal, and never
        wider than half the gold's own size (so it cannot make 1e-12 equal 2e-12, or anything equal 0)."""
        if g == p:
            return True
        size = abs(float(g))
        if not 1e-300 < size < 1e300:  # beyond float range: exact arithmetic
            size, diff = abs(g), abs(g - p)
        else:
            diff = abs(size - abs(float(p))) if (g > 0) == (p > 0) else size + abs(float(p))
        tol = self.rel_tol * size
        if _traits(gold_text)[0]:
            tol = max(tol, min(self.abs_tol, size / 2) if g else self.abs_tol)
        return diff <= tol

    def _angles_equal(self, gold_text: str, pred: str) -> bool | None:
        """Degrees on one side, radians (written with pi) on the other; None when that is not the case."""
        gdeg, pdeg = forms.degrees(gold_text), forms.degrees(pred)
        if (gdeg is None) == (pdeg is None):
            return None
        deg, other = (gdeg, pred) if gdeg is not None else (pdeg, gold_text)
        if not forms.has_pi(other) or forms.has_pi(deg):
            return None
        import sympy

        d, r = self._parse(deg), self._parse(forms.radians(other))
        if not d or not r or not isinstance(d[0], sympy.Expr):
            return False
        return bool(forms.constants_equal(d[0] * sympy.pi / 180, r[0]))

    def _inequality_vs_set(self, gold_text: str, gparsed, pred: str, pparsed) -> bool | None:
        """An inequality (or a union of them) in one variable against a set written as intervals."""
        gparts, pparts = forms.inequality_parts(gold_text), forms.inequality_parts(pred)
        if (gparts is None) == (pparts is None):
            return None
        parts, other = (gparts, pparsed) if gparts is not None else (pparts, gparsed)
        import sympy
        from math_verify import verify

        if not isinstance(other[0], sympy.Set):
            return None
        solution = self._solution_set(parts)
        if solution is None:
            return None
        return bool(verify([other[0]], [solution], float_rounding=self.float_rounding, timeout_seconds=None))

    def _solution_set(self, parts: list[str]):
        """The set of values satisfying the union of inequalities ``parts`` in one shared variable, or None."""
        import sympy

        sets, variables = [], set()
        for part in parts:
            parsed = self._parse(part)
            rel = parsed[0] if parsed else None
            if not isinstance(rel, (sympy.core.relational.Relational, sympy.And)) or len(rel.free_symbols) != 1:
                return None
            variables |= rel.free_symbols
            try:
                sets.append(rel.as_set())
            except Exception:
                return None
        return sympy.Union(*sets) if len(variables) == 1 else None

    def _distinct_values(self, candidates: list[str]) -> bool:
        """True when the candidates are not all the same value (a hedge)."""
        first = candidates[0]
        ref = (first, _as_number(first), None)
        return any(not self._equal(ref, c) for c in candidates[1:])

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None:
        if self.answer_field not in problem:
            return None
        gold = self.check_gold(problem)
        answer, candidates = self.extract(completion)
        if answer is None:
            return Verdict(0.0, "no_answer", {})
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict(0.0, "format_error", {"too_long": 1})
        if too_complex(answer):
            return Verdict(0.0, "wrong", {"too_complex": 1})
        if len(gold) > 1:  # several required parts (OlympiadBench multi-answer): all present, any order
            parts = [p for p in re.split(r",|;|\\text\{\s*and\s*\}|\s+and\s+", _strip_dollars(answer)) if p.strip()]
            if len(parts) != len(gold):
                return Verdict(0.0, "wrong", {"parts": 1})
            left = list(parts)
            for g in gold:
                hit = next((i for i, p in enumerate(left) if self._equal(g, p)), None)
                if hit is None:
                    return Verdict(0.0, "wrong", {})
                left.pop(hit)
            return Verdict(1.0, "correct", {})
        unique = list(dict.fromkeys(c for c in candidates if len(c) <= MAX_ANSWER_CHARS and not too_complex(c)))
        if len(unique) > 1 and self._distinct_values(unique[-4:]):
            return Verdict(0.0, "wrong", {"hedge": 1})
        alternatives = [a for a in _HEDGE_SPLIT.split(answer) if a and a.strip()]
        if (
            len(alternatives) > 1
            and forms.inequality_parts(answer) is None  # "x<-1 or x>1" is one set, not a hedge
            and self._distinct_values(alternatives)
        ):
            return Verdict(0.0, "wrong", {"hedge": 1})
        return Verdict(1.0, "correct", {}) if self._equal(gold[0], answer) else Verdict(0.0, "wrong", {})


def _sympy_equal(a: Any, b: Any) -> bool:
    """Second opinion for plain expressions that math-verify keeps unevaluated (``1*i`` vs ``i``)."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)) or a.has(sympy.oo, -sympy.oo):
        return False
    try:
        diff = sympy.simplify(sympy.sympify(str(a)) - sympy.sympify(str(b)))
    except Exception:  # sympy cannot compare these: not equal, never an exception out of a verifier
        return False
    return diff == 0


_CONFIG: list = []


def _extraction_config() -> list:
    """math-verify's extraction settings, built once (and its timeout warnings silenced: the pool times out)."""
    if not _CONFIG:
        import logging

        from math_verify import ExprExtractionConfig, LatexExtractionConfig
        from math_verify.parser import NormalizationConfig

        for name in ("math_verify", "math_verify.utils", "math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
        norm = NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all")
        _CONFIG.extend([LatexExtractionConfig(normalization_config=norm), ExprExtractionConfig()])
    return _CONFIG
