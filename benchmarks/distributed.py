"""reasonrl-train on 1 and on 2 processes (torchrun, gloo, FSDP2), one after the other, on the same global batch.

    .venv/bin/python benchmarks/distributed.py                  # r1_zero_arith, 12 steps each
    .venv/bin/python benchmarks/distributed.py --steps 6 --extra rollout.prompts_per_step=16

Each run is ``reasonrl-train experiment=r1_zero_arith`` (the tiny arithmetic model, transformers generator, the
scoring pool off so the two runs use the same cores the same way). Under torchrun every rank counts the bytes
it sends through the collectives FSDP2 and the trainer issue (all-gather, reduce-scatter, all-reduce, object
gathers), by wrapping ``torch.distributed``'s functions in this process only. Reported per run: the median
step time after the first step and its split, the metrics over the steps (reward, lengths, entropy), peak
resident memory per rank, and bytes communicated per step per rank. On a 2-core machine the two processes
share the cores the one process had: this measures overhead, not speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTED = ("all_gather_single", "reduce_scatter_single", "all_reduce", "all_gather", "broadcast", "all_gather_object")


def count_collectives(out: Path) -> None:
    """Wrap torch.distributed's collectives to count the bytes this rank puts in; written to ``out`` at exit."""
    import atexit

    import torch
    import torch.distributed as dist

    sent = dict.fromkeys(COUNTED, 0)
    calls = dict.fromkeys(COUNTED, 0)

    def nbytes(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(nbytes(y) for y in x)
        return 0

    def wrap(name):
        fn = getattr(dist, name)

        def counted(*args, **kwargs):
            calls[name] += 1
            if name == "all_gather_single":  # FSDP2's parameter all-gather
                sent[name] += nbytes(args[1] if len(args) > 1 else kwargs["input_tensor"])
            elif name == "reduce_scatter_single":  # FSDP2's gradient reduce-scatter
                sent[name] += nbytes(args[1] if len(args) > 1 else kwargs["input"])
            elif name == "all_gather":
                sent[name] += nbytes(args[1] if len(args) > 1 else kwargs["tensor"])
            elif name == "all_gather_object":
                import pickle

                sent[name] += len(pickle.dumps(args[1] if len(args) > 1 else kwargs["obj"]))
            else:
                sent[name] += nbytes(args[0] if args else next(iter(kwargs.values())))
            return fn(*args, **kwargs)

        setattr(dist, name, counted)

    for name in COUNTED:
        wrap(name)

    def write():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out.write_text(json.dumps({"bytes": sent, "calls": calls, "peak_rss_gb": rss}))

    atexit.register(write)


def worker() -> None:
    """Under torchrun: count, then run reasonrl-train with the remaining arguments."""
    rank = os.environ.get("RANK", "0")
    count_collectives(Path(os.environ["BENCH_COUNTS"] + f".{rank}.json"))
    from reasonrl.train import cli

    sys.argv = ["reasonrl-train", *sys.argv[2:]]
    cli()


def run(nproc: int, steps: int, extra: list[str], root: Path) -> dict:
    run_dir = root / f"np{nproc}"
    counts = root / f"counts{nproc}"
    args = [f"hydra.run.dir={run_dir}", "experiment=r1_zero_arith", f"max_steps={steps}", "eval.every=0",
            "logging.progress=false", "verify.workers=0", "checkpoint.every=0", "checkpoint.final=false", *extra]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        __file__,
        "--worker",
        *args,
    ]
    t = time.time()
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "BENCH_COUNTS": str(counts)})
    wall = time.time() - t
    if res.returncode != 0:
        raise SystemExit(f"{nproc}-process run failed:\n{res.stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if r["step"] > 0]
    later = steps_rows[1:]  # the first step warms up
    med = {k: statistics.median(r[f"time/{k}"] for r in later) for k in ("step_s", "generate_s", "verify_s", "train_s", "sync_s")}
    ranks = [json.loads(Path(f"{counts}.{r}.json").read_text()) for r in range(nproc)]
    per_step = [sum(r["bytes"].values()) / steps for r in ranks]
    metrics = {
        k: statistics.mean(r[k] for r in steps_rows)
        for k in ("reward/mean", "rollout/len_mean", "train/entropy", "verify/correct_frac")
    }
    return {"nproc": nproc, "wall_s": wall, "median": med, "metrics": metrics, "ranks": ranks, "bytes_per_step": per_step}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--extra", nargs="*", default=[], help="more reasonrl-train overrides for both runs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(n, args.steps, args.extra, Path(tmp)) for n in (1, 2)]
    print(f"{'':24}" + "".join(f"{str(r['nproc']) + ' process(es)':>16}" for r in results))
    for k in ("step_s", "generate_s", "verify_s", "train_s", "sync_s"):
        print(f"{'median ' + k:24}" + "".join(f"{r['median'][k]:16.3f}" for r in results))
    for k in ("reward/mean", "rollout/len_mean", "train/entropy", "verify/correct_frac"):
        print(f"{k:24}" + "".join(f"{r['metrics'][k]:16.3f}" for r in results))
    print(f"{'peak RSS per rank, GB':24}" + "".join(f"{max(x['peak_rss_gb'] for x in r['ranks']):16.2f}" for r in results))
    print(f"{'MB sent/step per rank':24}" + "".join(f"{max(r['bytes_per_step']) / 2**20:16.2f}" for r in results))
    two = results[1]["ranks"][0]
    parts = [f"{k} {v / args.steps / 2**20:.2f} ({two['calls'][k] / args.steps:.0f} calls)" for k, v in two["bytes"].items() if v]
    print("rank 0 of 2, MB per step by collective: " + ", ".join(parts))
    print(f"step time ratio 2/1: {results[1]['median']['step_s'] / results[0]['median']['step_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
