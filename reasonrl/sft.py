"""Supervised fine-tuning: next-token cross-entropy on completion tokens only.

:func:`train_sft` trains a model in place on (prompt, completion) pairs with
AdamW and the schedule of an ``optim`` config node (reasonrl.config.OptimConfig),
gradient clipping, periodic evaluation and an optional early stop. The tiny
base model's pretraining (:mod:`reasonrl.tiny`), the cold-start stage of
``reasonrl-train`` and ``reasonrl-sft`` (:mod:`reasonrl.finetune`) all use it.
:func:`demonstrations` reads the pairs from a file or from the task; :func:`fine_tune_on_demonstrations`
is the one SFT stage that the cold start and ``reasonrl-sft`` share (demonstrations, their accuracy, training).

It does not pack several examples into one sequence, and loads no model itself.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger(__name__)


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Prompt ids and completion ids (+ eos) for each pair."""
    if not pairs:
        return []
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    comps = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p, c + [eos]) for p, c in zip(prompts, comps)]


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on prompt and padding."""
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(batch):
        seq = p + c
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return ids, mask, labels


def sft_backward(
    model,
    batch: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    max_seqs: int,
    max_tokens: int,
    compute_dtype: torch.dtype = torch.float32,
    pass_cost: float | None = None,
) -> torch.Tensor:
    """Backward of the mean next-token loss over the batch's completion tokens, micro-batch by micro-batch
    (gradients accumulate); returns the loss (detached)."""
    from reasonrl.logprobs import completion_logprobs
    from reasonrl.update import autocast, plan_micro_batches

    device = next(model.parameters()).device
    total = sum(len(c) for _, c in batch)
    loss_sum = torch.zeros((), device=device)
    for idx in plan_micro_batches([len(p) + len(c) for p, c in batch], max_seqs, max_tokens, pass_cost):
        ids, mask, labels = (t.to(device) for t in collate([batch[i] for i in idx], pad_id))
        targets = (labels[:, 1:] != -100).float()  # (n, L-1): completion tokens (and their eos)
        with autocast(device, compute_dtype):
            logp, _ = completion_logprobs(model, ids, mask, targets)
        loss = -(logp * targets).sum() / total
        loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def train_sft(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int,
    optim: Any,
    seed: int = 0,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    stop_fn: Callable[[dict[str, float]], bool] | None = None,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
    desc: str = "sft",
    progress: bool = True,
    micro_batch_size: int = 0,
    max_tokens_per_micro_batch: int = 16384,
    pass_cost_tokens: float | None = 128,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train ``model`` in place; returns {"steps", "evals", "loss"}. Each step's batch is cut into micro-batches
    (at most ``micro_batch_size`` sequences, 0 for no cap, and ``max_tokens_per_micro_batch`` padded tokens, each
    padded to its own longest, cut where :func:`reasonrl.update.plan_micro_batches` finds the least padding for
    ``pass_cost_tokens``) whose gradients accumulate; the loss is the mean over the batch's completion tokens,
    computed from the final hidden states in blocks (no (tokens x vocabulary) tensor)."""
    from tqdm import tqdm

    from reasonrl.policy import make_optimizer

    if not pairs:
        raise ValueError("train_sft got no training pairs")
    data = tokenize_pairs(tokenizer, pairs)
    opt, sched = make_optimizer(model, optim, total_steps=steps)
    rng = random.Random(seed)
    order: list[int] = []
    evals: list[dict[str, Any]] = []
    model.train()
    loss_ema = None
    bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    step = 0
    try:  # an interrupt too: the bar's line ends before anything else is said
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            if len(order) < batch_size:
                fresh = list(range(len(data)))
                rng.shuffle(fresh)
                order.extend(fresh)
            idx, order = order[:batch_size], order[batch_size:]
            opt.zero_grad(set_to_none=True)
            loss = sft_backward(
                model,
                [data[i] for i in idx],
                tokenizer.pad_token_id,
                micro_batch_size or len(idx),
                max_tokens_per_micro_batch,
                compute_dtype,
                pass_cost_tokens,
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            opt.step()
            sched.step()
            loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
            row: dict[str, Any] = {
                "step": step,
                "train/loss": loss.item(),
                "train/grad_norm": float(gnorm),
                "train/lr": sched.get_last_lr()[0],
                "time/step_s": time.perf_counter() - t0,
            }
            stop = False
            if eval_fn is not None and eval_every > 0 and (step % eval_every == 0 or step == steps):
                metrics = eval_fn(model)
                model.train()
                evals.append({"step": step, **metrics})
                row.update({f"eval/{k}": v for k, v in metrics.items()})
                bar.set_postfix(loss=f"{loss_ema:.3f}", **{k: f"{v:.3f}" for k, v in metrics.items()})
                stop = stop_fn is not None and stop_fn(metrics)
            elif step % 20 == 0:
                bar.set_postfix(loss=f"{loss_ema:.3f}")
            if log_fn is not None:
                log_fn(row)
            bar.update(1)
            if stop:
                break
    finally:
        bar.close()
    return {"steps": step, "evals": evals, "loss": loss_ema}


def demonstrations(
    sft_cfg: Any, task, seed: int, *, problems: Sequence[dict] | None = None, tokenizer=None, template: str | None = None
) -> list[dict]:
    """Rows {prompt, completion, answer?} to fine-tune on: ``sft.data_file`` (JSONL with prompt and completion),
    else the task's own: generated (the arithmetic world), or made from its training ``problems`` with
    ``task.target`` (the first ``sft.demos`` of a seeded shuffle)."""
    from reasonrl.data import load_jsonl, validate_rows

    if sft_cfg.data_file:
        return validate_rows(load_jsonl(sft_cfg.data_file), {"prompt": str, "completion": str}, sft_cfg.data_file)
    hint = (
        "set task.target (the completion, from the problem's fields, e.g. '{solution}') "
        "or sft.data_file (JSONL with prompt/completion)"
    )
    if task.demonstrations is not None:
        return task.demonstrations(sft_cfg.demos, seed, flaw_frac=sft_cfg.flaw_frac)
    task.need("demonstrations", hint)
    if not problems:
        raise ValueError(f"task {task.name!r} makes demonstrations from its training data: set task.path")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return task.file_demonstrations([problems[i] for i in order[: sft_cfg.demos]], tokenizer, template)


def fine_tune_on_demonstrations(
    model: torch.nn.Module,
    tokenizer,
    node: Any,
    task,
    template: str,
    stream,
    verifier,
    *,
    steps: int,
    seed: int,
    compute_dtype: torch.dtype,
    progress: bool = True,
    before: Callable[[float | None], Any] | None = None,
    **train_kw: Any,
) -> dict[str, Any]:
    """The SFT stage of a run, from an SFT config node (``cold_start`` or ``sft``): its demonstrations (from the
    node's file or the task, with the training ``stream``'s rows where the task makes them from data), the
    answer verifier's accuracy on them, ``before(that accuracy)`` (e.g. an evaluation) once the demonstrations are
    ready and before training, then :func:`train_sft` with the node's batch, optimizer and micro-batch settings.
    Returns train_sft's result plus ``rows`` and ``demonstration_accuracy``."""
    from reasonrl.config import micro_batching

    rows = demonstrations(node, task, seed, problems=getattr(stream, "rows", None), tokenizer=tokenizer, template=template)
    out: dict[str, Any] = {"rows": rows, "demonstration_accuracy": demonstration_accuracy(rows, verifier)}
    if before is not None:
        before(out["demonstration_accuracy"])
    hist = train_sft(
        model,
        tokenizer,
        [(r["prompt"], r["completion"]) for r in rows],
        steps=steps,
        batch_size=node.batch_size,
        optim=node.optim,
        seed=seed,
        progress=progress,
        compute_dtype=compute_dtype,
        **micro_batching(node),
        **train_kw,
    )
    return {**hist, **out}


def demonstration_accuracy(rows: Sequence[dict], verifier) -> float | None:
    """Share of demonstrations whose completion the answer verifier calls correct (None when none has an answer)."""
    from reasonrl.verifiers.base import safe_call

    graded = [r for r in rows if r.get("answer") is not None]
    if not graded:
        return None
    return sum(getattr(safe_call(verifier, r, r["completion"]), "status", None) == "correct" for r in graded) / len(graded)
