"""Answer extraction from completions: the last ``<answer>`` block, else the last ``\\boxed{}``."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` matching the ``{`` at ``open_at``, or None when it never closes."""
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return None


def all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (balanced braces) in order; unclosed ones are skipped."""
    out, i = [], text.find("\\boxed")
    while i >= 0:
        j = i + len("\\boxed")
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _closing_brace(text, j)
            if end is not None:
                out.append(text[j + 1 : end])
        i = text.find("\\boxed", i + 1)
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    found = all_boxed(text)
    return found[-1] if found else None


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>``, else of the last ``\\boxed{...}``."""
    found = _ANSWER.findall(text)
    if found:
        return found[-1].strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None
