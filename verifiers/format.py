"""Format rewards: the strict R1 format (one think block, then one answer block, nothing after), and one code block.

``<think>...</think>`` followed (whitespace allowed) by ``<answer>...</answer>``
and nothing else but whitespace. When the prompt already opened ``<think>``
(the problem's ``prompt_opens_think``, which the trainer and the evaluation
loop read from the rendered template; or ``think_in_prompt=True`` given
explicitly), the completion must start inside the think block and must not
open another one. Score 1 for the exact structure, else 0 with
status ``format_error`` and the reason in ``info``; with ``partial_credit=True``
a malformed completion earns 0.25 for each of the four tags that occurs
exactly once (capped below 1, so only the exact structure scores 1).

:class:`CodeBlockVerifier` (``code_format``) is the format reward for code
answers: exactly one closed, non-empty fenced block; it never runs the code
(the ``code`` verifier judges the program).

Both verifiers here read model text in the trusted process, so both do linear
work only: counts, finds and slices, no backtracking regular expression (a
lazy ``.*?`` pattern with anchors and ``\\s*`` between the tags costs
quadratic time on text such as many ``</think><answer>`` pairs; a fence
followed by tens of thousands of blanks did the same to the fence pattern).
And both refuse text longer than ``MAX_CHARS`` (400,000 characters, the code
verifier's own completion cap) as ``format_error`` with ``too_long``, before
looking at it.
"""

from __future__ import annotations

from typing import Any, Mapping

from reasonrl.verifiers.base import Verdict

MAX_CHARS = 400_000
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _blank(text: str) -> bool:
    return not text or text.isspace()  # the same whitespace as the regular expression \s


class FormatVerifier:
    name = "format"

    def __init__(self, think_in_prompt: bool | None = None, partial_credit: bool = False):
        self.think_in_prompt = think_in_prompt  # None: as the problem says (prompt_opens_think)
        self.partial_credit = partial_credit

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict:
        if len(completion) > MAX_CHARS:
            return Verdict(0.0, "format_error", {"too_long": 1})
        opened = problem.get("prompt_opens_think", False) if self.think_in_prompt is None else self.think_in_prompt
        text = "<think>" + completion if opened else completion
        counts = {t: text.count(t) for t in _TAGS}
        if all(c == 1 for c in counts.values()):
            # each tag once: the structure is the tags in order, with only whitespace around the blocks
            a, b, c, d = (text.find(t) for t in _TAGS)
            if (
                a < b < c < d
                and _blank(text[:a])
                and _blank(text[b + len("</think>") : c])
                and _blank(text[d + len("</answer>") :])
            ):
                return Verdict(1.0, "correct", {})
        partial = min(0.75, 0.25 * sum(c == 1 for c in counts.values())) if self.partial_credit else 0.0
        reason = "bad_tag_count" if any(c != 1 for c in counts.values()) else "bad_order"
        return Verdict(partial, "format_error", {reason: 1})


_LANGS = ("python3", "python", "py", "")  # a fence's language, any case; "" is a plain ```


def _skip_blanks(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    return i


def fenced_blocks(text: str) -> list[str]:
    """The bodies of the closed fenced Python (or plain) blocks, in order, in linear time.

    The same blocks as ``re.findall(r"```[ \\t]*(python|py|python3)?[ \\t]*\\n(.*?)```", text,
    re.DOTALL | re.IGNORECASE)`` (tested against it), without its quadratic backtracking: at each
    fence, blanks, an optional language, blanks and a newline open a block, which runs to the next
    fence; a fence that opens nothing is passed over by one character, as the pattern's search does.
    """
    blocks, n = [], len(text)
    i = text.find("```")
    while i >= 0:
        j = _skip_blanks(text, i + 3)  # each scan stops at a backtick, so no character is scanned twice
        start = -1
        for lang in _LANGS:
            if text[j : j + len(lang)].lower() == lang:
                k = _skip_blanks(text, j + len(lang)) if lang else j
                if k < n and text[k] == "\n":
                    start = k + 1
                    break
        if start < 0:
            i = text.find("```", i + 1)
            continue
        end = text.find("```", start)
        if end < 0:
            break
        blocks.append(text[start:end])
        i = text.find("```", end + 3)
    return blocks


class CodeBlockVerifier:
    """A format reward for code answers: exactly one closed fenced Python block holding something.

    Score 1 for the structure (the code verifier judges the program itself), else 0 with status
    ``format_error`` and the reason (``no_block``, ``several_blocks``, ``unclosed``, ``empty``,
    ``too_long`` over ``MAX_CHARS``). Applies to every problem; it never runs the code.
    """

    name = "code_format"

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict:
        if len(completion) > MAX_CHARS:
            return Verdict(0.0, "format_error", {"too_long": 1})
        blocks = fenced_blocks(completion)
        if not blocks:
            reason = "unclosed" if completion.count("```") % 2 else "no_block"
        elif len(blocks) > 1:
            reason = "several_blocks"
        elif not blocks[0].strip():
            reason = "empty"
        else:
            return Verdict(1.0, "correct", {})
        return Verdict(0.0, "format_error", {reason: 1})
