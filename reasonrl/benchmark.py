"""reasonrl-eval: a model (or the references themselves) on a list of benchmarks.

Run::

    reasonrl-eval model=smollm2_135m generator=vllm benchmarks=[gsm8k,math500] n=4 limit=100
    reasonrl-eval check=true                      # score each benchmark's reference solutions (no model)

Per benchmark: accuracy (pass@1 as the mean over the n samples), unbiased
pass@k and maj@k for each k in ``ks`` up to n, mean completion length and
truncation rate; written to results.json and results.md in the run directory,
with every sample and its verdict in samples.jsonl. results.json and results.md
are rewritten as each benchmark finishes, so an interrupted evaluation keeps
the finished ones (and says so in one line). Scoring uses the verifiers
training uses: the math verifier, or for code benchmarks (humaneval, mbpp) the
code verifier, which runs every program in the sandbox (maj@k is not defined
for code and is left out). Checks run in ``verify_workers`` killable
processes, each under a deadline: ``verify_timeout_s`` for math,
``code_verify_timeout_s`` (or longer, where a problem's cases need it) for code.
"""

from __future__ import annotations

import json
import time
from typing import Any


def _score(problems, completions, code: bool, extract, pool_workers: int, timeout_s: float):
    """Verdicts and extracted answers (None for code) for completion i against problem i; ``timeout_s``: the
    scoring pool's deadline of one check (the code verifier gives a check longer where its cases need it)."""
    from reasonrl.verifiers.base import extract_answer
    from reasonrl.verifiers.pool import ScoringPool, resolve_workers
    from reasonrl.verifiers.scoring import score

    if code:
        from reasonrl.verifiers.code import CodeVerifier

        name, verifier = "code", CodeVerifier()
    else:
        from reasonrl.verifiers.math import MathVerifier

        name, verifier = "math", MathVerifier(extract=extract)
    from tqdm import tqdm

    pool_workers = resolve_workers(pool_workers)
    chunk = max(64, 16 * pool_workers)  # progress every chunk; big enough to keep every worker busy
    bar = tqdm(total=len(completions), desc=f"score ({name})", unit="sample", mininterval=2.0, disable=len(completions) <= chunk)
    rows = []
    try:
        if pool_workers > 0:
            with ScoringPool({name: verifier}, workers=pool_workers, timeout_s=timeout_s) as pool:
                for i in range(0, len(completions), chunk):
                    rows += pool.run(problems[i : i + chunk], completions[i : i + chunk])
                    bar.update(len(completions[i : i + chunk]))
        else:
            for i in range(0, len(completions), chunk):
                rows += score(problems[i : i + chunk], completions[i : i + chunk], {name: (verifier, 1.0)}).verdicts
                bar.update(len(completions[i : i + chunk]))
    finally:
        bar.close()
    answers = [None] * len(completions) if code else [extract_answer(verifier, c) for c in completions]
    return [r[name] for r in rows], answers


def summarize(n: int, ks, verdicts, answers, lengths, clipped) -> dict[str, float]:
    from reasonrl.evals.estimators import maj_at_k, pass_at_k

    P = len(verdicts) // n
    correct = [v.status == "correct" for v in verdicts]
    out = {"problems": P, "samples": len(verdicts), "accuracy": sum(correct) / len(correct)}
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(correct[i * n : (i + 1) * n]), k) for i in range(P)) / P
            if answers is not None:  # None: no majority vote (code)
                out[f"maj@{k}"] = (
                    sum(maj_at_k(answers[i * n : (i + 1) * n], correct[i * n : (i + 1) * n], k) for i in range(P)) / P
                )
    if lengths:
        out["len_mean"] = sum(lengths) / len(lengths)
        out["truncated_frac"] = sum(clipped) / len(clipped)
    return out


def main(cfg) -> dict[str, Any]:
    from reasonrl.runs import Interrupted, open_run_dir

    run = open_run_dir(cfg, "reasonrl-eval")
    results: dict[str, Any] = {}
    current = [None]  # the benchmark being evaluated, for an interrupt's one line
    try:
        evaluate(cfg, run.path, results, current)
    except KeyboardInterrupt:
        raise Interrupted(_stopped(run, results, current[0])) from None
    except BaseException:
        _stopped(run, results, current[0])
        raise
    return results


def _stopped(run, results: dict[str, Any], current: str | None) -> str:
    """Where an interrupted or failed evaluation stood and what it kept (a run directory with nothing in it is removed)."""
    if not results and run.abandon():
        return f"during {current or 'setup'}, before any benchmark finished; the run directory {run.path} was removed"
    done = ", ".join(results) or "no benchmark"
    return f"during {current or 'setup'}; {run.path / 'results.json'} keeps the finished ones: {done}"


def evaluate(cfg, run_dir, results: dict[str, Any], current: list) -> None:
    """Each benchmark in turn; results.json and results.md are rewritten after each one finishes, so what is done
    stays done if the run stops later."""
    from reasonrl.runs import announce

    model = tokenizer = generator = None
    if not cfg.check:
        from reasonrl.agent import build_agent
        from reasonrl.build import build_generator
        from reasonrl.models import load_policy

        current[0] = "model loading"
        model, tokenizer, path = load_policy(cfg.model)
        # with env=python every sample runs the same agent loop as training
        generator = build_agent(cfg.env, build_generator(cfg.generator, model, tokenizer, path), tokenizer, model)
    md = ""
    with open(run_dir / "samples.jsonl", "w", buffering=1) as samples:
        for name in cfg.benchmarks:
            current[0] = name
            results[name] = _one_benchmark(cfg, name, generator, tokenizer, samples)
            res = results[name]
            print(
                f"[reasonrl] {name}: "
                + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
                flush=True,
            )
            md = write_results(run_dir, results)
    current[0] = None
    print(md, flush=True)
    announce(run_dir)


def write_results(run_dir, results: dict[str, Any]) -> str:
    """results.json and results.md (each replaced whole: never half-written); the table."""
    import os

    keys = sorted({k for r in results.values() for k in r if k not in ("problems", "samples")})
    md = ["| benchmark | problems | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, r in results.items():
        md.append(f"| {name} | {r['problems']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "" for k in keys) + " |")
    for file, text in (("results.json", json.dumps(results, indent=2)), ("results.md", "\n".join(md) + "\n")):
        tmp = run_dir / f".{file}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / file)
    return "\n".join(md)


def _one_benchmark(cfg, name: str, generator, tokenizer, samples) -> dict[str, Any]:
    """Sample (or take the references), score and summarise one benchmark; its samples go to ``samples``."""
    from reasonrl.evals.loaders import CODE_BENCHMARKS, load_benchmark, reference_extract
    from reasonrl.tasks.dataset import benchmark_instruction, render

    t = time.time()
    data_path = cfg.data[name]
    problems = load_benchmark(name, data_path, limit=cfg.limit)
    code = name in CODE_BENCHMARKS
    if cfg.check:
        n, completions, lengths, clipped = 1, [p["reference"] for p in problems], [], []
        extract = reference_extract(name)
        expanded = problems
    else:
        from reasonrl.agent import turn_row
        from reasonrl.data import check_prompt_lengths
        from reasonrl.pipeline import generate_and_verify, render_prompts
        from reasonrl.rollout import TRUNCATED, Sampling

        n = cfg.n
        instruction = benchmark_instruction(code, cfg.template)
        prompts = render_prompts(problems, lambda p: render(p, cfg.template, tokenizer, instruction), tokenizer)
        model_config = getattr(getattr(generator, "model", None), "config", None)
        check_prompt_lengths(prompts.ids, cfg.max_new_tokens, getattr(model_config, "max_position_embeddings", None),
                             f"benchmark {name}")  # fmt: skip
        sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        # progress every 32 problems (vLLM seeds each request, so its samples do not depend on this); scored below
        # in one pool with its own progress
        rollouts = generate_and_verify(generator, prompts, n, sampling, chunk=32, desc=f"eval {name}").rollouts
        completions = [r.text for r in rollouts]  # the model's own words (a multi-turn rollout's tool output left out)
        lengths = [r.model_tokens for r in rollouts]
        clipped = [r.finish_reason in TRUNCATED for r in rollouts]
        turns = [[turn_row(t) for t in r.turns] for r in rollouts]
        extract = list(cfg.extract)
        expanded = [prompts.problems[r.prompt_index] for r in rollouts]  # each as verifiers see it
    timeout_s = cfg.code_verify_timeout_s if code else cfg.verify_timeout_s
    verdicts, answers = _score(expanded, completions, code, extract, cfg.verify_workers, timeout_s)
    res = summarize(n, cfg.ks, verdicts, None if code else answers, lengths, clipped)
    if not cfg.check and getattr(generator.env, "multi_turn", False):
        calls = [sum(t["role"] == "tool" for t in ts) for ts in turns]
        res["tool_calls_mean"] = sum(calls) / max(len(calls), 1)
        res["tool_used_frac"] = sum(c > 0 for c in calls) / max(len(calls), 1)
    else:
        turns = [[] for _ in completions]
    res["wall_s"] = time.time() - t
    res["problems_per_s"] = len(problems) / res["wall_s"]
    for p, c, v, a, ts in zip(expanded, completions, verdicts, answers, turns):
        samples.write(
            json.dumps(
                {
                    "benchmark": name,
                    "id": p["id"],
                    "answer": str(p.get("answer", ""))[-200:],
                    "extracted": a,
                    "completion": c,
                    **({"turns": ts} if ts else {}),
                    "status": v.status,
                    "info": v.info,
                },
                default=str,
            )
            + "\n"
        )
    return res


def cli() -> None:
    import sys

    from reasonrl.config import run_entry_point
    from reasonrl.runs import hydra_argv, one_line_errors

    sys.argv = hydra_argv(sys.argv, "reasonrl-eval")
    run_entry_point(one_line_errors(main, "reasonrl-eval"), "eval")
