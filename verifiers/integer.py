"""Exact integer answers (the arithmetic world, GSM8K-style integers).

The extracted answer (see :mod:`reasonrl.verifiers.extract`) must be a single
integer, optionally signed and with thousands commas, equal to the gold. It
does not do symbolic or numeric-tolerance comparison: that is the math
verifier's job.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from reasonrl.verifiers.base import GoldAnswerError, Verdict
from reasonrl.verifiers.extract import extract_answer

_INT = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$|^[+-]?\d+$")
_MAX_DIGITS = 1000  # hostile output: never build gigantic ints


def parse_int(text: str) -> int | None:
    s = text.strip()
    if len(s) > _MAX_DIGITS or not _INT.match(s):
        return None
    return int(s.replace(",", ""))


class IntegerVerifier:
    name = "integer"

    def __init__(self, answer_field: str = "answer"):
        self.answer_field = answer_field
        self._gold_cache: dict[str, int] = {}

    def check_gold(self, problem: Mapping[str, Any]) -> int:
        raw = str(problem.get(self.answer_field, ""))
        if raw not in self._gold_cache:
            gold = parse_int(raw)
            if gold is None:
                raise GoldAnswerError(f"gold {self.answer_field}={raw!r} is not an integer")
            self._gold_cache[raw] = gold
        return self._gold_cache[raw]

    def __call__(self, problem: Mapping[str, Any], completion: str) -> Verdict | None:
        if self.answer_field not in problem:
            return None
        gold = self.check_gold(problem)
        ans = extract_answer(completion)
        if ans is None or ans == "":
            return Verdict(0.0, "no_answer", {})
        pred = parse_int(ans)
        if pred is None:
            return Verdict(0.0, "format_error", {"unparsed": 1})
        return Verdict(1.0, "correct", {}) if pred == gold else Verdict(0.0, "wrong", {})
