"""Strict R1 format: one think block, then one answer block, nothing after.

``<think>...</think>`` followed (whitespace allowed) by ``<answer>...</answer>``
and nothing else but whitespace. When the prompt already opened ``<think>``
(the problem's ``prompt_opens_think``, which the trainer and the evaluation
loop read from the rendered template; or ``think_in_prompt=True`` given
explicitly), the completion must start inside the think block and must not
open another one. Score 1 for the exact structure, else 0 with
status ``format_error`` and the reason in ``info``; with ``partial_credit=True``
a malformed completion earns 0.25 for each of the four tags that occurs
exactly once (capped below 1, so only the exact structure scores 1).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from reasonrl.verifiers.base import Verdict

_STRICT = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class FormatVerifier:
    name = "format"

    def __init__(self, think_in_prompt: bool | None = None, partial_credit: bool = False):
        self.think_in_prompt = think_in_prompt  # None: as the problem says (prompt_opens_think)
        self.partial_credit = partial_credit

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict:
        opened = problem.get("prompt_opens_think", False) if self.think_in_prompt is None else self.think_in_prompt
        text = "<think>" + completion if opened else completion
        counts = {t: text.count(t) for t in _TAGS}
        if _STRICT.match(text) and all(c == 1 for c in counts.values()):
            return Verdict(1.0, "correct", {})
        partial = min(0.75, 0.25 * sum(c == 1 for c in counts.values())) if self.partial_credit else 0.0
        reason = "bad_tag_count" if any(c != 1 for c in counts.values()) else "bad_order"
        return Verdict(partial, "format_error", {reason: 1})


_FENCE = re.compile(r"```[ \t]*(python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


class CodeBlockVerifier:
    """A format reward for code answers: exactly one closed fenced Python block holding something.

    Score 1 for the structure (the code verifier judges the program itself), else 0 with status
    ``format_error`` and the reason (``no_block``, ``several_blocks``, ``unclosed``, ``empty``).
    Applies to every problem; it never runs the code.
    """

    name = "code_format"

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict:
        if len(completion) > 400_000:
            return Verdict(0.0, "format_error", {"too_long": 1})
        blocks = _FENCE.findall(completion)
        if not blocks:
            reason = "unclosed" if completion.count("```") % 2 else "no_block"
        elif len(blocks) > 1:
            reason = "several_blocks"
        elif not blocks[0][1].strip():
            reason = "empty"
        else:
            return Verdict(1.0, "correct", {})
        return Verdict(0.0, "format_error", {reason: 1})
