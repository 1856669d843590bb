"""Symbolic math answers: extraction, gold parsing in each data set's format, and comparison.

Extraction (``extract``, in order, the first that finds something wins):
``answer_tag`` and ``boxed`` together (every ``<answer>...</answer>`` and
``\\boxed{...}`` in the order written, boxes inside a closed ``<think>`` block
left out), ``answer_is`` (the last "the (final) answer is ..."), ``gsm8k``
(after the last ``####``), ``last_number`` (the last number written: lenient,
for models that never box). Default: ``answer_tag`` then ``boxed``.

Which candidate counts (:mod:`reasonrl.verifiers.math_answers`): the last. All
candidates must agree: an answer tag and a box, or two boxes, with different
values and nothing between them taking the earlier back, are a hedge (score 0,
``info['hedge']``). A retraction cue between them ("wait", "actually", "I made
a mistake", "double-counted") makes the later one a correction, and only it is
judged (so writing two answers gains nothing). A retraction after the last
candidate that states another value ("\\boxed{12}. Wait, I double-counted; the
total is 14.") replaces it with that value (``info['retracted']``). The cues
are a heuristic; tests pin both what they catch and what they leave alone
("Check: 3 \\times 4 = 12", "Wait, let me verify: ... Yes.").

Gold answers are read in the data's own formats (``gold_format="auto"``): a
GSM8K solution (text after ``####``), a MATH-style solution (its last
``\\boxed{}``, or what follows "The answer is:"), AMC floats such as ``27.0``,
AIME strings such as ``025``, OlympiadBench ``final_answer`` lists (several
elements: all are required, in any order), or plain LaTeX with or without
``$...$``. A gold that does not read as mathematics (unbalanced braces, a
dangling operator, ``1/0``, or a string math-verify returns unparsed) raises
:class:`GoldAnswerError` (a data error, reported with its row); it never
becomes a gold that only matches itself.

Comparison: written numbers (integers, decimals, fractions, thousands commas,
``%``, ``$``, scientific notation ``4.5e33`` / ``4.5\\times10^{33}``, repeating
decimals ``0.\\overline{12}``, mixed numbers ``33\\frac{1}{3}\\%``, a number with
its unit inside one ``\\text{}``) are read as exact rationals
(:mod:`reasonrl.verifiers.math_numbers`) without sympy. An exact gold (an
integer or a fraction) is matched exactly, at any size; ``rel_tol`` applies
only where the gold is written as a decimal, or a decimal stands for a
fraction with no finite expansion (``0.333333333333`` for ``1/3``); ``abs_tol``
only where the gold is a decimal, never beyond half its size. A gold declared
rounded (``gold_precision="significant"``, or a row's ``gold_precision`` field,
which the ``minerva_math`` format sets) stands for every value within half a
unit of its last significant digit (``4.5e33`` accepts ``4.52\\times10^{33}``).
A percentage on one side only may also mean its fraction (``50\\%`` is ``50``
or ``0.5``). Constant expressions compare by value, exactly (``2^{-99}`` is not
``2^{-98}``; math-verify's own numeric check rounds tiny values to zero).

A gold that lists several values (``1,-2``, an OlympiadBench list,
``1\\pm\\sqrt{19}``) needs all of them, in any order, however they are joined
(commas, "or", "and", ``n = ... \\text{ or } n = ...``); against a single value,
alternatives are a hedge. ``\\pm`` expands into its sign choices. Choice
letters, degrees against radians, inequalities against intervals,
``\\sqrt{-1}``, radical forms, the empty set and infinity, bases (``2516_8``),
named coordinates (``y=5, x=-3`` for ``(-3, 5)``) have their own rules
(:mod:`reasonrl.verifiers.math_forms`, :mod:`reasonrl.verifiers.math_answers`).
Everything else goes to math-verify (sympy), whose internal signal-based
timeouts are off: a slow comparison is stopped by the scoring pool and
reported as ``timeout``, never silently as wrong; its second opinion reads the
symbol ``i`` as the imaginary unit and hyperbolic functions as exponentials.
Short text answers compare as normalised strings (articles and "function"
dropped: ``an odd function`` is ``odd``).

It does not run model code or call a network. Extraction is linear in the
completion's length; answers over ``MAX_ANSWER_CHARS`` never reach sympy.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any, Mapping, Sequence

from reasonrl.verifiers import math_answers as answers
from reasonrl.verifiers import math_forms as forms
from reasonrl.verifiers import math_numbers as nums
from reasonrl.verifiers.base import GoldAnswerError, Verdict
from reasonrl.verifiers.math_gold import MAX_NESTING, too_complex  # noqa: F401 (part of this module's interface)
from reasonrl.verifiers.math_gold import gold_strings as _gold_strings
from reasonrl.verifiers.math_gold import strip_dollars as _strip_dollars
from reasonrl.verifiers.math_gold import undefined as _undefined
from reasonrl.verifiers.math_gold import unreadable as _unreadable

MAX_ANSWER_CHARS = 2000  # longer "answers" are not answers; never hand them to sympy
_ANSWER_IS = re.compile(r"(?:final answer|the answer) is[:\s]*\$?(.+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_NUM = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[+-]?\.\d+$")
_HEDGE_SPLIT = re.compile(r"\s+(?:or|and/or)\s+|\\text\{\s*or\s*\}|\\quad\s*\\text\{or\}|\\vee", re.IGNORECASE)
_AND_SPLIT = re.compile(r"\s+and\s+|\\text\{\s*and\s*\}", re.IGNORECASE)
_E_LATEX = re.compile(r"(?<![\w\\.])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d{1,4})(?![\w.])")
_TEXT_NUMBER = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textrm)\s*\{\s*\$?\s*([+-]?[\d.,]+)\s*([A-Za-z][A-Za-z .'/-]*)?\}$")
_E_SUBSCRIPT = re.compile(r"(?<![\\A-Za-z])E(?=\s*_)")
_GAMMA_SYMBOL = re.compile(r"\\gamma(?![A-Za-z])(?!\s*(?:\(|\\left\())")
_LIST_WORDS = re.compile(r"\b(?:or|and)\b", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    r"(?:cm|m|km|mm|kg|g|mg|s|sec|seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|years?|dollars?|cents?|"
    r"degrees?|units?|inches|inch|feet|foot|ft|miles?|meters?|pounds?|lbs?|ounces?|oz|liters?|l|ml|mph|"
    r"square|sq|cubic|points?|people|students?|apples?|marbles?|cookies?|eggs?|pages?|books?|items?|rad|radians?)"
)


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
    """A written number (commas, %, $, a trailing unit word, scientific notation, a repeating decimal, a mixed
    number, a number and its unit inside one ``\\text{}``) as the exact Fraction it denotes, else None."""
    t = _clean(s)
    m = _TEXT_NUMBER.match(t)
    if m and not _LIST_WORDS.search(m.group(2) or ""):  # \text{150 cm}, \textbf{48 apples}
        t = m.group(1)
    if " " in t:
        t = _UNIT_TRAILING.sub("", t)
    t = t.replace("$", "").strip()
    if t.endswith("%"):
        t = t[:-1].strip()
    if "\\" in t or "e" in t or "E" in t or "..." in t or "…" in t:
        special = nums.literal(t)
        if special is not None:
            return special
    t = t.replace(" ", "").rstrip(".").rstrip("%")
    m = _FRAC.fullmatch(t) or _SLASH.fullmatch(t)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(num, den) * (-1 if m.group(1) == "-" else 1)
    if len(t) > 60 or not _NUM.match(t):
        return None
    return Fraction(t.replace(",", ""))


@functools.lru_cache(maxsize=65536)
def _traits(gold_text: str) -> tuple[bool, bool, Fraction | None]:
    """(written as a decimal, written as a percentage, half a unit in its last significant digit) for a gold
    answer; cached, golds repeat."""
    t = _clean(gold_text).replace("$", "").rstrip("%").strip()
    return nums.written_as_decimal(t), forms.is_percent(gold_text), nums.half_unit(t)


_WRAPPED_TEXT = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z' ]{2,}$|^\([A-Ea-e]\)$")
_ARTICLE = re.compile(r"^(?:(?:the answer is|it is|it's|this is|the function is|the curve is|the graph is)\s+)?(?:a|an|the)\s+")
_QUALIFIED = re.compile(r"^(?:(?:the )?function is |it is |it's )?(.+?)(?: functions?| curves?| graphs?)?$")
_TEXT_SYNONYMS = {"neither even nor odd": "neither", "neither odd nor even": "neither"}


def _norm_text(s: str) -> str | None:
    """A text answer (``\\text{Evelyn}``, ``even``, ``(C)``), normalised; None when it is mathematics. Leading
    articles and "the function is" go, as do trailing "function"/"curve" (``an odd function`` is ``odd``)."""
    t = _clean(s)
    wrapped = bool(_WRAPPED_TEXT.match(t))
    for _ in range(3):
        t = _TEXT_WRAP.sub(r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().strip(".")
    if not t or not (wrapped or _WORDS.match(t)) or re.search(r"[\\^_{}=+*/<>]|\d", t):
        return None
    t = _ARTICLE.sub("", t.lower())
    t = _QUALIFIED.match(t).group(1)
    t = _ARTICLE.sub("", t)
    return _TEXT_SYNONYMS.get(t, t)


Gold = tuple[str, Fraction | None, Any]  # (text, exact number or None, math-verify parse or None)
GOLD_PRECISIONS = ("exact", "significant")


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
        gold_precision: str = "exact",
    ):
        unknown = set(extract) - {"answer_tag", "boxed", "answer_is", "gsm8k", "last_number"}
        if unknown:
            raise ValueError(f"unknown extract methods {sorted(unknown)}; use answer_tag, boxed, answer_is, gsm8k, last_number")
        if gold_precision not in GOLD_PRECISIONS:
            raise ValueError(f"unknown gold_precision {gold_precision!r}; use one of {GOLD_PRECISIONS}")
        self.answer_field = answer_field
        self.gold_format = gold_format
        self.gold_precision = gold_precision
        self.extract_order = tuple(extract)
        self.rel_tol, self.abs_tol, self.float_rounding = rel_tol, abs_tol, float_rounding
        self._gold_cache: dict[str, tuple[list[Gold], list[Gold]]] = {}

    # ------------------------------------------------------------ gold
    def check_gold(self, problem: Mapping[str, Any]) -> list[Gold]:
        """Parsed gold parts [(text, number or None, math-verify parse)], cached by the raw value."""
        return self._gold(problem)[0]

    def _gold(self, problem: Mapping[str, Any]) -> tuple[list[Gold], list[Gold]]:
        """(the gold parts as written, the values they list: ``1,-2`` and ``1\\pm\\sqrt{19}`` are two)."""
        raw = problem.get(self.answer_field)
        key = repr(raw)
        if key not in self._gold_cache:
            parts = [self._read_gold(answers.normalize(text)) for text in _gold_strings(raw, self.gold_format)]
            values = parts
            if len(parts) == 1:
                listed = answers.items(parts[0][0])
                if len(listed) > 1:
                    values = [self._read_gold(t) for t in listed]
            self._gold_cache[key] = (parts, values)
        return self._gold_cache[key]

    def _read_gold(self, text: str) -> Gold:
        """One gold value, read now: a gold that cannot be read is a data error, never a string that matches only
        itself (math-verify returns the input string when it parses nothing)."""
        num = _as_number(text)
        if num is not None:
            return text, num, None
        if text in ("\\emptyset", "\\infty") or answers.base_number(text) or _norm_text(text) is not None:
            return text, None, None
        problem = _unreadable(text)
        parsed = None if problem else self._parse(text)
        if not problem and not (parsed and not isinstance(parsed[0], str)):
            problem = "math-verify reads no expression in it"
        if not problem and _undefined(parsed[0]):
            problem = "its value is undefined (a division by zero?)"
        if problem:
            raise GoldAnswerError(f"gold {self.answer_field}={text!r} does not parse: {problem}")
        return text, None, parsed

    # ------------------------------------------------------------ prediction
    def extract(self, completion: str) -> tuple[str | None, list[str]]:
        """(the answer, every candidate the chosen method found)."""
        found = self._candidates(completion)
        return (found[-1][2], [c[2] for c in found]) if found else (None, [])

    def _candidates(self, completion: str) -> list[tuple[int, int, str]]:
        """(start, end, text) of the candidates of the first extraction method that finds any; the answer tag and
        the boxes are one method (their candidates must agree), in the order written."""
        for how in self.extract_order:
            if how in ("answer_tag", "boxed"):
                found = answers.candidates(completion, self.extract_order)
            elif how == "answer_is":
                found = [(m.start(1), m.end(1), m.group(1).strip()) for m in _ANSWER_IS.finditer(completion)]
            elif how == "last_number":  # lenient fallback for models that never box: the last number written
                found = [(m.start(), m.end(), m.group(0)) for m in _LAST_NUMBER.finditer(completion)][-1:]
            else:
                at = completion.rfind("####")
                found = [(at + 4, len(completion), completion[at + 4 :].strip())] if at >= 0 else []
            found = [f for f in found if f[2]]
            if found:
                return found
        return []

    @staticmethod
    def _parse(text: str):
        from math_verify import parse

        text = forms.normalize_imaginary(_strip_dollars(text))
        text = _E_LATEX.sub(r"\1\\times10^{\2}", text)  # 4.5e33: e is not Euler's number here
        if "E" in text:  # E_{1} (an energy level) is a name; math-verify reads E as Euler's number and gives up
            text = _E_SUBSCRIPT.sub(r"\\mathcal{E}", text)
        if "\\gamma" in text:  # \gamma alone is a symbol (a Lorentz factor), not sympy's gamma function
            text = _GAMMA_SYMBOL.sub(r"\\epsilon_{gamma}", text)
        return parse("$" + text + "$", extraction_config=_extraction_config(), parsing_timeout=None)

    def _equal(self, gold: Gold, pred: str, rounded: bool = False) -> bool:
        text, gnum, gparsed = gold
        if gnum is not None:  # the fast path: plain numbers on both sides (no choice letter is a number)
            pnum = _as_number(pred)
            if pnum is not None:
                return self._numbers_equal(text, gnum, pred, pnum, rounded)
        gletter, pletter = forms.choice_letter(text), forms.choice_letter(pred)
        if gletter is not None and pletter is not None:  # multiple choice: (B), B, \text{(B)}, (B) 12
            return gletter == pletter
        if pletter is not None:  # a numeric gold (AMC's 27.0) against "\textbf{(C) }27": the value counts
            pred = forms.after_choice(pred) or pred
        pnum = _as_number(pred)
        if gnum is not None and pnum is not None:  # the value after a choice label, against a numeric gold
            return self._numbers_equal(text, gnum, pred, pnum, rounded)
        if "\\emptyset" in (text, pred) or "\\infty" in (text, pred):
            return text == pred
        gbase, pbase = answers.base_number(text), answers.base_number(pred)
        if gbase is not None or pbase is not None:
            return _bases_equal(gbase, text, pbase, pred)
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
        if rounded and gnum is not None:  # a rounded gold against an expression: its value, to the gold's digits
            value = forms.constant_value(pparsed[0])
            return value is not None and self._numbers_equal(text, gnum, pred, value, rounded)
        exact = forms.rational(gparsed[0]) if pnum is not None else None
        if exact is not None:  # 2^{100} against a written number: exactly (a 17-digit decimal is not 2^{100})
            return self._numbers_equal(text, exact, pred, pnum, rounded)
        as_sets = self._inequality_vs_set(text, gparsed, pred, pparsed)
        if as_sets is not None:
            return as_sets
        same_value = forms.constants_equal(gparsed[0], pparsed[0])
        if same_value is not None:  # constants: decided by value, exactly (math-verify rounds tiny values to 0)
            return same_value
        if verify(gparsed, pparsed, float_rounding=self.float_rounding, timeout_seconds=None):
            return True
        return forms.sympy_equal(gparsed[0], pparsed[0]) or forms.radicals_equal(gparsed[0], pparsed[0])

    def _numbers_equal(self, gold_text: str, g: Fraction, pred: str, p: Fraction, rounded: bool = False) -> bool:
        """Plain numbers: exact when both are exact; a percentage on one side only may also mean its fraction."""
        pairs = [(g, p)]
        gold_pct, pred_pct = _traits(gold_text)[1], forms.is_percent(pred)
        if gold_pct and not pred_pct:
            pairs.append((g / 100, p))
        elif pred_pct and not gold_pct:
            pairs.append((g, p / 100))
        return any(self._close(gold_text, a, b, pred, rounded) for a, b in pairs)

    def _close(self, gold_text: str, g: Fraction, p: Fraction, pred: str = "", rounded: bool = False) -> bool:
        """An exact gold (an integer or a fraction) is matched exactly (``1000000008`` is not ``1000000007``, and a
        17-digit decimal is not a 30-digit integer), except that a written decimal may stand for a fraction with
        no finite expansion (``0.333333333333`` for ``1/3``) within ``rel_tol``. A gold written as a decimal is
        approximate: ``rel_tol`` relative, or ``abs_tol`` absolute (never wider than half the gold's own size).
        A gold declared rounded (``gold_precision=significant``) stands for every value within half a unit of its
        last significant digit."""
        if g == p:
            return True
        gold_decimal, _, half = _traits(gold_text)
        if rounded and half is not None:
            return abs(g - p) <= half
        tol = Fraction(self.rel_tol) * abs(g)
        if gold_decimal:
            return abs(g - p) <= max(tol, min(Fraction(self.abs_tol), abs(g) / 2) if g else Fraction(self.abs_tol))
        if nums.terminates(g) or not nums.written_as_decimal(_clean(pred).rstrip("%")):
            return False
        return abs(g - p) <= tol

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

    def _same(self, a: str, b: str, rounded: bool = False) -> bool:
        return self._equal((a, _as_number(a), None), b, rounded)

    def _distinct_values(self, candidates: list[str]) -> bool:
        """True when the candidates are not all the same value (a hedge)."""
        return any(not self._same(candidates[0], c) for c in candidates[1:])

    def _final(self, completion: str, found: list[tuple[int, int, str]]) -> tuple[str | None, dict]:
        """The answer the completion stands by, or (None, why): candidates that disagree with no retraction
        between them are a hedge; one that a later candidate corrects ("wait, ...") is replaced; a retraction
        after the last one that states another value voids it."""
        usable = [c for c in found if len(c[2]) <= MAX_ANSWER_CHARS and not too_complex(c[2])]
        last = found[-1]
        answer = answers.normalize(last[2])
        if usable and usable[-1] is last:
            tail = usable[-5:]
            for k in range(len(tail) - 2, -1, -1):
                if self._same(answer, answers.normalize(tail[k][2])):
                    continue
                if answers.corrected(completion[tail[k][1] : tail[k + 1][0]]):
                    break  # everything before a correction is taken back
                return None, {"hedge": 1}
            stated = answers.retracted_value(completion[last[1] :])
            if stated is not None and not self._same(answer, stated):
                return stated, {"retracted": 1}  # "\boxed{12}. Wait, I double-counted; the total is 14.": 14
        return answer, {}

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None:
        if self.answer_field not in problem:
            return None
        parts, values = self._gold(problem)
        rounded = problem.get("gold_precision", self.gold_precision) == "significant"
        found = self._candidates(completion)
        if not found:
            return Verdict(0.0, "no_answer", {})
        if len(found[-1][2]) > MAX_ANSWER_CHARS:
            return Verdict(0.0, "format_error", {"too_long": 1})
        if too_complex(found[-1][2]):
            return Verdict(0.0, "wrong", {"too_complex": 1})
        answer, why = self._final(completion, found)
        if answer is None:
            return Verdict(0.0, "wrong", why)
        verdict = self._judge(parts, values, answer, rounded)
        return Verdict(verdict.score, verdict.status, {**verdict.info, **why}) if why else verdict

    def _judge(self, parts: list[Gold], values: list[Gold], answer: str, rounded: bool) -> Verdict:
        """The verdict on the answer the completion stands by."""
        if len(values) > 1:  # several values (1,-2; an OlympiadBench list; 1\pm\sqrt{19}): all of them, any order
            listed = answers.items(answer)
            if any(map(answers.is_assignment, listed)) and not any(answers.is_assignment(g[0]) for g in values):
                return Verdict(0.0, "wrong", {"parts": 1})  # x=1, y=-2 is a point, not the two values 1, -2
            if len(listed) != len(values):
                whole = len(parts) == 1 and self._equal(parts[0], answer, rounded)  # \{1,-2\}: the set as one
                return Verdict(1.0, "correct", {}) if whole else Verdict(0.0, "wrong", {"parts": 1})
            left = list(listed)
            for g in values:
                hit = next((i for i, p in enumerate(left) if self._equal(g, p, rounded)), None)
                if hit is None:
                    return Verdict(0.0, "wrong", {})
                left.pop(hit)
            return Verdict(1.0, "correct", {})
        gold = values[0]
        size = answers.is_tuple(gold[0])
        if size:  # y=5, x=-3 for the point (-3, 5)
            answer = answers.named_tuple(answer, size) or answer
        alternatives = [a for a in _HEDGE_SPLIT.split(answer) if a and a.strip()]
        if not _LIST_WORDS.search(gold[0]):  # "(C) and (D)" offers two answers where the gold names one
            alternatives = [b for a in alternatives for b in _AND_SPLIT.split(a) if b and b.strip()]
        alternatives = [v for a in alternatives for v in answers.expand_signs(a)]  # \pm 3 for 3: two answers
        if (
            len(alternatives) > 1
            and forms.inequality_parts(answer) is None  # "x<-1 or x>1" is one set, not a hedge
            and self._distinct_values(alternatives)
        ):
            return Verdict(0.0, "wrong", {"hedge": 1})
        return Verdict(1.0, "correct", {}) if self._equal(gold, answer, rounded) else Verdict(0.0, "wrong", {})


def _bases_equal(gbase: tuple[str, int] | None, gold: str, pbase: tuple[str, int] | None, pred: str) -> bool:
    """``2516_8``: the same digits in the same base; a side without a base shows the digits alone, and base 10
    written out is a plain number (``2516_{10}`` is not ``2516_8``)."""
    if gbase is not None and pbase is not None:
        return gbase == pbase
    based, plain = (gbase, pred) if gbase is not None else (pbase, gold)
    return (_clean(plain).replace(" ", "").upper().lstrip("0") or "0") == based[0]


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
