"""Verification throughput: math verifier in-process and through the scoring pool, cold and warm.

Run (from the project root)::

    .venv/bin/python benchmarks/verify.py                  # GSM8K-style and MATH-500-style answers
    .venv/bin/python benchmarks/verify.py --workers 2 --repeat 2

GSM8K-style: every GSM8K test gold (1319) against a completion ending in
``\\boxed{N}``, half right and half off by one, some written ``\\$1,234``.
MATH-500-style: every MATH-500 gold against its own boxed answer and a
perturbed one (the sympy path). "Cold" is the first pass of a fresh verifier
(gold answers parsed on first use; for the pool, worker start-up excluded and
reported on its own); "warm" is a second pass over the same problems.
Prints verifications per second; a markdown table last.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from reasonrl.verifiers.math import MathVerifier, _gold_strings
from reasonrl.verifiers.pool import ScoringPool

DATA = os.environ.get("REASONRL_DATA_DIR", "../shared/data")


def gsm8k_jobs():
    rows = [json.loads(x) for x in open(f"{DATA}/gsm8k/test.jsonl")]
    problems, completions = [], []
    for i, r in enumerate(rows):
        gold = int(_gold_strings(r["answer"], "gsm8k")[0])
        n = gold if i % 2 else gold + 1
        shown = f"\\${n:,}" if i % 5 == 0 else str(n)
        problems.append({"answer": r["answer"]})
        completions.append(f"Let me compute step by step. ... So the total is {n}.\n\\boxed{{{shown}}}")
    return problems, completions


def math500_jobs():
    rows = [json.loads(x) for x in open(f"{DATA}/math500/test.jsonl")]
    problems, completions = [], []
    for r in rows:
        gold = _gold_strings(r["answer"], "boxed")[0]
        for pred in (gold, gold + "+1"):
            problems.append({"answer": r["answer"]})
            completions.append(f"Therefore the answer is $\\boxed{{{pred}}}$.")
    return problems, completions


def bench(name, problems, completions, workers, repeat):
    out = {"set": name, "n": len(completions)}
    v = MathVerifier()
    for i in range(repeat):
        t = time.perf_counter()
        for p, c in zip(problems, completions):
            v(p, c)
        out[f"inproc_{'cold' if i == 0 else 'warm'}"] = len(completions) / (time.perf_counter() - t)
    t = time.perf_counter()
    pool = ScoringPool({"math": MathVerifier()}, workers=workers, timeout_s=10)
    pool.run(problems[:1], completions[:1])  # wait until the workers are up
    out["pool_startup_s"] = time.perf_counter() - t
    for i in range(repeat):
        t = time.perf_counter()
        rows = pool.run(problems, completions)
        out[f"pool_{'cold' if i == 0 else 'warm'}"] = len(completions) / (time.perf_counter() - t)
        out["statuses"] = sorted({r["math"].status for r in rows})
    pool.close()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    res = [bench("gsm8k", *gsm8k_jobs(), args.workers, args.repeat), bench("math500", *math500_jobs(), args.workers, args.repeat)]
    print(f"\nmachine: {os.cpu_count()} cpus; pool workers: {args.workers}")
    print("| answers | verifications | in-process cold /s | in-process warm /s | pool cold /s | pool warm /s | pool start-up s |")
    print("|---|---|---|---|---|---|---|")
    for r in res:
        print(
            f"| {r['set']} | {r['n']} | {r['inproc_cold']:.0f} | {r['inproc_warm']:.0f} | {r['pool_cold']:.0f} | "
            f"{r['pool_warm']:.0f} | {r['pool_startup_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
