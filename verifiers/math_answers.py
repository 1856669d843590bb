"""How an answer is read off a completion and cut into values, before any value is compared.

- :func:`normalize`: LaTeX that changes no value is removed: display wrappers
  (``\\[ \\]``, ``\\( \\)``, ``$``), sizing commands (``\\big(``, ``\\Bigl[``,
  ``\\bigr)``), ``\\frac12`` shorthand, a final period; the empty set
  (``\\varnothing``, ``\\{\\}``, "no solution(s)", "none", "empty set") becomes
  ``\\emptyset`` and infinity ("infinity", "infinite", ``+\\infty``) ``\\infty``;
  ``m_{\\max}`` becomes ``m_{max}`` (math-verify reads no command in a subscript);
  ``np.arcsin(x)`` becomes ``\\arcsin(x)``; ``t(0,4]`` becomes the interval ``(0,4]``.
- :func:`candidates`: every ``<answer>`` block and every ``\\boxed{}`` in the
  order written; boxes inside a closed ``<think>`` block are scratch work and
  are skipped.
- :func:`corrected`: whether the text between two disagreeing candidates takes
  the earlier one back (a retraction cue: "wait", "actually", "mistake",
  "double-counted", "scratch that", ...). A later candidate that corrects an
  earlier one replaces it; disagreeing candidates with no cue between them are
  a hedge (``<answer>42</answer> \\boxed{43}``, ``\\boxed{3} or \\boxed{4}``).
- :func:`retracted_value`: a retraction after the final answer ("\\boxed{12}.
  Wait, I double-counted; the total is 14."): the value stated after the cue
  (after "is", "=", "be", "get", "gives" or "answer:"), or None when the text
  after the answer takes nothing back ("Check: 3 \\times 4 = 12.", "It took 3
  steps."). This is a heuristic: a cue followed by a statement of another
  value voids the answer; a restatement of the same value, or numbers that are
  not stated as the result, leave it alone. Tested both ways.
- :func:`items`: an answer cut into the values it lists, at top-level commas,
  semicolons, "or" / "and" (never inside brackets; ``2,500`` stays one number
  when the list has another separator). Assignments to one variable
  (``n = -2 \\text{ or } n = 1``) become their values; a leading or inner
  ``\\pm`` / ``\\mp`` expands into every sign choice (``(\\pm 3, \\pm 2)`` is
  four points), at most :data:`MAX_SIGN_CHOICES` of them.
- :func:`named_tuple`: ``y=5, x=-3`` read as the point ``(-3, 5)``, the names in
  alphabetical order (x, y, z; a, b, c; h, k; m, n), when the gold is a tuple.
- :func:`base_number`: ``2516_8`` / ``2516_{8}`` as (digits, base).

Pure functions on strings; nothing is evaluated.
"""

from __future__ import annotations

import itertools
import re

from reasonrl.verifiers.extract import answer_tags, boxed_spans, inside, tag_spans

MAX_SIGN_CHOICES = 8

_SIZING = re.compile(r"\\(?:big|Big|bigg|Bigg)[lrm]?\s*(?=[()\[\]|./]|\\[{}|]|\\[lr]?[a-z]*angle|\\[lr]vert)")
_DISPLAY = re.compile(r"^\\\[(.*)\\\]$|^\\\((.*)\\\)$", re.DOTALL)
_FRAC_SHORT = re.compile(r"\\([dt]?frac)\s*(\d)\s*(\d)")
_EMPTY = re.compile(
    r"^(?:\\varnothing|\\emptyset|\\O|∅|\\\{\s*\\\}|\{\s*\}|"
    r"(?:\\text\{\s*)?(?:no\s+(?:real\s+)?solutions?|none|empty\s+set|the\s+empty\s+set|no\s+such\s+\w+)\.?\s*\}?)$",
    re.IGNORECASE,
)
_INFINITY = re.compile(r"^(?:\+\s*)?(?:\\infty|∞|(?:\\text\{\s*)?(?:\+\s*)?(?:infinity|infinite|infinitely\s+many)\s*\}?)$", re.I)
_CODE_FUNCTION = re.compile(r"\b(?:np|numpy|math)\.(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|exp|log|sqrt|pi)\b")
_VARIABLE_INTERVAL = re.compile(r"^[a-z]\s*(?=\([^()\[\]]*\]$|\[[^()\[\]]*\)$)")
_SUB_COMMAND = re.compile(r"_\{\s*\\(max|min|[a-zA-Z]+)\s*\}")
_RETRACT = re.compile(
    r"\b(?:wait|actually|oops|correction|mistakes?|miscalculat\w*|miscount\w*|double[- ]?count\w*|"
    r"I was wrong|(?:that|this)(?:'s| is| was) (?:wrong|incorrect|not right)|scratch that|on second thought|"
    r"let me (?:re-?check|recompute|recalculate|redo|fix|correct))\b",
    re.IGNORECASE,
)
_STATED = re.compile(
    r"(?:\bis|\bbe|\bare|=|\bget|\bgives?|\bequals?|\banswer:?)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?)(?!\s*[+*/^-]?\s*\d)"
)
_SPLIT = re.compile(r"\s*(?:,|;|\\text\{\s*(?:or|and)\s*\}|\\quad|\\qquad|\s(?:or|and|and/or)\s|\\vee|\\lor)\s*")
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d.])")
_ASSIGN = re.compile(r"^\s*([A-Za-z](?:_\{?\w+\}?)?)\s*=\s*(.+)$", re.DOTALL)
_BASE = re.compile(r"^([0-9A-Za-z]+)_\{?\s*(\d{1,2})\s*\}?$")
_NAME_ORDERS = ("abcd", "hk", "mn", "pq", "rs", "uvw", "xyz")


def normalize(text: str) -> str:
    """The answer without LaTeX that changes no value, with empty-set and infinity words made symbols."""
    t = text.strip()
    for _ in range(3):
        t = t.strip()
        while len(t) >= 2 and t[0] == "$" and t[-1] == "$":
            t = t[1:-1].strip()
        m = _DISPLAY.match(t)
        if not m:
            break
        t = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
    if "\\" in t:
        t = _SIZING.sub("", t)
        t = _FRAC_SHORT.sub(r"\\\1{\2}{\3}", t)
        t = _SUB_COMMAND.sub(r"_{\1}", t)
    if "np." in t or "math." in t:  # np.arcsin(10/13): Python written as the answer
        t = _CODE_FUNCTION.sub(r"\\\1", t)
    t = _VARIABLE_INTERVAL.sub("", t)  # t(0,4]: the half-open interval (0,4] of t
    if t.endswith(".") and not t.endswith(".."):  # a sentence's full stop; an ellipsis stays
        t = t[:-1].rstrip()
    if _EMPTY.match(t):
        return "\\emptyset"
    if _INFINITY.match(t):
        return "\\infty"
    return t


def candidates(completion: str, extract_order: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(start, end, text) of every ``<answer>`` block and ``\\boxed{}`` the order asks for, by position;
    boxes inside a closed ``<think>`` block are skipped (scratch work), and a box inside an answer block is
    that block's candidate, not another one. Linear in the completion's length."""
    found: list[tuple[int, int, str]] = []
    if "answer_tag" in extract_order:
        found += [(s, e, c.strip()) for s, e, c in answer_tags(completion)]
    if "boxed" in extract_order:
        skip = _merged([(s, e) for s, _, _, e in tag_spans(completion, "<think>", "</think>")] + [c[:2] for c in found])
        found += [(s, e, c.strip()) for s, e, c in boxed_spans(completion) if not inside(skip, s)]
    return sorted(c for c in found if c[2])


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans with overlapping ones joined (an answer block inside a think block)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def corrected(between: str) -> bool:
    """True when the text between two candidates takes the earlier one back (a retraction cue)."""
    return bool(_RETRACT.search(between))


def retracted_value(after: str) -> str | None:
    """The value a retraction after the final answer states instead, or None when nothing is taken back."""
    cue = _RETRACT.search(after)
    if not cue:
        return None
    stated = _STATED.findall(after[cue.start() :])
    return stated[-1].replace(" ", "") if stated else None


def _top_level_split(text: str) -> list[str]:
    """``text`` cut at list separators outside brackets and braces."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            m = _SPLIT.match(text, i)
            if m and m.end() > i:
                parts.append(text[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _protect_thousands(text: str) -> tuple[str, bool]:
    """Thousands commas replaced by nothing where the list has another separator (``2,500 and 7,500``)."""
    other = re.search(r",\s|;|\sor\s|\sand\s|\\text\{\s*(?:or|and)", text)
    if not other or not _THOUSANDS.search(text):
        return text, False
    return _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text), True


def expand_signs(text: str) -> list[str]:
    """Every sign choice of the ``\\pm`` / ``\\mp`` in ``text`` (independent choices), or [text]."""
    n = text.count("\\pm") + text.count("\\mp")
    if n == 0 or 2**n > MAX_SIGN_CHOICES:
        return [text]
    pieces = re.split(r"(\\pm|\\mp)", text)
    out = []
    for signs in itertools.product("+-", repeat=n):
        k, built = 0, []
        for piece in pieces:
            if piece in ("\\pm", "\\mp"):
                s = signs[k] if piece == "\\pm" else ("-" if signs[k] == "+" else "+")
                built.append(s)
                k += 1
            else:
                built.append(piece)
        out.append(re.sub(r"([(,\[{])\s*\+", r"\1", "".join(built)).lstrip("+").strip())
    return out


def items(text: str) -> list[str]:
    """The values an answer lists (one item when it lists nothing)."""
    t, _ = _protect_thousands(text)
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t.strip()):
        return [t.strip()]  # 1,000: one number
    parts = _top_level_split(t)
    names = [_ASSIGN.match(p) for p in parts]
    if len(parts) > 1 and all(names) and len({m.group(1) for m in names}) == 1:
        parts = [m.group(2).strip() for m in names]  # n = -2 or n = 1: the values of one unknown
    elif len(parts) == 1 and names[0] and ("\\pm" in parts[0] or "\\mp" in parts[0]):
        parts = [names[0].group(2).strip()]  # x = 1 \pm \sqrt{2}
    return [v for p in parts for v in expand_signs(p)]


def is_assignment(text: str) -> bool:
    """True for ``x = 3`` (a name, then ``=``)."""
    return bool(_ASSIGN.match(text))


def named_tuple(text: str, size: int) -> str | None:
    """``y=5, x=-3`` as ``(-3,5)``: ``size`` assignments to distinct names of one alphabetical family."""
    parts = _top_level_split(text)
    found = [_ASSIGN.match(p) for p in parts]
    if len(parts) != size or size < 2 or not all(found):
        return None
    named = {m.group(1): m.group(2).strip() for m in found}
    if len(named) != size or not any(set(named) <= set(order) for order in _NAME_ORDERS):
        return None
    return "(" + ",".join(named[k] for k in sorted(named)) + ")"


def is_tuple(text: str) -> int:
    """The number of components of a bracketed tuple ``(a, b)``, or 0 when the text is not one."""
    t = text.strip()
    if len(t) < 2 or t[0] != "(" or t[-1] != ")":
        return 0
    inner = t[1:-1]
    depth = 0
    for ch in inner:  # (1,2),(3,4) is two tuples, not one
        depth += (ch in "([{") - (ch in ")]}")
        if depth < 0:
            return 0
    return len(_top_level_split(inner)) if "," in inner else 0


def base_number(text: str) -> tuple[str, int] | None:
    """(digits, base) of ``2516_8`` / ``2516_{8}`` / ``A3_{16}`` (digits upper-cased, leading zeros dropped)."""
    m = _BASE.match(text.strip())
    if not m:
        return None
    base = int(m.group(2))
    digits = m.group(1).upper().lstrip("0") or "0"
    if not 2 <= base <= 36 or any(int(d, 36) >= base for d in digits):
        return None
    return digits, base
