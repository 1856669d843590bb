"""Numbers as written in answers: exact values of literals, and how precisely a literal pins its value.

A written number is read as the exact rational it denotes, never through a float:

- plain integers and decimals, thousands separators (``1,000``), a sign;
- scientific notation: ``4.5e33``, ``4.5E33``, ``4.5\\times10^{33}``,
  ``4.5 \\cdot 10^{33}``, ``10^{-5}`` (the exponent at most :data:`MAX_EXPONENT`);
- repeating decimals: ``0.\\overline{12}``, ``0.1\\overline{6}``, ``0.\\dot{3}``,
  ``0.\\dot{1}\\dot{2}`` (dots over the first and last repeated digit), and a
  trailing ellipsis ``0.777\\ldots`` / ``0.777...``. The ellipsis form is a
  heuristic: the repeated block is the shortest one that the written digits
  show at least twice at their end (``0.1666...`` is 1/6, ``0.142857142857...``
  is 1/7); digits that show no repetition (``0.12...``) are no exact value;
- mixed numbers: ``3\\frac{1}{3}`` (and ``33\\frac{1}{3}\\%`` as a percentage of
  it), the convention of answer keys.

:func:`half_unit` says how far a rounded decimal stands for its value: half a
unit in its last significant digit (``1.6`` -> 0.05, ``4.5e33`` -> 5e31). The
verifier uses it only for golds declared rounded (``gold_precision=significant``,
Minerva's OCW answers); two exact values otherwise compare exactly.

Pure functions on strings; nothing is evaluated.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_EXPONENT = 400  # 10^400 is far beyond any real answer; larger exponents are no plain number
_MANTISSA = r"([+-]?)(\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)"
_E_NOTATION = re.compile(rf"^{_MANTISSA}[eE]([+-]?\d{{1,4}})$")
_TIMES_TEN = re.compile(rf"^{_MANTISSA}\s*(?:\\times|\\cdot|\*|×|·)\s*10\s*\^\s*(?:\{{\s*([+-]?\d{{1,4}})\s*\}}|([+-]?\d))$")
_POWER_TEN = re.compile(r"^([+-]?)10\s*\^\s*(?:\{\s*([+-]?\d{1,4})\s*\}|([+-]?\d))$")
_OVERLINE = re.compile(r"^([+-]?)(\d*)\.(\d*)\\(?:overline|bar)\s*\{(\d+)\}$")
_DOTS = re.compile(r"^([+-]?)(\d*)\.(\d*?)((?:\\dot\s*\{?\d\}?)(?:\d*\\dot\s*\{?\d\}?)?)$")
_ELLIPSIS = re.compile(r"^([+-]?)(\d*)\.(\d+)\s*(?:\\ldots|\\cdots|\\dots|\.\.\.|…)$")
_MIXED = re.compile(r"^([+-]?)(\d+)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}$")
_PLAIN = re.compile(r"^([+-]?)(\d+(?:,\d{3})*|\d*)(?:\.(\d*))?$")


def _digits(s: str) -> str:
    return s.replace(",", "")


def _scaled(sign: str, mantissa: str, exponent: int) -> Fraction | None:
    if abs(exponent) > MAX_EXPONENT:
        return None
    value = Fraction(_digits(mantissa)) * Fraction(10) ** exponent
    return -value if sign == "-" else value


def scientific(text: str) -> Fraction | None:
    """The exact value of ``4.5e33`` / ``4.5\\times10^{33}`` / ``10^{-5}``, else None."""
    t = text.strip()
    m = _E_NOTATION.match(t)
    if m:
        return _scaled(m.group(1), m.group(2), int(m.group(3)))
    m = _TIMES_TEN.match(t)
    if m:
        return _scaled(m.group(1), m.group(2), int(m.group(3) or m.group(4)))
    m = _POWER_TEN.match(t)
    if m:
        return _scaled(m.group(1), "1", int(m.group(2) or m.group(3)))
    return None


def _repeating(sign: str, whole: str, fixed: str, block: str) -> Fraction:
    """whole.fixed(block)(block)... as an exact fraction."""
    value = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
    value += Fraction(int(block), (10 ** len(block) - 1) * 10 ** len(fixed))
    return -value if sign == "-" else value


def repeating_decimal(text: str) -> Fraction | None:
    """The exact value of a repeating decimal (overline, dots, or a trailing ellipsis), else None."""
    t = text.strip()
    if "\\" not in t and "." not in t and "…" not in t:
        return None
    m = _OVERLINE.match(t)
    if m:
        return _repeating(m.group(1), m.group(2), m.group(3), m.group(4))
    m = _DOTS.match(t)
    if m:
        dotted = re.findall(r"\\dot\s*\{?(\d)\}?|(\d)", m.group(4))
        block = "".join(a or b for a, b in dotted)
        return _repeating(m.group(1), m.group(2), m.group(3), block)
    m = _ELLIPSIS.match(t)
    if m:
        digits = m.group(3)
        for size in range(1, len(digits) // 2 + 1):  # the shortest block written at least twice at the end
            block = digits[-size:]
            if digits.endswith(block * 2):
                fixed = digits[: len(digits) - size]
                while fixed.endswith(block):  # the repetitions already written are part of the cycle
                    fixed = fixed[:-size]
                return _repeating(m.group(1), m.group(2), fixed, block)
    return None


def mixed_number(text: str) -> Fraction | None:
    """``3\\frac{1}{3}`` as 10/3 (a whole number directly followed by a proper fraction), else None."""
    m = _MIXED.match(text.strip())
    if not m or int(m.group(4)) == 0 or int(m.group(3)) >= int(m.group(4)):
        return None
    value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
    return -value if m.group(1) == "-" else value


def literal(text: str) -> Fraction | None:
    """The exact value of any written number form this module reads (not plain integers or decimals)."""
    return scientific(text) or repeating_decimal(text) or mixed_number(text)


def half_unit(text: str) -> Fraction | None:
    """Half a unit in the last significant digit of a decimal or scientific literal (``1.6`` -> 1/20,
    ``4.5e33`` -> 5e31); None for an integer written without a point or exponent (its precision is unknown)."""
    t = text.strip().replace(" ", "")
    for pattern in (_E_NOTATION, _TIMES_TEN):
        m = pattern.match(t)
        if m:
            exponent = int(m.group(3) if pattern is _E_NOTATION else (m.group(3) or m.group(4)))
            decimals = len(m.group(2).partition(".")[2])
            return Fraction(1, 2) * Fraction(10) ** (exponent - decimals)
    m = _PLAIN.match(t)
    if m and m.group(3) is not None:
        return Fraction(1, 2) * Fraction(10) ** -len(m.group(3))
    return None


def terminates(x: Fraction) -> bool:
    """True when ``x`` has a finite decimal expansion (its denominator has no prime factor but 2 and 5)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def written_as_decimal(text: str) -> bool:
    """True for a decimal or scientific literal (an approximation may be meant), False for integers and fractions."""
    t = text.strip()
    return bool(_E_NOTATION.match(t) or _TIMES_TEN.match(t) or ("." in t and not repeating_decimal(t)))
