"""pass@k and maj@k from n samples per problem.

``pass_at_k(n, c, k)`` is the unbiased estimator of Chen et al. (2021):
1 - C(n-c, k) / C(n, k), the chance that at least one of k samples drawn
without replacement from the n is correct. ``maj_at_k`` takes the first k
samples' final answers, picks the most frequent (ties: the earliest), and
scores that answer's verdict.
"""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _canon(answer: str | None) -> str | None:
    return None if answer is None else "".join(answer.split())


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the majority final answer among the first k samples is correct (no answer never wins)."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)}, got {k}")
    keys = [_canon(a) for a in answers[:k]]
    counts = Counter(x for x in keys if x is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winner = next(x for x in keys if x is not None and counts[x] == top)
    return float(correct[keys.index(winner)])
