"""Does the Python tool win on the harder arithmetic split? R1-Zero with the tool vs without, on 3 seeds.

For each seed and arm (``tools``: ``experiment=r1_zero_arith_tools``; ``tool_free``: the same preset with
``env.name=single_turn``) it trains ``--steps`` GRPO steps with ``reasonrl-train`` as a subprocess, one run at a
time, evaluating on the held-out set every ``--eval-every`` steps (greedy and sampled at temperature 1). Then
the controls, on the same held-out set and sampling settings as the trainer's evaluation:

* each tools run's final model with the tool DISABLED (single turn: a call it writes is not run, so it must
  write the output itself) and ENABLED (the training agent loop), greedy and sampled;
* each tool-free run's final model with the tool disabled (its own setting) and ENABLED (does access alone
  help a model RL never rewarded for calling it?).

Outputs: ``benchmarks/results/tools_study.json`` (per seed and arm: the eval curve, the tool-call rate per step,
final and control numbers, wall seconds and the time/* means) and ``benchmarks/results/tools_study.png`` (left:
tool-call rate under RL; right: held-out greedy accuracy of both arms). Run directories live under
``benchmarks/results/tools_study_runs/`` (ignored by git through a ``.gitignore`` the script writes there); a run
whose ``summary.json`` exists is reused, so an interrupted study resumes where it stopped.

    python benchmarks/tools_study.py                 # the study (about 35 minutes on 2 CPU cores)
    python benchmarks/tools_study.py --steps 4 --eval-every 2 --seeds 0 --tag smoke   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PRESET = "r1_zero_arith_tools"
ARMS = ("tools", "tool_free")
TIME_KEYS = ("time/step_s", "time/generate_s", "time/tool_s", "time/train_s", "time/verify_s")


def log(msg: str, t0: float) -> None:
    print(f"[tools_study {time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def train_command(arm: str, seed: int, steps: int, every: int, run_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("reasonrl-train")
    cmd = [str(exe) if exe.exists() else "reasonrl-train", f"experiment={PRESET}", f"seed={seed}"]
    if arm == "tool_free":
        cmd.append("env.name=single_turn")
    return [*cmd, f"max_steps={steps}", f"eval.every={every}", f"run_dir={run_dir}", "logging.progress=false"]


def train(arm: str, seed: int, steps: int, every: int, run_dir: Path, t0: float) -> float | None:
    """Train one run unless ``run_dir`` holds a finished one; the wall seconds of this call (None: reused)."""
    if (run_dir / "summary.json").exists():
        log(f"{arm} seed {seed}: reusing the finished run in {run_dir.relative_to(REPO)}", t0)
        return None
    cmd = train_command(arm, seed, steps, every, run_dir)
    if run_dir.exists():  # an interrupted run: start it afresh
        cmd.append("overwrite=true")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    log(f"{arm} seed {seed}: training ({' '.join(cmd[1:])})", t0)
    start, load = time.perf_counter(), os.getloadavg()[0]
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as out:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{arm} seed {seed} failed (exit {rc}); see {run_dir.parent / (run_dir.name + '.log')}")
    loads = [round(load, 2), round(os.getloadavg()[0], 2)]  # above 2 on 2 cores: other work shared the machine
    (run_dir / "study_wall.json").write_text(json.dumps({"wall_s": wall, "loadavg_1min_before_after": loads}))
    log(f"{arm} seed {seed}: done in {wall:.0f}s", t0)
    return wall


def read_run(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = [
        {"step": r["step"], "greedy": r["eval/arith/accuracy"], "sampled": r.get("eval/arith/accuracy_sampled")}
        for r in rows
        if "eval/arith/accuracy" in r
    ]
    steps = [r for r in rows if "time/step_s" in r]
    tool_rate = [
        {
            "step": r["step"],
            "used_frac": r.get("tools/used_frac"),  # None: a tool-free run (no tool to call)
            "calls_mean": r.get("tools/calls_mean"),
            "accuracy_with": r.get("tools/accuracy_with"),
            "accuracy_without": r.get("tools/accuracy_without"),
            "reward_mean": r.get("reward/mean"),
        }
        for r in steps
    ]
    times = {k: statistics.fmean(r.get(k, 0.0) for r in steps) for k in TIME_KEYS}
    times["time/step_s_median"] = statistics.median(r["time/step_s"] for r in steps)
    times["steps_total_s"] = sum(r["time/step_s"] for r in steps)
    elapsed, reach = 0.0, None  # first evaluation at or above 50% greedy: its step and the step seconds before it
    by_step = {r["step"]: r["time/step_s"] for r in steps}
    for point in curve:
        elapsed = sum(v for s, v in by_step.items() if s <= point["step"])
        if point["greedy"] >= 0.5:
            reach = {"step": point["step"], "step_seconds": round(elapsed, 1)}
            break
    wall_file = run_dir / "study_wall.json"
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    return {
        "run_dir": str(run_dir.relative_to(REPO)),
        "wall_s": wall.get("wall_s", summary.get("wall_s")),
        "loadavg_1min_before_after": wall.get("loadavg_1min_before_after"),
        "trainer_wall_s": summary.get("wall_s"),
        "eval_curve": curve,
        "tool_rate": tool_rate,
        "final": {"greedy": curve[-1]["greedy"], "sampled": curve[-1]["sampled"], "step": curve[-1]["step"]},
        "start": {"greedy": curve[0]["greedy"], "sampled": curve[0]["sampled"]},
        "tool_rate_start": tool_rate[0]["used_frac"] if tool_rate else None,
        "tool_rate_end": tool_rate[-1]["used_frac"] if tool_rate else None,
        "tool_rate_end_last5": mean(r["used_frac"] for r in tool_rate[-5:]),
        "reach_50_greedy": reach,
        "time_means": times,
    }


# --------------------------------------------------------------------------- controls
def compose_preset():
    from hydra import compose, initialize_config_dir

    from reasonrl.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="train", overrides=[f"experiment={PRESET}"])


class Controls:
    """The held-out set of the composed preset and the trainer's evaluation settings, for final models."""

    def __init__(self):
        import torch

        from reasonrl.build import build_verifiers
        from reasonrl.tasks import get_task

        torch.set_num_threads(2)
        self.cfg = cfg = compose_preset()
        self.task = get_task(cfg.task)
        self.problems = self.task.heldout(cfg.task.heldout_size)
        self.verifier = build_verifiers(cfg.verifier)[cfg.task.answer_verifier][0]

    def evaluate(self, model_dir: Path, seed: int) -> dict:
        import torch

        from reasonrl.agent import build_agent
        from reasonrl.build import build_generator
        from reasonrl.evals.harness import sample_and_score
        from reasonrl.policy import load_hf

        cfg = self.cfg
        model, tok = load_hf(model_dir, cfg.model.dtype)
        model.eval()
        engine = build_generator(cfg.generator, model, tok, str(model_dir), cfg.model.compute_dtype)
        with_tool = build_agent(cfg.env, engine, tok, model)  # the preset's env: the Python tool, as in training
        out = {}
        try:
            for name, gen in (("tool_off", engine), ("tool_on", with_tool)):
                res = {}
                for mode, temp in (("greedy", 0.0), ("sampled", cfg.eval.temperature)):
                    start = time.perf_counter()
                    with torch.no_grad():
                        g = sample_and_score(
                            gen,
                            tok,
                            self.problems,
                            render=lambda p: self.task.render_prompt(p, cfg.task.template, tok),
                            verifier=self.verifier,
                            temperature=temp,
                            max_new_tokens=cfg.eval.max_new_tokens,
                            seed=seed,
                        )
                    rs = g["rollouts"]
                    res[mode] = g["accuracy"]
                    # a tool turn: the call ran; "<python>" in the model's text: it wrote a call (run or not)
                    res[f"{mode}_tool_used_frac"] = statistics.fmean(any(t.role == "tool" for t in r.turns) for r in rs)
                    res[f"{mode}_call_written_frac"] = statistics.fmean("<python>" in r.text for r in rs)
                    res[f"{mode}_seconds"] = round(time.perf_counter() - start, 2)
                out[name] = res
        finally:
            with_tool.close()
        return out


# --------------------------------------------------------------------------- report
def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def aggregate(runs: dict) -> dict:
    agg = {}
    for arm, by_seed in runs.items():
        rs = list(by_seed.values())
        a = {
            "final_greedy": mean(r["final"]["greedy"] for r in rs),
            "final_sampled": mean(r["final"]["sampled"] for r in rs),
            "tool_rate_start": mean(r["tool_rate_start"] for r in rs),
            "tool_rate_end": mean(r["tool_rate_end"] for r in rs),
            "tool_rate_end_last5": mean(r["tool_rate_end_last5"] for r in rs),
            "wall_s": mean(r["wall_s"] for r in rs),
            "reached_50_greedy": sum(r["reach_50_greedy"] is not None for r in rs),
        }
        for k in (*TIME_KEYS, "time/step_s_median"):
            a[k] = mean(r["time_means"][k] for r in rs)
        for cond in ("tool_off", "tool_on"):
            for mode in ("greedy", "sampled", "greedy_tool_used_frac", "sampled_tool_used_frac"):
                a[f"control_{cond}_{mode}"] = mean(r["control"][cond][mode] for r in rs if "control" in r)
        agg[arm] = a
    return agg


def plot(runs: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"tools": "tab:blue", "tool_free": "tab:orange"}
    for seed, r in sorted(runs.get("tools", {}).items()):
        xs = [p["step"] for p in r["tool_rate"]]
        left.plot(xs, [p["used_frac"] for p in r["tool_rate"]], lw=1.2, label=f"seed {seed}")
    left.set(xlabel="GRPO step", ylabel="fraction of rollouts calling the tool", title="Tool-call rate under RL (tools arm)")
    left.set_ylim(-0.02, 1.02)
    left.legend(loc="best", fontsize=8)
    for arm, by_seed in runs.items():
        curves = [r["eval_curve"] for r in by_seed.values()]
        for c in curves:
            right.plot([p["step"] for p in c], [p["greedy"] for p in c], color=colors[arm], alpha=0.3, lw=0.9)
        common = sorted(set.intersection(*({p["step"] for p in c} for c in curves))) if curves else []
        m = [statistics.fmean(next(p["greedy"] for p in c if p["step"] == s) for c in curves) for s in common]
        right.plot(common, m, color=colors[arm], lw=2.2, marker="o", ms=3, label=f"{arm} (mean of {len(curves)} seeds)")
        off = mean(r["control"]["tool_off"]["greedy"] for r in by_seed.values() if "control" in r)
        if arm == "tools" and off is not None and common:  # the control: the final tools models, tool disabled
            right.plot([common[-1]], [off], color=colors[arm], marker="x", ms=9, mew=2, ls="none",
                       label="final tools models, tool disabled (mean)")  # fmt: skip
    right.set(xlabel="GRPO step", ylabel="held-out accuracy (greedy)", title="Held-out accuracy, same split and steps")
    right.set_ylim(-0.02, 1.02)
    right.legend(loc="best", fontsize=8)
    fig.suptitle(f"R1-Zero on sums of four 3-digit numbers, {steps} steps: with the Python tool vs tool-free", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pct(x):
    return "  -  " if x is None else f"{100 * x:5.1f}"


def print_table(runs: dict, agg: dict) -> None:
    print("\narm        seed  greedy  sampled  tool%start  tool%end  reach50  wall_s   off:greedy/sampled  on:greedy/sampled")
    for arm, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            c = r.get("control", {})
            off, on = c.get("tool_off", {}), c.get("tool_on", {})
            reach = r["reach_50_greedy"]["step"] if r["reach_50_greedy"] else "-"
            print(
                f"{arm:10s} {seed:>4}  {pct(r['final']['greedy'])}   {pct(r['final']['sampled'])}    "
                f"{pct(r['tool_rate_start'])}     {pct(r['tool_rate_end'])}  {reach!s:>6}  {r['wall_s']:6.0f}   "
                f"{pct(off.get('greedy'))}/{pct(off.get('sampled'))}       {pct(on.get('greedy'))}/{pct(on.get('sampled'))}"
            )
        a = agg[arm]
        print(
            f"{arm:10s} mean  {pct(a['final_greedy'])}   {pct(a['final_sampled'])}    {pct(a['tool_rate_start'])}"
            f"     {pct(a['tool_rate_end'])}  {a['reached_50_greedy']}/{len(by_seed)}    {a['wall_s']:6.0f}   "
            f"{pct(a['control_tool_off_greedy'])}/{pct(a['control_tool_off_sampled'])}       "
            f"{pct(a['control_tool_on_greedy'])}/{pct(a['control_tool_on_sampled'])}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80, help="GRPO steps per run (max_steps)")
    ap.add_argument("--eval-every", type=int, default=8, help="held-out evaluation every E steps (eval.every)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tag", default="", help="a suffix for the output names (a smoke test keeps the study's files)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    runs_root = RESULTS / f"tools_study{args.tag and '_' + args.tag}_runs"
    runs_root.mkdir(parents=True, exist_ok=True)
    (runs_root / ".gitignore").write_text("*\n")  # run folders are large: never committed
    out_json = RESULTS / f"tools_study{args.tag and '_' + args.tag}.json"
    out_png = RESULTS / f"tools_study{args.tag and '_' + args.tag}.png"

    dirs = {(arm, s): runs_root / f"{arm}_seed{s}_steps{args.steps}_every{args.eval_every}" for s in args.seeds for arm in ARMS}
    for s in args.seeds:  # one torch job at a time: the runs in turn, the controls after all of them
        for arm in ARMS:
            train(arm, s, args.steps, args.eval_every, dirs[arm, s], t0)

    runs: dict[str, dict[str, dict]] = {arm: {} for arm in ARMS}
    controls = None
    for (arm, s), d in dirs.items():
        r = read_run(d)
        cache = d / "study_control.json"
        if cache.exists():
            r["control"] = json.loads(cache.read_text())
        else:
            if controls is None:
                log("controls: loading the held-out set", t0)
                controls = Controls()
            log(f"controls: {arm} seed {s}, final model with the tool disabled and enabled", t0)
            r["control"] = controls.evaluate(d / "checkpoints" / "final", s)
            cache.write_text(json.dumps(r["control"], indent=1))
        runs[arm][str(s)] = r

    agg = aggregate(runs)
    wall = time.perf_counter() - t0
    doc = {
        "description": (
            "R1-Zero (GRPO) on sums of four 3-digit numbers from model=tiny_arith_tools: tools arm "
            f"(experiment={PRESET}, the sandboxed Python tool) vs tool_free (env.name=single_turn), same steps, "
            "same held-out set (200 problems; greedy, and sampled at temperature 1). Controls: each final model "
            "evaluated on that set with the tool disabled (single turn) and enabled (the training agent loop)."
        ),
        "command": f"python benchmarks/tools_study.py --steps {args.steps} --eval-every {args.eval_every}"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
        + (f" --tag {args.tag}" if args.tag else ""),
        "train_command": " ".join(train_command("tools", 0, args.steps, args.eval_every, Path("RUN_DIR"))[1:]),
        "steps": args.steps,
        "eval_every": args.eval_every,
        "seeds": args.seeds,
        "machine": {"cpus": os.cpu_count(), "omp_num_threads": 2, "device": "cpu"},
        "timing_note": (
            "wall_s is each run's wall clock on this machine, start-up and evaluations included; other processes "
            "sharing the CPUs inflate it (loadavg_1min_before_after, where recorded, shows the load). "
            "time_means are the trainer's per-step time/* means; time/step_s_median is the figure least "
            "affected by such sharing. time/tool_s sums the tool calls' seconds across the tool threads, "
            "overlapping generation, so it can exceed the step's own seconds."
        ),
        "study_wall_s_this_invocation": round(wall, 1),
        "summary": agg,
        "runs": runs,
    }
    out_json.write_text(json.dumps(doc, indent=1))
    plot(runs, out_png, args.steps)
    print_table(runs, agg)
    log(f"wrote {out_json.relative_to(REPO)} and {out_png.relative_to(REPO)}", t0)


if __name__ == "__main__":
    main()
