"""From verdicts to rewards: weighted sums, loss masks, data-error filtering, metrics.

Scoring runs every configured verifier on every rollout: in this process, or
through a :class:`reasonrl.verifiers.pool.ScoringPool` of killable workers
when one is given (a hung check then costs one ``timeout`` verdict). A
verifier that raises costs an ``error`` verdict for that sample; samples whose
verdict status is in ``mask_statuses`` (by default ``timeout`` and ``error``)
are masked out of the loss instead of being scored as wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from reasonrl.verifiers.base import STATUSES, GoldAnswerError, Verdict, Verifier, safe_call

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
    mask_statuses: Sequence[str] = ("timeout", "error"),
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
        rows = [{name: _call(v, p, c) for name, (v, _) in verifiers.items()} for p, c in zip(problems, completions, strict=True)]
    rewards, masked = [], []
    for row in rows:
        present = [(verifiers[name][1], v) for name, v in row.items() if v is not None]
        rewards.append(sum(w * v.score for w, v in present))
        masked.append(any(v.status in mask_statuses for _, v in present))
    return Scored(rewards, rows, masked)


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
            check = getattr(verifier, "check_gold", None)
            if check is None:
                continue
            try:
                check(p)
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
