"""Problems in, tensors out: row validation, JSONL loading, and rollout packing.

* :func:`load_jsonl` and :func:`validate_rows` turn files into problem rows
  and name the file, the row index and the field for any malformed row
  (``skip_bad``: logged, counted and skipped instead).
* :func:`check_prompt_lengths` refuses prompts that, with the completion
  budget, do not fit in the model's positions (before generating anything).
* :func:`pack` turns rollouts into right-padded ``(N, L)`` tensors with the
  rollouts' own per-token loss masks, aligned with next-token targets;
  :func:`pack_shared` keeps each distinct prompt once and the completions
  apart, for an update that runs a group's prompt through the model once.

It does not tokenize prompts or render templates (tasks do).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Malformed input data; the message names the source and the row."""


def load_jsonl(path: str | Path, skip_bad: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line. A line that is not a JSON object raises
    :class:`DataError` naming the file and the line; with ``skip_bad`` it is logged (with its line number),
    counted and skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    rows, bad = [], 0
    with open(p) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else f"is a {type(row).__name__}, not a JSON object"
            except json.JSONDecodeError as e:
                problem = f"is not valid JSON: {e.msg} (column {e.colno})"
            if problem is None:
                rows.append(row)
                continue
            msg = f"{p}: row {len(rows) + bad} (line {i + 1}) {problem}"
            if not skip_bad:
                raise DataError(msg + "; task.skip_bad_rows=true skips such lines") from None
            bad += 1
            log.error("data error, line skipped: %s: %r", msg, line.strip()[:120])
    if bad:
        log.error("data errors: %d lines of %s skipped", bad, p)
    return rows


def validate_rows(
    rows: Sequence[Any], required: dict[str, type | tuple[type, ...]], source: str, skip_bad: bool = False
) -> list[dict]:
    """Check that every row has the required fields with the right types.

    Raises :class:`DataError` naming ``source``, the row index and the field; with
    ``skip_bad`` the bad rows are dropped instead, each logged and counted.
    """
    good, bad = [], 0
    for i, row in enumerate(rows):
        problem = None
        if not isinstance(row, dict):
            problem = f"is a {type(row).__name__}, not a mapping"
        else:
            for key, typ in required.items():
                if key not in row:
                    problem = f"has no field {key!r} (fields: {sorted(row)})"
                    break
                if not isinstance(row[key], typ):
                    problem = f"field {key!r} is {type(row[key]).__name__} {row[key]!r}, expected {getattr(typ, '__name__', typ)}"
                    break
        if problem is None:
            good.append(row)
            continue
        msg = f"{source}: row {i} {problem}"
        if not skip_bad:
            raise DataError(msg)
        bad += 1
        log.error("skipped malformed row: %s", msg)
    if bad:
        log.error("%s: %d of %d rows skipped as malformed", source, bad, len(rows))
    return good


def check_prompt_lengths(
    prompts: Sequence[Sequence[int]], max_new_tokens: int, max_positions: int | None, what: str, key: str = "max_new_tokens"
) -> None:
    """Refuse prompts (token ids) that leave no room for ``max_new_tokens`` within ``max_positions`` (the model's
    ``max_position_embeddings``; None: no limit known). A model run past its positions generates garbage (or fails
    inside the attention), with at most a warning."""
    if not max_positions or not prompts:
        return
    longest = max(len(p) for p in prompts)
    too_long = sum(len(p) + max_new_tokens > max_positions for p in prompts)
    if too_long:
        raise DataError(
            f"{what}: {too_long} of {len(prompts)} prompts do not fit the model: the longest is {longest} tokens, "
            f"plus {key}={max_new_tokens}, against the model's {max_positions} positions (max_position_embeddings); "
            f"use a model with more positions, shorter prompts, or a smaller {key}"
        )


@dataclass
class Packed:
    input_ids: torch.Tensor  # (N, L) prompt + completion, right-padded
    attention_mask: torch.Tensor  # (N, L)
    completion_mask: torch.Tensor  # (N, L-1) 1 where target token L[t+1] is a completion token
    sampler_logprobs: torch.Tensor  # (N, L-1) generator's logprob of each target (0 elsewhere)

    def to(self, device) -> "Packed":
        return Packed(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask, self.sampler_logprobs)))


def pack(rollouts: Sequence[Any], pad_id: int) -> Packed:
    """Right-pad prompt+completion per rollout; masks and sampler logprobs align with targets ids[:, 1:].

    The completion mask is each rollout's own per-token loss mask (``Rollout.token_mask()``), never
    derived from lengths alone: tokens the policy did not write stay out of the loss."""
    n = len(rollouts)
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    cmask = torch.zeros((n, width - 1), dtype=torch.float32)
    slp = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        ids[i, : p + c] = torch.tensor(list(r.prompt_ids) + list(r.completion_ids), dtype=torch.long)
        attn[i, : p + c] = 1
        # the target at position t is ids[t+1]; completion token j sits at p+j, predicted at p+j-1
        if len(r.token_mask()) != c:
            raise ValueError(f"rollout {i}: loss mask of {len(r.token_mask())} entries for {c} completion tokens")
        cmask[i, p - 1 : p + c - 1] = torch.tensor(r.token_mask(), dtype=torch.float32)
        if r.logprobs:
            slp[i, p - 1 : p + c - 1] = torch.tensor(r.logprobs, dtype=torch.float32)
    return Packed(ids, attn, cmask, slp)


@dataclass
class SharedPacked:
    """Rollouts whose prompts go through the model once per distinct prompt (a GRPO group shares one).

    Row i's completion continues prompt ``row_prompt[i]``; the per-token tensors are (n, C), where position j is
    completion token j (predicted from the prompt's last position for j = 0, else from completion token j-1)."""

    prompt_ids: torch.Tensor  # (g, P) the distinct prompts, right-padded
    prompt_mask: torch.Tensor  # (g, P)
    prompt_len: torch.Tensor  # (g,) long
    row_prompt: torch.Tensor  # (n,) long: which prompt each completion continues
    completion_ids: torch.Tensor  # (n, C) right-padded (C >= 1)
    attention_mask: torch.Tensor  # (n, P + C): the row's prompt mask, then its completion's
    completion_mask: torch.Tensor  # (n, C) the rollout's own loss mask
    sampler_logprobs: torch.Tensor  # (n, C) the generator's logprob of each completion token (0 elsewhere)

    def to(self, device) -> "SharedPacked":
        return SharedPacked(*(getattr(self, f.name).to(device) for f in fields(self)))


def pack_shared(rollouts: Sequence[Any], pad_id: int) -> SharedPacked:
    """Like :func:`pack`, but each distinct prompt (by its token ids) is kept once, in order of first appearance."""
    index: dict[tuple[int, ...], int] = {}
    rows = [index.setdefault(tuple(r.prompt_ids), len(index)) for r in rollouts]
    prompts = list(index)
    g, n = len(prompts), len(rollouts)
    p_width = max(len(p) for p in prompts)
    c_width = max(1, max(len(r.completion_ids) for r in rollouts))
    pids = torch.full((g, p_width), pad_id, dtype=torch.long)
    pmask = torch.zeros((g, p_width), dtype=torch.long)
    for k, p in enumerate(prompts):
        if not p:
            raise ValueError("a rollout with an empty prompt has no position to predict its first token from")
        pids[k, : len(p)] = torch.tensor(p, dtype=torch.long)
        pmask[k, : len(p)] = 1
    cids = torch.full((n, c_width), pad_id, dtype=torch.long)
    cattn = torch.zeros((n, c_width), dtype=torch.long)
    cmask = torch.zeros((n, c_width), dtype=torch.float32)
    slp = torch.zeros((n, c_width), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        c = len(r.completion_ids)
        if len(r.token_mask()) != c:
            raise ValueError(f"rollout {i}: loss mask of {len(r.token_mask())} entries for {c} completion tokens")
        if c:
            cids[i, :c] = torch.tensor(list(r.completion_ids), dtype=torch.long)
            cattn[i, :c] = 1
            cmask[i, :c] = torch.tensor(r.token_mask(), dtype=torch.float32)
        if r.logprobs:
            slp[i, :c] = torch.tensor(r.logprobs, dtype=torch.float32)
    row = torch.tensor(rows, dtype=torch.long)
    plen = pmask.sum(dim=1)
    return SharedPacked(pids, pmask, plen, row, cids, torch.cat([pmask[row], cattn], dim=1), cmask, slp)
