"""Run logging and chain-of-thought statistics.

:class:`RunLogger` writes one JSON object per step to ``metrics.jsonl``, a few
prompts/completions/verdicts per step to ``samples.jsonl``, and the same scalars
to TensorBoard (and to Weights & Biases when asked and installed). Metric keys
are a public interface: the key list is in ``docs/design.md`` ("Metrics").

:func:`split_think` and :func:`cot_lengths` measure how long the model thinks:
the think part is the text inside the first ``<think>`` block (to the end of
the completion when it is never closed, and everything before ``</think>``
when the prompt opened the block); the answer part is what follows it.

It does not compute rewards or losses.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from reasonrl.rollout import TRUNCATED

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_think(text: str, think_in_prompt: bool = False) -> tuple[str, str]:
    """(think text, text after the think block)."""
    if think_in_prompt:
        start = 0
    else:
        i = text.find(THINK_OPEN)
        if i < 0:
            return "", text
        start = i + len(THINK_OPEN)
    j = text.find(THINK_CLOSE, start)
    if j < 0:
        return text[start:], ""
    return text[start:j], text[j + len(THINK_CLOSE) :]


def cot_lengths(texts: Sequence[str], tokenizer, think_in_prompt: bool | Sequence[bool] = False) -> tuple[list[int], list[int]]:
    """Token counts of the think part and of the answer part of each text (``think_in_prompt``: one
    flag for all, or one per text: whether its prompt opened the think block)."""
    flags = [think_in_prompt] * len(texts) if isinstance(think_in_prompt, bool) else list(think_in_prompt)
    parts = [split_think(t, f) for t, f in zip(texts, flags, strict=True)]
    if not parts:
        return [], []
    enc = tokenizer([p[0] for p in parts] + [p[1] for p in parts], add_special_tokens=False)["input_ids"]
    n = len(parts)
    return [len(x) for x in enc[:n]], [len(x) for x in enc[n:]]


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLogger:
    """metrics.jsonl + samples.jsonl + TensorBoard (+ optional W&B) in one run directory."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict | None = None,
        resume: dict[str, int] | None = None,
    ):
        """``resume``: a :meth:`position` from a checkpoint; what was logged after it (by a run that died
        later) is cut off, so the resumed run continues without duplicate or missing steps."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            for name in ("metrics", "samples"):
                f = self.run_dir / f"{name}.jsonl"
                if f.exists():
                    os.truncate(f, min(int(resume[name]), f.stat().st_size))
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._samples = open(self.run_dir / "samples.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops events at or after it that an earlier (killed) writer left behind
            purge = None if resume is None else int(resume["step"]) + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as e:  # a clear message, not a crash deep inside
                raise RuntimeError("logging.wandb_project is set but wandb is not installed: pip install wandb") from e
            self._wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), config=config)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        self._metrics.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        for k, v in row.items():
            if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def position(self, step: int) -> dict[str, int]:
        """Where the logs stand after ``step`` (byte offsets), for a checkpoint."""
        self._metrics.flush()
        self._samples.flush()
        if self._tb is not None:
            self._tb.flush()
        return {"step": step, "metrics": self._metrics.tell(), "samples": self._samples.tell()}

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self._samples.write(json.dumps(r, default=str) + "\n")

    def close(self) -> None:
        """Flush and close everything (again: nothing)."""
        if self._metrics.closed:
            return
        self._metrics.close()
        self._samples.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def rollout_metrics(batch: Any, tokenizer, answer_verifier: str, generate_s: float, tools: bool = False) -> dict[str, float]:
    """rollout/* keys for one step's :class:`reasonrl.rollout.RolloutBatch` (lengths in tokens; think and
    answer lengths as the prompt opened the think block or not; lengths of correct and wrong answers by
    the verdict of ``answer_verifier``)."""
    rollouts = batch.rollouts
    lens = [r.model_tokens for r in rollouts]  # the model's own tokens (a tool's output is not the model's length)
    opened = [bool(batch.problems[r.prompt_index].get("prompt_opens_think", False)) for r in rollouts]
    think, answer = cot_lengths([r.text for r in rollouts], tokenizer, opened)
    correct = [r.verdicts.get(answer_verifier) is not None and r.verdicts[answer_verifier].status == "correct" for r in rollouts]
    return {
        "rollout/len_mean": mean(lens),
        "rollout/len_max": max(lens),
        "rollout/clipped_frac": mean(r.finish_reason in TRUNCATED for r in rollouts),
        "rollout/tokens_per_s": sum(lens) / max(generate_s, 1e-9),
        "rollout/think_len_mean": mean(think),
        "rollout/answer_len_mean": mean(answer),
        "rollout/len_correct_mean": mean(n for n, c in zip(lens, correct) if c),
        "rollout/len_wrong_mean": mean(n for n, c in zip(lens, correct) if not c),
        **(tool_metrics(rollouts, correct) if tools else {}),
    }


def tool_metrics(rollouts: Sequence[Any], correct: Sequence[bool]) -> dict[str, float]:
    """tools/* keys of multi-turn rollouts (:mod:`reasonrl.agent`): calls and model turns per rollout, the
    share of calls that failed or timed out, observation tokens, the tools' seconds (time/tool_s: summed over
    calls, which overlap generation and each other), accuracy with and without a call, and the share of each finish reason."""
    from reasonrl.agent import FINISH_REASONS

    calls = [r.tool_turns for r in rollouts]
    flat = [t for c in calls for t in c]
    used = [bool(c) for c in calls]
    return {
        "tools/calls_mean": mean(len(c) for c in calls),
        "tools/used_frac": mean(used),
        "tools/turns_mean": mean(max(1, sum(t.role == "model" for t in r.turns)) for r in rollouts),
        "tools/error_frac": mean(t.status != "ok" for t in flat) if flat else 0.0,
        "tools/timeout_frac": mean(t.status == "timeout" for t in flat) if flat else 0.0,
        "tools/obs_tokens_mean": mean(len(r.completion_ids) - r.model_tokens for r in rollouts),
        "time/tool_s": sum(t.seconds for t in flat),
        "tools/accuracy_with": mean(c for c, u in zip(correct, used) if u),
        "tools/accuracy_without": mean(c for c, u in zip(correct, used) if not u),
        **{f"rollout/finish_{k}_frac": mean(r.finish_reason == k for r in rollouts) for k in FINISH_REASONS},
    }
