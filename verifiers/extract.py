"""Answer extraction from completions: the last ``<answer>`` block, else the last ``\\boxed{}``."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    i = text.rfind("\\boxed")
    while i >= 0:
        j = i + len("\\boxed")
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                if text[k] == "{":
                    depth += 1
                elif text[k] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[j + 1 : k]
                k += 1
        i = text.rfind("\\boxed", 0, i)
    return None


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>``, else of the last ``\\boxed{...}``."""
    found = _ANSWER.findall(text)
    if found:
        return found[-1].strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None
