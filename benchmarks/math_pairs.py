"""Precision and recall of the math verifier on the labelled pairs, per category.

    .venv/bin/python benchmarks/math_pairs.py            # a markdown table; misjudged pairs below it

The pairs (tests/data/math_pairs.py) are (category, gold, prediction, equivalent?)
written by hand; each prediction is scored as the final ``\\boxed{}`` of a
completion, as in training (or, for extraction families, a whole completion as
written). ``--pairs tests/data/math_pairs_heldout.py`` scores the independently
written held-out set. The ``bad_gold`` row counts golds: a readable gold accepted
by ``check_gold`` is a true positive, an unreadable one accepted a false positive.
The test suite asserts the thresholds; this script prints the numbers (e.g.
before and after a change to the verifier); ``--timing`` also times each check.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "data"))


def table(counts) -> str:
    lines = ["| category | pairs | precision | recall |", "|---|---:|---:|---:|"]
    for cat, k in list(counts.items()) + [("all", sum(counts.values(), collections.Counter()))]:
        p = f"{k['tp'] / (k['tp'] + k['fp']):.3f}" if k["tp"] + k["fp"] else "n/a (none accepted)"
        r = k["tp"] / max(1, k["tp"] + k["fn"])
        lines.append(f"| {cat} | {sum(k.values())} | {p} | {r:.3f} |")
    return "\n".join(lines)


def hostile(n: int) -> list[str]:
    """Completions whose extraction was quadratic in their length (n repetitions each)."""
    return [
        "<answer>" * n + "<answer>5</answer>",
        "\\boxed{" * n + "\\boxed{5}",
        "<think>" * n + "\\boxed{5}",
        "\\boxed{5}" + " wait, is 4 or" * (n // 4),
        "\\boxed{5}" * (n // 4) + "\\boxed{6}",
    ]


def timing(pairs, hostile_n: int) -> None:
    """Each check timed on a fresh verifier (golds parsed on first use, as in training's first step), then a second,
    warm pass; the hostile completions last. Prints checks/s and the slowest checks."""
    import time

    from reasonrl.verifiers.math import MathVerifier

    jobs = [
        (gold if isinstance(gold, dict) else {"answer": gold}, pred if how == ["completion"] else f"so \\boxed{{{pred}}}")
        for _, gold, pred, _, *how in pairs
    ]
    for label in ("cold", "warm"):
        v = MathVerifier() if label == "cold" else v  # noqa: F821 (bound on the first pass)
        times = []
        for problem, completion in jobs:
            t = time.perf_counter()
            v(problem, completion)
            times.append((time.perf_counter() - t, problem.get("answer"), completion[-60:]))
        total = sum(t for t, _, _ in times)
        print(f"{label}: {len(jobs)} checks in {total:.2f} s = {len(jobs) / total:.0f} checks/s; slowest:")
        for t, gold, tail in sorted(times, key=lambda x: x[0], reverse=True)[:3]:
            print(f"  {t * 1000:.0f} ms  gold {gold!r}  ...{tail!r}")
    for completion in hostile(hostile_n):
        t = time.perf_counter()
        status = v({"answer": "5"}, completion).status
        print(f"hostile ({len(completion)} chars, {completion[:20]!r}...): {status} in {(time.perf_counter() - t) * 1000:.0f} ms")


def main() -> None:
    import argparse
    import importlib.util

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", help="another file defining PAIRS (or HELDOUT) in the same format")
    ap.add_argument("--timing", action="store_true", help="also time every check: checks/s and the slowest ones")
    ap.add_argument("--hostile", type=int, default=20000, help="repetitions in the hostile completions (--timing)")
    args = ap.parse_args()
    if args.pairs:
        spec = importlib.util.spec_from_file_location("extra_pairs", args.pairs)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        pairs = getattr(mod, "PAIRS", None) or mod.HELDOUT
        golds = getattr(mod, "BAD_GOLDS", []), getattr(mod, "GOOD_GOLDS", [])
    else:
        from math_pairs import BAD_GOLDS, GOOD_GOLDS
        from math_pairs import PAIRS as pairs

        golds = BAD_GOLDS, GOOD_GOLDS

    from math_pairs import score, score_golds

    counts, wrong = score(pairs)
    if args.timing:
        timing(pairs, args.hostile)
    if golds[0] or golds[1]:  # unreadable golds must be refused by check_gold, readable ones accepted
        counts["bad_gold"], gold_wrong = score_golds(*golds)
        wrong += gold_wrong
    print(table(counts))
    for cat, gold, pred, same in wrong:
        print(f"  misjudged [{cat}] gold {gold!r} pred {pred!r}: labelled {'equivalent' if same else 'different'}")


if __name__ == "__main__":
    main()
