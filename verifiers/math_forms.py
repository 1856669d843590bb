"""Answer forms the math verifier recognises beyond plain LaTeX: each a small rule for a family.

- multiple-choice letters: ``(B)``, ``B``, ``\\text{(B)}``, ``\\textbf{B}``, ``(B) 12``
  name the same choice (:func:`choice_letter`);
- angles: a value marked as degrees (``60^\\circ``, ``60°``, ``60\\degree``,
  ``60 \\text{ degrees}``) equals the same angle in radians, when the other side
  is written with ``\\pi`` (:func:`degrees`);
- percentages: ``50\\%`` (or ``50 percent``) equals both ``50`` and ``0.5``
  (:func:`is_percent`; the comparison lives with the numeric fast path);
- solution sets: an inequality in one variable (``-1<x<2``, ``x\\le 2``, parts
  joined by "or" / ``\\cup``) equals the interval it describes
  (:func:`inequality_parts`; ``x \\in (a,b)`` is read as ``(a,b)``);
- the imaginary unit written as a root of a negative number: ``\\sqrt{-1}`` is
  ``i``, ``\\sqrt{-9}`` is ``i\\sqrt{9}`` (:func:`normalize_imaginary`);
- constants compare by value, exactly (:func:`constants_equal`): two constant
  expressions without decimals are equal only when their values agree to 50
  significant digits, so ``2^{-99}`` never equals ``2^{-98}`` (an absolute
  tolerance or a rounding to a few decimals would make every tiny pair equal)
  and a huge exact fraction is never "about zero"; with a decimal on either
  side, they must agree to 6 decimals, or to 6 significant digits below 0.1;
- radicals with variables: ``\\sqrt{1/n}`` equals ``1/\\sqrt{n}`` (roots taken of
  positive quantities, the convention of answer keys), unless an absolute value
  or a sign function makes that assumption change the meaning
  (:func:`radicals_equal`).

- second opinions on sympy objects: :func:`rational` (the exact value of a
  rational constant), :func:`constant_value` (a constant to 30 digits),
  :func:`sympy_equal` (the symbol ``i`` as the imaginary unit, hyperbolic
  functions as exponentials, equations compared by their right sides).

Pure functions on strings and sympy objects; no model output is evaluated as code.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textrm)\s*\{([^{}]*)\}")
_CHOICE = re.compile(r"^\(([A-Ja-j])\)(?:\s*\S.*)?$|^([A-J])$")
_DEGREE_MARK = re.compile(
    r"^(?P<value>.*?)\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\text\{\s*degrees?\s*\}|\s+degrees?)\s*$", re.IGNORECASE
)
_RADIAN_MARK = re.compile(r"\s*(?:\\text\{\s*(?:rad|radians?)\s*\}|\s+(?:rad|radians?))\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"(?:\\?%|\s*(?:\\text\{\s*)?per\s?cent\s*\}?)\s*$", re.IGNORECASE)
_INEQUALITY = re.compile(r"<|>|\\le|\\ge|\\lt|\\gt|≤|≥|\\leq|\\geq|\\leqslant|\\geqslant")
_UNION = re.compile(r"\s+or\s+|\\text\{\s*or\s*\}|\\cup|\\vee|\\lor", re.IGNORECASE)
_BARE_EQUALS = re.compile(r"(?<![<>!])=(?![<>])")
_MEMBERSHIP = re.compile(r"^\s*[A-Za-z]\s*\\in\s*")
_SQRT_NEG = re.compile(r"\\sqrt\s*\{\s*-\s*([^{}]+?)\s*\}")
_SIGN_SENSITIVE = ("Abs", "sign", "Piecewise", "Min", "Max", "floor", "ceiling", "re", "im", "arg")


def unwrap(text: str) -> str:
    """The text with ``\\text{...}``-style wrappers removed and ``$`` and spaces trimmed."""
    t = text.strip().strip("$").strip()
    for _ in range(3):
        t = _WRAPPERS.sub(r"\1", t)
    return t.strip()


_CHOICE_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:option|choice|answer)(?:\s+is)?\s*:?\s*)", re.IGNORECASE)
_CHOICE_TAIL_OTHER = re.compile(r"\([A-Ja-j]\)|^\s*(?:and|or|,|&)\s|^\s*,")


def _choice_parts(text: str) -> tuple[str, str] | None:
    t = _CHOICE_PREFIX.sub("", unwrap(text)).strip()
    t = _CHOICE_PREFIX.sub("", unwrap(t)).strip()  # \text{Option (B)}: the prefix may sit inside the wrapper
    if t.endswith(".") and not t.endswith(".."):
        t = t[:-1].rstrip()
    m = _CHOICE.match(t)
    if not m:
        return None
    letter = (m.group(1) or m.group(2)).upper()
    tail = t[m.end(1) + 1 :].strip() if m.group(1) else ""
    if _CHOICE_TAIL_OTHER.search(" " + tail if tail[:1] in ",&" else tail):
        return None  # "(C) and (D)" names two choices, not one
    return letter, tail


def choice_letter(text: str) -> str | None:
    """The choice a multiple-choice answer names ('B' for ``(B)``, ``B.``, ``Option B``, ``\\textbf{(B) }7``),
    or None when it is not one (``(C) and (D)`` is two)."""
    parts = _choice_parts(text)
    return parts[0] if parts else None


def after_choice(text: str) -> str | None:
    """What follows the choice label (``27`` for ``\\textbf{(C) }27``), or None."""
    parts = _choice_parts(text)
    return parts[1] or None if parts else None


def degrees(text: str) -> str | None:
    """The value of an answer explicitly marked as degrees ('60' for ``60^\\circ``), else None."""
    m = _DEGREE_MARK.match(text.strip().strip("$").strip())
    if not m or not m.group("value").strip():
        return None
    return m.group("value").strip()


def radians(text: str) -> str:
    """The answer without a trailing radian unit (``\\frac{\\pi}{3} \\text{ rad}`` -> ``\\frac{\\pi}{3}``)."""
    return _RADIAN_MARK.sub("", text.strip().strip("$").strip())


def has_pi(text: str) -> bool:
    return "\\pi" in text or "π" in text


def is_percent(text: str) -> bool:
    """True when the answer is written as a percentage (``50\\%``, ``50%``, ``50 percent``)."""
    if "%" not in text and "cent" not in text.lower():  # the common case, without a regex
        return False
    return bool(_PERCENT.search(text.strip().strip("$").strip().rstrip(".")))


def strip_percent_word(text: str) -> str:
    """``35 percent`` -> ``35%`` (the numeric path already reads ``%``)."""
    if "cent" not in text.lower():
        return text
    return re.sub(r"\s*(?:\\text\{\s*)?per\s?cent\s*\}?\s*$", "%", text, flags=re.IGNORECASE)


def strip_membership(text: str) -> str:
    """``x \\in (-1, 2)`` -> ``(-1, 2)``."""
    return _MEMBERSHIP.sub("", text)


def inequality_parts(text: str) -> list[str] | None:
    """The parts of an answer made only of inequalities joined by "or" / ``\\cup``, else None."""
    parts = [p.strip() for p in _UNION.split(text.strip().strip("$")) if p and p.strip()]
    if not parts or not all(_INEQUALITY.search(p) and not _BARE_EQUALS.search(p) for p in parts):
        return None
    return parts


def normalize_imaginary(text: str) -> str:
    """``\\sqrt{-1}`` -> ``i``; ``\\sqrt{-9}`` -> ``i\\sqrt{9}``."""

    def sub(m: re.Match) -> str:
        inner = m.group(1).strip()
        return "i" if inner == "1" else f"i\\sqrt{{{inner}}}"

    return _SQRT_NEG.sub(sub, text)


def constants_equal(a: Any, b: Any) -> bool | None:
    """Whether two constant sympy expressions have the same value; None when either is not a plain
    finite constant (symbols, sets, relations, matrices, infinities) or cannot be evaluated."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return None
    specials = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
    if a.free_symbols or b.free_symbols or a.has(*specials) or b.has(*specials):
        return None
    try:
        x, y = sympy.N(a, 60), sympy.N(b, 60)  # each side on its own: no cancellation between them
        diff, scale = abs(sympy.N(x - y, 60)), max(abs(x), abs(y))
        if not (diff.is_Number and scale.is_Number):
            return None
    except Exception:  # sympy cannot evaluate one of them: let the symbolic comparison decide
        return None
    if a.has(sympy.Float) or b.has(sympy.Float):  # an approximate value: 6 decimals, 6 significant digits below 0.1
        tol = max(_F("0.5e-6"), scale * _F("1e-12")) if scale >= _F("0.1") else scale * _F("5e-6")
        return bool(diff <= tol)
    if diff > scale * _F("1e-50"):  # exact values computed to 60 digits that differ in the first 50
        return False
    try:  # equal to 50 digits: exact rationals (2^{2005} and the like) are settled exactly
        ea, eb = a.doit(), b.doit()
        if ea.is_Rational and eb.is_Rational:
            return bool(ea == eb)
    except Exception:
        pass
    if _F("1e-40") < scale < _F("1e40"):  # values of a sane size agreeing to 50 digits are the same value
        return True
    try:  # a huge or tiny irrational: a difference could hide below 50 digits; only a proof will do
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def _F(text: str):
    import sympy

    return sympy.Float(text, 60)


def radicals_equal(a: Any, b: Any) -> bool:
    """``\\sqrt{1/n}`` = ``1/\\sqrt{n}``: equal once roots are taken of positive quantities; never
    used where that assumption changes the meaning (absolute values, signs, min/max, parts)."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if any(a.has(getattr(sympy, f)) or b.has(getattr(sympy, f)) for f in _SIGN_SENSITIVE):
        return False
    if not any(isinstance(p, sympy.Pow) and not p.exp.is_integer for e in (a, b) for p in sympy.preorder_traversal(e)):
        return False
    try:
        d = sympy.sympify(str(a)) - sympy.sympify(str(b))
        return sympy.simplify(sympy.powsimp(sympy.powdenest(d, force=True), force=True)) == 0
    except Exception:
        return False


def rational(expr: Any) -> Fraction | None:
    """The exact value of a rational constant expression (``2^{100}``, ``\\frac{3}{2^{10}}``), else None."""
    import sympy

    try:
        if not isinstance(expr, sympy.Expr) or expr.free_symbols or expr.has(sympy.Float):
            return None
        value = expr.doit()
        return Fraction(int(value.p), int(value.q)) if value.is_Rational else None
    except Exception:  # sympy cannot evaluate it: no exact value
        return None


def constant_value(expr: Any) -> Fraction | None:
    """A constant sympy expression's value to 30 significant digits, as a Fraction; None when not a number."""
    import sympy

    try:
        if not isinstance(expr, sympy.Expr) or expr.free_symbols:
            return None
        value = sympy.N(expr, 30)
        if not value.is_real or not value.is_finite:
            return None
        return Fraction(str(value))
    except Exception:  # sympy cannot evaluate it: no value
        return None


def sympy_equal(a: Any, b: Any) -> bool:
    """Second opinion for what math-verify keeps unevaluated (``1*i`` vs ``i``): the symbol ``i`` is the imaginary
    unit (``z=(1+i)^2`` is ``z=2i``), hyperbolic functions equal their exponential forms; equations with the
    same left side compare by their right sides."""
    import sympy

    if isinstance(a, sympy.Equality) and isinstance(b, sympy.Equality) and str(a.lhs) == str(b.lhs):
        a, b = a.rhs, b.rhs
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)) or a.has(sympy.oo, -sympy.oo):
        return False
    try:
        x, y = sympy.sympify(str(a)), sympy.sympify(str(b))
        unit = sympy.Symbol("i")
        if unit in x.free_symbols or unit in y.free_symbols:
            x, y = x.subs(unit, sympy.I), y.subs(unit, sympy.I)
        diff = sympy.simplify(sympy.expand(x - y))
        if diff != 0 and diff.has(sympy.sinh, sympy.cosh, sympy.tanh, sympy.exp):
            diff = sympy.simplify(diff.rewrite(sympy.exp))
    except Exception:  # sympy cannot compare these: not equal, never an exception out of a verifier
        return False
    return diff == 0
