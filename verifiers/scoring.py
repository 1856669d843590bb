"""From verdicts to rewards: weighted sums, loss masks, data-error filtering, metrics.

Scoring runs every configured verifier on every rollout: in this process, or
through a :class:`reasonrl.verifiers.pool.ScoringPool` of killable workers
when one is given (a hung check then costs one ``timeout`` verdict). A
verifier that raises costs an ``error`` verdict for that sample; samples whose
verdict status is in ``mask_statuses`` (by default ``timeout`` and ``error``)
are masked out of the loss instead of being scored as wrong.

Masking is silent by itself: a verifier that fails on every sample would leave
nothing in the loss. :func:`check_failures`, called with each training step's
verdicts, warns once per verifier with its first failure and stops the run
(:class:`VerifierFailure`) when one verifier fails on more than a set fraction
of a step's samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from reasonrl.verifiers.base import MASK_STATUSES, STATUSES, GoldAnswerError, Verdict, Verifier, check_gold, safe_call

log = logging.getLogger(__name__)


@dataclass
class Scored:
    rewards: list[float]  # (N,) weighted sum of verdict scores
    verdicts: list[dict[str, Verdict | None]]  # per rollout, per verifier name
    masked: list[bool]  # (N,) True: leave this sample out of the loss


def score(
    problems: Sequence[Mapping[str, Any]],
    completions: Sequence[str],
    verifiers: Mapping[str, tuple[Verifier, float]],
    mask_statuses: Sequence[str] = MASK_STATUSES,
    pool=None,
    rows: Sequence[dict[str, Verdict | None]] | None = None,
) -> Scored:
    """Score completion i against problems[i] with every verifier (in ``pool`` when given), or turn verdict
    ``rows`` already obtained (one dict per completion) into rewards and masks."""
    if rows is not None:
        rows = list(rows)
    elif pool is not None:
        rows = pool.run(problems, completions, only=list(verifiers))
    else:
        plain = {name: v for name, (v, _) in verifiers.items()}
        rows = [verdict_row(plain, p, c) for p, c in zip(problems, completions, strict=True)]
    rewards, masked = [], []
    for row in rows:
        present = [(verifiers[name][1], v) for name, v in row.items() if v is not None]
        rewards.append(sum(w * v.score for w, v in present))
        masked.append(any(v.status in mask_statuses for _, v in present))
    return Scored(rewards, rows, masked)


def verdict_row(verifiers: Mapping[str, Verifier], problem: Mapping[str, Any], completion: str) -> dict[str, Verdict | None]:
    """Every verifier's verdict on one completion, in this process (name -> verdict, None where it does not apply)."""
    return {name: _call(v, problem, completion) for name, v in verifiers.items()}


def _call(verifier: Verifier, problem: Mapping[str, Any], text: str) -> Verdict | None:
    try:
        return safe_call(verifier, problem, text)
    except GoldAnswerError as e:  # should have been filtered by check_golds
        return Verdict(0.0, "error", {"gold_error": str(e)[:200]})


def check_golds(
    problems: Sequence[Mapping[str, Any]], verifiers: Mapping[str, tuple[Verifier, float]], source: str
) -> list[Mapping[str, Any]]:
    """Drop problems whose gold answer a verifier cannot parse, reporting each once with its row."""
    kept = []
    for i, p in enumerate(problems):
        bad = None
        for name, (verifier, _) in verifiers.items():
            try:
                check_gold(verifier, p)
            except GoldAnswerError as e:
                bad = f"{name}: {e}"
                break
        if bad is None:
            kept.append(p)
        else:
            log.error("data error: %s row %d skipped (%s): %s", source, i, bad, dict(p))
    if len(kept) < len(problems):
        log.error("data errors: %d of %d problems in %s skipped", len(problems) - len(kept), len(problems), source)
    return kept


class VerifierFailure(RuntimeError):
    """A verifier failed (``error``/``timeout``) on too many of a step's samples to train on."""


FAILED_STATUSES = ("error", "timeout")
_warned: set[str] = set()  # verifiers whose first failure was already logged in this process


def _first_failure(verdict: Verdict) -> str:
    info = verdict.info or {}
    for key in ("exception", "gold_error", "error", "reason"):
        if key in info:
            return f"{verdict.status}: {info[key]}"
    return f"{verdict.status}: {dict(list(info.items())[:3]) or 'no detail'}"


def check_failures(
    verdicts: Sequence[Mapping[str, Verdict | None]], max_failed_frac: float = 0.5, step: int | None = None
) -> dict[str, float]:
    """Each verifier's fraction of ``error``/``timeout`` verdicts among the samples it scored this step.

    The first failure of each verifier is logged once, as a warning with its exception. A verifier above
    ``max_failed_frac`` raises :class:`VerifierFailure` naming it, the counts and its first exception: those
    samples would be masked out of the loss, so the step trains on little or nothing (``1.0``: never raise).
    Call it with the same verdicts on every rank (the whole batch) so that every rank stops together."""
    counts: dict[str, list] = {}  # name -> [scored, failed, first failed verdict]
    for row in verdicts:
        for name, v in row.items():
            if v is None:
                continue
            c = counts.setdefault(name, [0, 0, None])
            c[0] += 1
            if v.status in FAILED_STATUSES:
                c[1] += 1
                c[2] = c[2] or v
    fracs = {name: failed / scored for name, (scored, failed, _) in counts.items() if scored}
    at = "" if step is None else f" at step {step}"
    for name, (scored, failed, first) in counts.items():
        if first is not None and name not in _warned:
            _warned.add(name)
            log.warning(
                "verifier %r failed on %d of %d samples%s (masked out of the loss); first: %s",
                name,
                failed,
                scored,
                at,
                _first_failure(first),
            )
    over = {name: f for name, f in fracs.items() if f > max_failed_frac}
    if over:
        name = max(over, key=over.get)
        scored, failed, first = counts[name]
        raise VerifierFailure(
            f"verifier {name!r} failed (error/timeout) on {failed} of {scored} samples{at}, above "
            f"verify.max_failed_frac={max_failed_frac}; those samples are masked out of the loss, so the run would "
            f"learn nothing from them. First failure: {_first_failure(first)}. Fix the verifier (or its "
            "infrastructure), or raise verify.max_failed_frac (1.0 never stops)"
        )
    return fracs


def summarize(scored: Scored, names: Sequence[str]) -> dict[str, float]:
    """reward/mean, reward/std, reward/<name>/mean, reward/<name>/<info key>, verify/<status>_frac."""
    n = len(scored.rewards)
    out: dict[str, float] = {}
    if n == 0:
        return out
    m = sum(scored.rewards) / n
    out["reward/mean"] = m
    out["reward/std"] = (sum((r - m) ** 2 for r in scored.rewards) / n) ** 0.5
    counts = dict.fromkeys(STATUSES, 0)
    total = 0
    for name in names:
        vs = [row[name] for row in scored.verdicts if row.get(name) is not None]
        if not vs:
            continue
        out[f"reward/{name}/mean"] = sum(v.score for v in vs) / len(vs)
        keys = {k for v in vs for k, x in v.info.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}
        for k in sorted(keys):
            out[f"reward/{name}/{k}"] = sum(float(v.info.get(k, 0)) for v in vs) / len(vs)
        for v in vs:
            counts[v.status] += 1
        total += len(vs)
    for s in STATUSES:
        out[f"verify/{s}_frac"] = counts[s] / total if total else 0.0
    out["verify/masked_frac"] = sum(scored.masked) / n
    return out
