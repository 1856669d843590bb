"""One arithmetic-world run per algorithm preset (same seed and budget) and a comparison table.

Run (from the project root; reuses the cached base model)::

    .venv/bin/python benchmarks/algorithms.py --steps 100 --out-dir runs/algorithms

For each preset it runs ``reasonrl-train experiment=r1_zero_arith algorithm=<preset>``
and reads the run's metrics.jsonl: final greedy and sampled held-out accuracy,
mean completion length of the final training rollouts, and the first eval step
at which greedy accuracy reached 80% of its final value. Prints a markdown
table last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RUNS = [
    ("grpo (make train default)", ["algorithm=grpo"]),
    ("grpo_deepseekmath", ["algorithm=grpo_deepseekmath"]),
    ("dr_grpo", ["algorithm=dr_grpo"]),
    ("dapo", ["algorithm=dapo"]),
    ("dapo without dynamic sampling", ["algorithm=dapo", "algorithm.dynamic_sampling=false"]),
]


def summarize(run_dir: str) -> dict:
    rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    evals = [(r["step"], r["eval/arith/accuracy"]) for r in rows if "eval/arith/accuracy" in r]
    final = evals[-1][1]
    reach = next(s for s, a in evals if a >= 0.8 * final)
    train = [r for r in rows if "rollout/len_mean" in r]
    last = train[-10:]
    # finer than the eval grid: first step whose 10-step mean training reward reaches 80% of the last 10 steps'
    rew = [r["reward/integer/mean"] for r in train]
    smooth = [sum(rew[max(0, i - 9) : i + 1]) / len(rew[max(0, i - 9) : i + 1]) for i in range(len(rew))]
    reward_reach = next(train[i]["step"] for i, v in enumerate(smooth) if v >= 0.8 * smooth[-1])
    return {
        "final_greedy": final,
        "final_sampled": [r["eval/arith/accuracy_sampled"] for r in rows if "eval/arith/accuracy_sampled" in r][-1],
        "len_mean": sum(r["rollout/len_mean"] for r in last) / len(last),
        "steps_to_80pct": reach,
        "steps_to_80pct_reward": reward_reach,
        "dropped_groups": sum(r.get("group/dropped", 0) for r in train),
        "wall_s": json.load(open(os.path.join(run_dir, "summary.json")))["wall_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/algorithms")
    ap.add_argument("--summarize-only", action="store_true", help="re-read existing run directories")
    args = ap.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "reasonrl-train")
    results = []
    for name, overrides in RUNS:
        run_dir = os.path.join(args.out_dir, name.split()[0] + ("_nods" if "without" in name else ""))
        t = time.time()
        if not args.summarize_only:
            subprocess.run(
                [
                    exe,
                    "experiment=r1_zero_arith",
                    *overrides,
                    f"max_steps={args.steps}",
                    f"seed={args.seed}",
                    "logging.progress=false",
                    f"hydra.run.dir={run_dir}",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        res = {"preset": name, **summarize(run_dir)}
        print(json.dumps(res), f"({time.time() - t:.0f} s)", flush=True)
        results.append(res)
    print(f"\nseed {args.seed}, {args.steps} steps, 32 prompts x 8 samples, eval every 10 steps on 500 held-out problems")
    print(
        "| preset | final greedy acc. | final sampled acc. | completion length (last 10 steps) "
        "| steps to 80% of final acc. (eval every 10) | steps to 80% of final train reward | groups dropped | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['preset']} | {r['final_greedy']:.1%} | {r['final_sampled']:.1%} | {r['len_mean']:.1f} | "
            f"{r['steps_to_80pct']} | {r['steps_to_80pct_reward']} | {r['dropped_groups']} | {r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
