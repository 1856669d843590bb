"""The one path from problems to verdicts: render, tokenize, generate, verify.

Training (:func:`reasonrl.collect.collect_groups`), its periodic evaluation
(:func:`reasonrl.evals.harness.sample_and_score`) and ``reasonrl-eval``
(:mod:`reasonrl.benchmark`) all sample through here, so a prompt is rendered,
tokenized, generated from and checked the same way wherever it is used:

1. :func:`render_prompts`: each problem's prompt text, its token ids, and the
   problem as verifiers see it (with what its prompt opened, e.g. ``<think>``);
2. :func:`generate_and_verify`: ``n`` completions per prompt (prompt-major)
   and, when asked, one verdict row per completion (verifier name -> verdict):
   in a scoring pool's killable workers, streamed group by group while the rest
   is still generating where the generator hands groups over as they finish, or
   in this process.

Rewards, masks, dynamic sampling and aggregation stay with the callers.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from reasonrl.rollout import Generator, Rollout, Sampling
from reasonrl.tasks import with_prompt_info


@dataclass
class Prompts:
    """Rendered prompts, one per problem, in order."""

    problems: list[dict]  # each problem as verifiers see it: with what its prompt opened
    texts: list[str]  # the rendered prompt texts
    ids: list[list[int]]  # their token ids (no special tokens added: the template holds them)


def render_prompts(problems: Sequence[Mapping[str, Any]], render: Callable[[Mapping[str, Any]], str], tokenizer) -> Prompts:
    texts = [render(p) for p in problems]
    seen = [with_prompt_info(p, t) for p, t in zip(problems, texts)]
    return Prompts(seen, texts, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])


@dataclass
class Generated:
    """``n`` rollouts per prompt (prompt-major) and, when verified, one verdict row per rollout."""

    rollouts: list[Rollout]
    rows: list[dict] | None = None  # verifier name -> Verdict | None, per rollout; None: not verified here
    times: dict[str, float] = field(default_factory=lambda: {"generate_s": 0.0, "verify_s": 0.0})  # seconds


def streams(generator) -> bool:
    """Whether ``generator.generate`` hands over groups as they finish (an ``on_group`` parameter)."""
    try:
        return "on_group" in inspect.signature(generator.generate).parameters
    except (TypeError, ValueError):
        return False


def generate_and_verify(
    generator: Generator,
    prompts: Prompts,
    n: int,
    sampling: Sampling,
    *,
    pool=None,
    only: Sequence[str] | None = None,
    verifiers: Mapping[str, Any] | None = None,
    overlap: bool = True,
    chunk: int = 0,
    desc: str | None = None,
) -> Generated:
    """``n`` completions of every prompt and their verdicts.

    With ``pool``, the pool's verifiers (or the ``only`` ones) check every completion in its workers; with
    ``overlap`` and a generator that streams, each group goes to the workers the moment it exists, and
    ``verify_s`` counts only the wait for the checks still running after the last completion. Else, with
    ``verifiers`` (name -> verifier), the checks run in this process (a verifier that raises gives an
    ``error`` verdict). With neither, nothing is verified (``rows`` is None). ``chunk`` > 0 generates that
    many prompts per call with a progress bar named ``desc`` (a seeded engine's samples do not depend on it)."""
    out = Generated([])
    t = time.perf_counter()
    if pool is not None and overlap and not chunk and streams(generator):
        checks, order = pool.stream(only=only), []

        def on_group(group: list[Rollout]) -> None:
            order.extend(group)
            checks.add([prompts.problems[r.prompt_index] for r in group], [r.text for r in group])

        out.rollouts = generator.generate(prompts.ids, n, sampling, on_group=on_group, **_episodes(generator, prompts))
        out.times["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        verdicts = {id(r): row for r, row in zip(order, checks.results())}
        out.rows = [verdicts[id(r)] for r in out.rollouts]
        out.times["verify_s"] = time.perf_counter() - t
        return out
    out.rollouts = _generate(generator, prompts, n, sampling, chunk, desc)
    out.times["generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    seen = [prompts.problems[r.prompt_index] for r in out.rollouts]
    if pool is not None:
        out.rows = pool.run(seen, [r.text for r in out.rollouts], only=only)
    elif verifiers:
        from reasonrl.verifiers.scoring import verdict_row

        out.rows = [verdict_row(verifiers, p, r.text) for p, r in zip(seen, out.rollouts)]
    out.times["verify_s"] = time.perf_counter() - t
    return out


def _episodes(generator, prompts: Prompts, part: slice = slice(None)) -> dict:
    """``problems=`` for a generator that runs episodes (an environment's: :mod:`reasonrl.agent`), else {}."""
    try:
        takes = "problems" in inspect.signature(generator.generate).parameters
    except (TypeError, ValueError):
        takes = False
    return {"problems": prompts.problems[part]} if takes else {}


def _generate(generator, prompts: Prompts, n: int, sampling: Sampling, chunk: int, desc: str | None) -> list[Rollout]:
    ids = prompts.ids
    if not chunk:
        return generator.generate(ids, n, sampling, **_episodes(generator, prompts))
    from tqdm import tqdm

    rollouts: list[Rollout] = []
    with tqdm(total=len(ids), desc=desc, unit="problem", mininterval=2.0) as bar:
        for start in range(0, len(ids), chunk):
            these = slice(start, start + chunk)
            part = generator.generate(ids[these], n, sampling, **_episodes(generator, prompts, these))
            for r in part:
                r.prompt_index += start
            rollouts.extend(part)
            bar.update(len(ids[start : start + chunk]))
    return rollouts
