"""The evaluation loop: generate, verify, aggregate.

``sample_and_score`` renders each problem, generates ``n`` samples (greedy when
the temperature is 0) through the path training samples through
(:mod:`reasonrl.pipeline`), scores them with one verifier (default: exact integer
answer), and returns accuracy (the mean over all samples, i.e. pass@1 averaged
over ``n``), mean completion length, mean think/answer lengths and the
truncation rate.

:func:`training_eval` is the trainer's periodic evaluation (the task's
held-out set, greedy and sampled, plus configured benchmark subsets, which
:func:`load_benchmark_subsets` loads once).

It does not compute pass@k / maj@k (see :mod:`reasonrl.evals.estimators`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from reasonrl.metrics import cot_lengths, mean
from reasonrl.rollout import TRUNCATED, Generator, Sampling
from reasonrl.tasks import opens_think


def sample_and_score(
    generator: Generator,
    tokenizer,
    problems: Sequence[Mapping[str, Any]],
    *,
    render: Callable[[Mapping[str, Any]], str],
    verifier=None,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    banned_first_tokens: tuple[int, ...] = (),
    pool=None,
    pool_name: str | None = None,
    runtime=None,
) -> dict[str, Any]:
    """``pool``: score in that :class:`ScoringPool`'s killable workers with the verifier it holds under
    ``pool_name`` (a hanging check then costs one ``timeout`` verdict); else in this process. ``runtime``
    (several processes): each rank generates and scores its contiguous part of the problems, and every rank
    gets the numbers (and rollouts, verdicts) of all of them, in order."""
    from reasonrl.pipeline import generate_and_verify, render_prompts
    from reasonrl.runtime import Runtime
    from reasonrl.verifiers.integer import IntegerVerifier

    verifier = verifier or IntegerVerifier()
    runtime = runtime or Runtime()
    part = runtime.split(len(problems))
    prompts = render_prompts(list(problems)[part], render, tokenizer)
    texts = prompts.texts
    sampling = Sampling(
        temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, banned_first_tokens=banned_first_tokens
    )
    name = pool_name if pool is not None else "answer"
    g = generate_and_verify(generator, prompts, n, sampling, pool=pool, only=[name], verifiers={name: verifier})
    rollouts, verdicts = g.rollouts, [row[name] for row in g.rows]
    think, answer = cot_lengths([r.text for r in rollouts], tokenizer, [opens_think(texts[r.prompt_index]) for r in rollouts])
    if runtime.distributed:  # every rank's part, in problem order
        for r in rollouts:
            r.prompt_index += part.start
        rollouts, verdicts, think, answer = (runtime.gather(x) for x in (rollouts, verdicts, think, answer))
    correct = [v is not None and v.status == "correct" for v in verdicts]
    return {
        "accuracy": mean(correct),
        "len_mean": mean(r.model_tokens for r in rollouts),
        "think_len_mean": mean(think),
        "answer_len_mean": mean(answer),
        "clipped_frac": mean(r.finish_reason in TRUNCATED for r in rollouts),
        "n_samples": len(rollouts),
        "rollouts": rollouts,
        "verdicts": verdicts,
        "correct": correct,
    }


def training_eval(
    generator, tokenizer, problems, render, verifier, cfg, seed: int, benchmarks=None, pool=None, runtime=None
) -> dict[str, float]:
    """Greedy (and optionally sampled) accuracy and lengths on the held-out set: eval/<task>/... keys;
    plus greedy accuracy and length on each configured benchmark subset: eval/<benchmark>/... keys.
    With ``pool`` every check runs in its killable workers: the task's verifier under
    ``cfg.task.answer_verifier``, a benchmark's under ``eval/<benchmark>`` (see :func:`eval_pool_verifiers`).
    With ``runtime`` (several processes) the problems are split across the ranks and the numbers reduced."""

    name = cfg.task.name
    kw = dict(render=render, verifier=verifier, max_new_tokens=cfg.eval.max_new_tokens, pool=pool, runtime=runtime)
    kw["pool_name"] = cfg.task.answer_verifier if pool is not None else None
    g = sample_and_score(generator, tokenizer, problems, temperature=0.0, seed=seed, **kw)
    out = {
        f"eval/{name}/accuracy": g["accuracy"],
        f"eval/{name}/len_mean": g["len_mean"],
        f"eval/{name}/think_len_mean": g["think_len_mean"],
    }
    if cfg.eval.sampled:
        s = sample_and_score(generator, tokenizer, problems, temperature=cfg.eval.temperature, seed=seed, **kw)
        out[f"eval/{name}/accuracy_sampled"] = s["accuracy"]
        out[f"eval/{name}/think_len_mean_sampled"] = s["think_len_mean"]
    for bench, (bproblems, brender, bverifier) in (benchmarks or {}).items():
        b = sample_and_score(
            generator,
            tokenizer,
            bproblems,
            render=brender,
            verifier=bverifier,
            temperature=0.0,
            seed=seed,
            max_new_tokens=cfg.eval.max_new_tokens,
            pool=pool,
            pool_name=f"eval/{bench}" if pool is not None else None,
            runtime=runtime,
        )
        out[f"eval/{bench}/accuracy"] = b["accuracy"]
        out[f"eval/{bench}/len_mean"] = b["len_mean"]
    return out


def eval_pool_verifiers(benchmarks: Mapping[str, tuple]) -> dict[str, Any]:
    """The benchmark subsets' verifiers as a scoring pool holds them for :func:`training_eval`."""
    return {f"eval/{name}": v for name, (_, _, v) in benchmarks.items()}


def load_benchmark_subsets(cfg, tokenizer) -> dict:
    """{name: (problems, render, verifier)} for ``eval.benchmarks`` (name -> path), loaded once: the first
    ``eval.benchmark_limit`` problems (after ``eval.benchmark_filters[name]``), prompts in
    ``eval.benchmark_template``; math benchmarks scored by the math verifier, code ones by the code verifier."""
    from reasonrl.evals.loaders import CODE_BENCHMARKS, load_benchmark
    from reasonrl.tasks.dataset import benchmark_instruction, render

    out = {}
    for name, path in cfg.eval.benchmarks.items():
        problems = load_benchmark(name, path, limit=cfg.eval.benchmark_limit, filter=cfg.eval.benchmark_filters.get(name))
        code = name in CODE_BENCHMARKS
        template = cfg.eval.benchmark_template
        instruction = benchmark_instruction(code, template)
        out[name] = (problems, lambda p, i=instruction, t=template: render(p, t, tokenizer, i), _benchmark_verifier(code))
    return out


def _benchmark_verifier(code: bool):
    if code:
        from reasonrl.verifiers.code import CodeVerifier

        return CodeVerifier()
    from reasonrl.verifiers.math import MathVerifier

    return MathVerifier()
