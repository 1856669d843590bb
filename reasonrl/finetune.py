"""reasonrl-sft: supervised fine-tuning on demonstrations, as a run of its own.

Run::

    reasonrl-sft                                   # demonstrations of the arith world
    reasonrl-sft sft.data_file=demos.jsonl max_steps=300 hydra.run.dir=runs/sft1

writes a run directory (config.yaml, metrics.jsonl, TensorBoard events,
checkpoints/final, summary.json) whose final checkpoint ``reasonrl-train
model.path=...`` can start from. The loop itself is :func:`reasonrl.sft.train_sft`.

It does not run RL (``reasonrl-train experiment=sft_cold_start_arith`` runs SFT then RL).
"""

from __future__ import annotations

import json
import time
from typing import Any


def main(cfg) -> dict[str, Any]:
    from reasonrl.runs import Interrupted, open_run_dir

    run = open_run_dir(cfg, "reasonrl-sft")
    state: dict[str, Any] = {"logger": None, "step": 0}
    try:
        return _run(cfg, run.path, state)
    except KeyboardInterrupt:
        raise Interrupted(_stopped(run, state)) from None
    except BaseException:
        _stopped(run, state)
        raise


def _stopped(run, state: dict[str, Any]) -> str:
    """Where an interrupted or failed SFT run stood and what it kept (a run directory with nothing in it is removed)."""
    if state["logger"] is not None:
        state["logger"].close()
    if run.abandon():
        return f"before the first step; the run directory {run.path} held nothing yet and was removed"
    return f"at step {state['step']}; {run.path / 'metrics.jsonl'} keeps the rows logged so far (SFT does not resume)"


def _run(cfg, run_dir, state: dict[str, Any]) -> dict[str, Any]:
    import torch

    from reasonrl.evals.harness import training_eval
    from reasonrl.metrics import RunLogger
    from reasonrl.models import load_policy
    from reasonrl.policy import compute_dtype, save_checkpoint
    from reasonrl.rollout import HFGenerator
    from reasonrl.runs import announce, write_summary
    from reasonrl.sft import fine_tune_on_demonstrations
    from reasonrl.tasks import get_task, problem_source
    from reasonrl.verifiers import load

    t_start = time.time()
    torch.manual_seed(cfg.seed)
    model, tokenizer, model_path = load_policy(cfg.model, progress=cfg.logging.progress, seed=cfg.seed)
    task = get_task(cfg.task)
    verifier = load(cfg.task.answer_verifier)
    stream, heldout = problem_source(task, cfg.task, cfg.seed, {cfg.task.answer_verifier: (verifier, 1.0)})
    render = lambda p: task.render_prompt(p, cfg.task.template, tokenizer)  # noqa: E731
    state["logger"] = logger = RunLogger(run_dir, tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project)

    def log_row(row: dict[str, Any]) -> None:
        state["step"] = row["step"]
        logger.log(row)

    def eval_fn(m):
        return training_eval(HFGenerator(m, tokenizer), tokenizer, heldout, render, verifier, cfg, cfg.seed)

    state["start"] = {}

    def evaluate_before(_demonstration_accuracy) -> None:
        state["start"] = eval_fn(model)
        log_row({"step": 0, **state["start"]})

    hist = fine_tune_on_demonstrations(
        model,
        tokenizer,
        cfg.sft,
        task,
        cfg.task.template,
        stream,
        verifier,
        steps=cfg.max_steps,
        seed=cfg.seed,
        compute_dtype=compute_dtype(cfg.model.compute_dtype, next(model.parameters()).device),
        progress=cfg.logging.progress,
        before=evaluate_before,
        eval_fn=eval_fn,
        eval_every=cfg.sft.eval_every,
        log_fn=log_row,
    )
    start = state["start"]
    logger.close()
    final = run_dir / "checkpoints" / "final"
    if cfg.checkpoint.final:
        save_checkpoint(model, tokenizer, final, base_path=str(model_path))
    summary = {
        "run_dir": str(run_dir),
        "experiment": cfg.experiment_name,
        "seed": cfg.seed,
        "steps": hist["steps"],
        "base_model": str(model_path),
        "wall_s": round(time.time() - t_start, 1),
        "demonstrations": len(hist["rows"]),
        "demonstration_accuracy": hist["demonstration_accuracy"],
        "start": start,
        "end": hist["evals"][-1] if hist["evals"] else {},
        "final_checkpoint": str(final) if cfg.checkpoint.final else None,
    }
    write_summary(run_dir, summary)
    print(json.dumps({k: summary[k] for k in ("demonstration_accuracy", "start", "end")}, indent=1))
    announce(run_dir)
    return summary


def cli() -> None:
    import sys

    from reasonrl.config import run_entry_point
    from reasonrl.runs import hydra_argv, one_line_errors

    sys.argv = hydra_argv(sys.argv, "reasonrl-sft")
    run_entry_point(one_line_errors(main, "reasonrl-sft"), "sft")
