"""A real code-RL GRPO step with scoring after generation vs overlapped with it, side by side in one invocation.

    .venv/bin/python benchmarks/overlap.py                     # SmolLM2-135M on MBPP prompts, vLLM, 4 steps each
    .venv/bin/python benchmarks/overlap.py --steps 3 --extra rollout.prompts_per_step=16

Both runs are ``reasonrl-train experiment=smollm2_mbpp`` (SmolLM2-135M-Instruct, vLLM, the code verifier's tests in
the sandbox through the scoring pool) with the same seed, so they sample the same completions; one with
``verify.overlap=false`` (every check starts after the last completion), one with ``verify.overlap=true`` (each
group's checks start when its completions exist). Reported: the median over the steps after the first of the
step time and its split (``generate_s``; ``verify_s`` = the scoring still running after generation ended; train;
sync), and the verdict counts, which must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEYS = ("step_s", "generate_s", "verify_s", "train_s", "sync_s")


def run(overlap: bool, steps: int, extra: list[str], root: Path) -> dict:
    run_dir = root / f"overlap_{overlap}"
    args = ["experiment=smollm2_mbpp", f"max_steps={steps}", f"verify.overlap={str(overlap).lower()}", f"run_dir={run_dir}",
            "eval.every=0", "eval.benchmarks={}", "task.heldout_size=4", "eval.max_new_tokens=64", "logging.progress=false",
            "checkpoint.every=0", "checkpoint.final=false", "rollout.prompts_per_step=8", "rollout.max_new_tokens=256",
            *extra]  # fmt: skip
    t = time.time()
    env = {**os.environ, "REASONRL_DATA_DIR": os.environ.get("REASONRL_DATA_DIR", str(REPO.parent / "shared" / "data"))}
    res = subprocess.run([sys.executable, "-m", "reasonrl.train", *args], cwd=root, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"overlap={overlap} failed:\n{res.stderr[-4000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if r["step"] > 0]
    later = steps_rows[1:] or steps_rows
    statuses = ("correct", "wrong", "no_answer", "format_error", "timeout", "error")
    return {
        "overlap": overlap,
        "wall_s": time.time() - t,
        "median": {k: statistics.median(r[f"time/{k}"] for r in later) for k in KEYS},
        "per_step": [{k: r[f"time/{k}"] for k in KEYS} for r in steps_rows],
        "verdicts": {s: statistics.mean(r.get(f"verify/{s}_frac", 0.0) for r in steps_rows) for s in statuses},
        "reward": [r["reward/mean"] for r in steps_rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--extra", nargs="*", default=[], help="more reasonrl-train overrides for both runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(o, args.steps, args.extra, Path(tmp)) for o in (False, True)]
    print(f"{'median over steps 2..':24}{'after generation':>18}{'overlapped':>14}")
    for k in KEYS:
        print(f"{k:24}" + "".join(f"{r['median'][k]:{w}.2f}" for r, w in zip(results, (18, 14))))
    for r in results:
        print(f"overlap={r['overlap']}: rewards {[round(x, 3) for x in r['reward']]}, verdict fractions {r['verdicts']}")
    a, b = results
    print(f"step time overlapped / after: {b['median']['step_s'] / a['median']['step_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
