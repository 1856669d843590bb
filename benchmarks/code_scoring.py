"""One step's worth of stdin/stdout code checks through the scoring pool.

    .venv/bin/python benchmarks/code_scoring.py                 # 1,024 checks, 10 cases each, 5% looping
    .venv/bin/python benchmarks/code_scoring.py --n 128 --loop-frac 0.25
    .venv/bin/python benchmarks/code_scoring.py --n 16 --workers 4   # a small batch: spread over the workers

Every check is a real sandboxed run per case (the `code` verifier with its
defaults: 5 s of CPU per run, 512 MB) in the killable pool (`verify.timeout_s=10`,
``--workers`` processes; default: the pool's auto size). Programs: 85% correct
(print twice the input), 10% wrong (print input + 1), ``--loop-frac`` looping
forever on every case (each loop costs its first case's 5 s of CPU: more wall
time than that when the cores are shared). Reported: wall time, verdicts per
kind of program (every looping program must be `wrong`, never a masked
`timeout`), infrastructure failures (`error` verdicts, must be 0), workers
replaced, problems pickled to workers (at most once per group of 8 completions
and worker).
"""

from __future__ import annotations

import argparse
import collections
import random
import time

CORRECT = "```python\nprint(2 * int(input()))\n```"
WRONG = "```python\nprint(int(input()) + 1)\n```"
LOOP = "```python\nwhile True:\n    pass\n```"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="checks (completions)")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--loop-frac", type=float, default=0.05)
    ap.add_argument("--group", type=int, default=8, help="completions per problem")
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from reasonrl.verifiers.code import CodeVerifier
    from reasonrl.verifiers.pool import ScoringPool, resolve_workers

    rng = random.Random(args.seed)
    problems, completions, kinds = [], [], []
    for _ in range(args.n // args.group):
        base = rng.randint(0, 10**6)
        problem = {"tests": [{"input": str(base + i), "output": str(2 * (base + i))} for i in range(args.cases)]}
        for _ in range(args.group):
            u = rng.random()
            kind = "loop" if u < args.loop_frac else ("wrong" if u < args.loop_frac + 0.10 else "correct")
            problems.append(problem)
            completions.append({"loop": LOOP, "wrong": WRONG, "correct": CORRECT}[kind])
            kinds.append(kind)
    workers = resolve_workers(args.workers)
    with ScoringPool({"code": CodeVerifier()}, workers=workers, timeout_s=10.0) as pool:
        t = time.perf_counter()
        rows = pool.run(problems, completions)
        wall = time.perf_counter() - t
        replaced, sent = pool.replaced, pool.problems_sent
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for kind, row in zip(kinds, rows):
        counts[kind][row["code"].status] += 1
    infra = sum(c["error"] for c in counts.values())
    print(f"{len(problems)} checks x {args.cases} cases, {workers} workers: {wall:.1f} s ({len(problems) / wall:.1f} checks/s)")
    print("| program | n | verdicts |\n|---|---:|---|")
    for kind in ("correct", "wrong", "loop"):
        c = counts[kind]
        print(f"| {kind} | {sum(c.values())} | " + ", ".join(f"{k} {status}" for status, k in sorted(c.items())) + " |")
    print(f"infrastructure failures (error verdicts): {infra}; workers replaced: {replaced}; "
          f"problems pickled to workers: {sent} for {len(problems) // args.group} groups")  # fmt: skip
    loops_ok = counts["loop"]["wrong"] == sum(counts["loop"].values())
    print("every looping program scored wrong:", loops_ok)


if __name__ == "__main__":
    main()
