"""Answer extraction from completions: the last ``<answer>`` block, else the last ``\\boxed{}``.

Every function here is linear in the completion's length, whatever it holds
(thousands of unclosed ``\\boxed{`` or ``<answer>`` cost one pass, not one pass
each): completions are model output, and extraction runs in the trusted process.
"""

from __future__ import annotations

import bisect
import re


def tag_spans(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int, int, int]]:
    """(start, content start, content end, end) of each ``open_tag ... close_tag`` block in order, opened by the
    last opening tag before its closing one; an opening tag that never closes ends the search (no later one can
    close either)."""
    out, i = [], text.find(open_tag)
    while i >= 0:
        j = text.find(close_tag, i + len(open_tag))
        if j < 0:
            break
        i = text.rfind(open_tag, i, j)  # <answer><answer>5</answer>: the block is the innermost opening's
        out.append((i, i + len(open_tag), j, j + len(close_tag)))
        i = text.find(open_tag, j + len(close_tag))
    return out


def answer_tags(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every ``<answer>...</answer>`` block."""
    return [(s, e, text[a:b]) for s, a, b, e in tag_spans(text, "<answer>", "</answer>")]


_BRACE = re.compile(r"[{}]")


def brace_pairs(text: str, start: int = 0) -> dict[int, int]:
    """For each ``{`` from ``start`` on that closes, the index of its matching ``}`` (one pass with a stack;
    what comes before ``start`` cannot change how later braces pair)."""
    pairs, stack = {}, []
    for m in _BRACE.finditer(text, start):
        k = m.start()
        if text[k] == "{":
            stack.append(k)
        elif stack:
            pairs[stack.pop()] = k
    return pairs


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every ``\\boxed{...}`` with balanced braces, in order; unclosed ones are skipped."""
    i = text.find("\\boxed")
    if i < 0:
        return []
    pairs, out = brace_pairs(text, i), []
    while i >= 0:
        j = i + len("\\boxed")
        while j < len(text) and text[j] == " ":
            j += 1
        end = pairs.get(j) if j < len(text) and text[j] == "{" else None
        if end is not None:
            out.append((i, end + 1, text[j + 1 : end]))
        i = text.find("\\boxed", i + 1)
    return out


def inside(spans: list[tuple[int, int]], at: int) -> bool:
    """True when ``at`` falls in one of ``spans`` (sorted, non-overlapping (start, end) pairs)."""
    k = bisect.bisect_right(spans, (at, float("inf"))) - 1
    return k >= 0 and spans[k][0] <= at < spans[k][1]


def all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (balanced braces) in order; unclosed ones are skipped."""
    return [c for _, _, c in boxed_spans(text)]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    found = all_boxed(text)
    return found[-1] if found else None


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>``, else of the last ``\\boxed{...}``."""
    found = answer_tags(text)
    if found:
        return found[-1][2].strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None
